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
import sys
from types import ModuleType

from tfps_ha.errors import UsageError

logger = logging.getLogger(__name__)

_INSTALL_HINT = "install it with: pip install 'tf-keras~=2.21.0' (same minor version as tensorflow)"


def check_keras_environment() -> None:
    """Checks, without importing TensorFlow, that tf-keras can be used.

    Raises:
      UsageError: tf-keras is missing, TF_USE_LEGACY_KERAS is set to something
        other than 1, or TensorFlow was already imported with Keras 3.
    """
    if importlib.util.find_spec("tf_keras") is None:
        raise UsageError(
            "tf-keras is not installed, so tf.keras would be Keras 3, which does not "
            f"support ParameterServerStrategy; {_INSTALL_HINT}"
        )

    value = os.environ.get("TF_USE_LEGACY_KERAS")
    if value not in (None, "1", "true", "True"):
        raise UsageError(
            f"TF_USE_LEGACY_KERAS is {value!r}; expected 1, because Keras 3 does not "
            "support ParameterServerStrategy. Unset it or set it to 1."
        )

    if "tensorflow" in sys.modules and "TF_USE_LEGACY_KERAS" not in os.environ:
        # TensorFlow reads the variable when tf.keras is first resolved, so a
        # late setting may already be too late; the check below catches that.
        os.environ["TF_USE_LEGACY_KERAS"] = "1"

    tf_version = _version("tensorflow")
    keras_version = _version("tf-keras")
    if tf_version and keras_version and tf_version.split(".")[:2] != keras_version.split(".")[:2]:
        raise UsageError(
            f"tensorflow {tf_version} and tf-keras {keras_version} differ in minor "
            f"version; {_INSTALL_HINT}"
        )


def import_tensorflow() -> tuple[ModuleType, ModuleType]:
    """Imports TensorFlow and tf-keras, with Keras 2 as `tf.keras`.

    Returns:
      The `tensorflow` and `tf_keras` modules.

    Raises:
      UsageError: See `check_keras_environment`, or `tf.keras` still resolves
        to Keras 3 after the import.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    check_keras_environment()

    import tensorflow as tf
    import tf_keras

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


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
