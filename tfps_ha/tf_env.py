"""Imports TensorFlow with tf-keras (Keras 2), the only Keras that supports PSS.

Keras 3 does not support ParameterServerStrategy. TensorFlow 2.16+ uses Keras 3
for `tf.keras` unless `TF_USE_LEGACY_KERAS=1` is set before TensorFlow is
imported, in which case `tf.keras` is the `tf_keras` package. Every kit process
that builds models calls `import_tensorflow()` before anything else imports TF.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import re
import sys
from types import ModuleType

from tfps_ha.errors import UsageError

logger = logging.getLogger(__name__)

# Distribution names that install the `tensorflow` module.
TENSORFLOW_DISTRIBUTIONS = (
    "tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel", "tensorflow-macos", "tf-nightly",
)
# The TF_USE_LEGACY_KERAS values with which TensorFlow 2.16+ makes tf.keras tf-keras.
LEGACY_KERAS_VALUES = ("1", "true", "True")


def check_keras_environment() -> None:
    """Checks, without importing TensorFlow, that tf-keras can be used.

    Raises:
      UsageError: TensorFlow or tf-keras cannot be imported, their minor
        versions differ, or TF_USE_LEGACY_KERAS is set to something other
        than 1. The message names the pip command that fixes it.
    """
    found, reason = find_module("tensorflow")
    if not found:
        raise UsageError(
            f"tensorflow cannot be imported ({reason}); install it together with tf-keras "
            f"of the same minor version: {install_command(with_tensorflow=True)}")

    found, reason = find_module("tf_keras")
    if not found:
        keras_version = installed_version("keras")
        keras = f"Keras 3 (keras {keras_version} is installed)" if is_keras_3(keras_version) else "Keras 3"
        packaged = installed_version("tf-keras")
        if packaged:
            raise UsageError(
                f"tf-keras {packaged} is installed but the module tf_keras cannot be imported "
                f"({reason}), so tf.keras would be {keras}, which does not support "
                f"ParameterServerStrategy; reinstall it with: {install_command(reinstall=True)}")
        raise UsageError(
            f"tf-keras is not installed ({reason}), so tf.keras would be {keras}, which does not "
            f"support ParameterServerStrategy; install it with: {install_command()}")

    value = os.environ.get("TF_USE_LEGACY_KERAS")
    if value is not None and value not in LEGACY_KERAS_VALUES:
        raise UsageError(
            f"TF_USE_LEGACY_KERAS is {value!r}; expected 1, because Keras 3 does not "
            "support ParameterServerStrategy. Unset it or set it to 1."
        )

    if "tensorflow" in sys.modules and "TF_USE_LEGACY_KERAS" not in os.environ:
        # TensorFlow reads the variable when tf.keras is first resolved, so a
        # late setting may already be too late; import_tensorflow checks that.
        os.environ["TF_USE_LEGACY_KERAS"] = "1"

    tf_version = tensorflow_version()
    keras_version = installed_version("tf-keras")
    if tf_version and keras_version and not same_minor_version(tf_version, keras_version):
        raise UsageError(
            f"tensorflow {tf_version} and tf-keras {keras_version} differ in minor "
            f"version; install the matching tf-keras with: {install_command()}"
        )


def import_tensorflow() -> tuple[ModuleType, ModuleType]:
    """Imports TensorFlow and tf-keras, with Keras 2 as `tf.keras`.

    Returns:
      The `tensorflow` and `tf_keras` modules.

    Raises:
      UsageError: See `check_keras_environment`; or TensorFlow or tf-keras
        is found but fails to import (a broken install); or `tf.keras` still
        resolves to Keras 3 after the import.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    check_keras_environment()

    try:
        import tensorflow as tf
    except ImportError as error:
        raise UsageError(
            f"{_named('tensorflow', tensorflow_version())} is installed but fails to import "
            f"({_first_line(error)}); reinstall it with: {install_command(with_tensorflow=True, reinstall=True)}"
        ) from None
    try:
        import tf_keras
    except ImportError as error:
        raise UsageError(
            f"{_named('tf-keras', installed_version('tf-keras'))} is installed but fails to import "
            f"({_first_line(error)}), and Keras 3 does not support ParameterServerStrategy; "
            f"reinstall it with: {install_command(reinstall=True)}"
        ) from None

    # tf.keras is a lazy loader; the module its Model class comes from tells
    # which Keras it resolves to.
    keras_module = type(tf.keras.Model).__module__ if hasattr(tf.keras, "Model") else ""
    keras_module = getattr(tf.keras.Model, "__module__", keras_module)
    if not keras_module.startswith("tf_keras"):
        raise UsageError(
            f"tf.keras resolves to {keras_module.split('.')[0] or 'unknown'} (Keras 3), which does not support "
            "ParameterServerStrategy; TensorFlow was imported before "
            "TF_USE_LEGACY_KERAS=1 was set. Set TF_USE_LEGACY_KERAS=1 in the "
            "environment, or import tfps_ha before tensorflow."
        )
    return tf, tf_keras


def find_module(name: str) -> tuple[bool, str]:
    """Returns whether the top-level module `name` can be found, without importing it, and why not.

    Returns:
      `(True, "")` when an import finder has the module, else `(False, reason)`.
    """
    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError) as error:
        # A finder can raise instead of returning None, and find_spec raises
        # ValueError for a module in sys.modules without a __spec__.
        return False, _first_line(error)
    return (True, "") if found else (False, f"no module named {name!r}")


def installed_version(distribution: str) -> str | None:
    """Returns the version of an installed distribution, such as `tf-keras`, or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def tensorflow_version() -> str | None:
    """Returns the version of the installed TensorFlow distribution, under any of its names."""
    for distribution in TENSORFLOW_DISTRIBUTIONS:
        version = installed_version(distribution)
        if version:
            return version
    return None


def is_keras_3(version: str | None) -> bool:
    """Returns whether a `keras` distribution version is Keras 3 or newer."""
    major = (version or "").split(".")[0]
    return major.isdigit() and int(major) >= 3


def same_minor_version(first: str, second: str) -> bool:
    """Returns whether two versions share major and minor, such as 2.21.0 and 2.21.1."""
    return first.split(".")[:2] == second.split(".")[:2]


def install_command(with_tensorflow: bool = False, reinstall: bool = False) -> str:
    """Returns the pip command that installs a tf-keras matching the installed TensorFlow.

    Args:
      with_tensorflow: Install TensorFlow as well, at the version this kit requires.
      reinstall: Add `--force-reinstall`, for a broken install.
    """
    tf_version = tensorflow_version()
    if tf_version and not with_tensorflow:
        minor = ".".join(tf_version.split(".")[:2])
        requirements = [f"tf-keras~={minor}.0"]
    else:
        requirements = _kit_requirements(("tensorflow", "tf-keras"))
    flag = "--force-reinstall " if reinstall else ""
    return "pip install " + flag + " ".join(f"'{requirement}'" for requirement in requirements)


def _kit_requirements(names: tuple[str, ...]) -> list[str]:
    """Returns this kit's requirement strings for `names`, such as `tensorflow~=2.21.0`."""
    try:
        declared = importlib.metadata.requires("tfps-ha") or []
    except importlib.metadata.PackageNotFoundError:
        declared = []
    requirements = []
    for name in names:
        pattern = re.compile(rf"{re.escape(name)}(?![A-Za-z0-9._-])")
        matches = [line.split(";")[0].strip() for line in declared if pattern.match(line)]
        requirements.append(matches[0] if matches else name)
    return requirements


def _named(distribution: str, version: str | None) -> str:
    return f"{distribution} {version}" if version else distribution


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__
