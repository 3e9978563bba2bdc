"""The trainer contract: what a user's module gives the coordinator.

A trainer is a plain Python module named by `trainer.module` in the cluster
spec. Every function is called on the coordinator, inside the strategy's scope
where it builds variables.

Both runners:
  `dataset_fn(input_context) -> tf.data.Dataset`
      Builds one worker's input: repeated forever and batched per worker.
      The coordinator traces it and every worker runs its own copy.
  `build_model() -> tf_keras.Model`
      For the `fit` runner, a compiled model with a legacy optimizer.
  `evaluate(model) -> dict[str, float]` (optional)
      Runs after training on the coordinator and returns held-out metrics.
  `configure(**args)` (optional)
      Receives `trainer.args` from the spec before anything else.

`custom_loop` runner only:
  `build_optimizer() -> tf_keras.optimizers.legacy.Optimizer`
  `compute_loss(model, batch) -> tf.Tensor`
      Returns the scalar loss of one batch; the kit takes the gradient and
      applies it.

The runner is `trainer.runner` from the spec, or `custom_loop` when the module
defines `compute_loss`, else `fit`.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from types import ModuleType
from typing import Any, Callable, Mapping

from tfps_ha.errors import UsageError

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Trainer:
    """A loaded trainer module and the runner that drives it."""

    module: ModuleType
    runner: str

    @property
    def name(self) -> str:
        return self.module.__name__

    def hook(self, name: str) -> Callable[..., Any] | None:
        """Returns the module's function `name`, or None when it has none."""
        function = getattr(self.module, name, None)
        return function if callable(function) else None


def load_trainer(module_name: str, runner: str | None, args: Mapping[str, Any]) -> Trainer:
    """Imports a trainer module and checks it against the contract.

    Args:
      module_name: Import path, such as `tfps_ha.examples.digits`.
      runner: `fit`, `custom_loop`, or None to infer it.
      args: Options for the module's `configure` hook.

    Returns:
      The trainer.

    Raises:
      UsageError: The module cannot be imported or lacks a required function.
    """
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            raise UsageError(
                f"trainer.module: module {module_name!r} was not found; is it installed "
                "or on PYTHONPATH?"
            ) from None
        raise

    if runner is None:
        runner = "custom_loop" if callable(getattr(module, "compute_loss", None)) else "fit"

    required = ["dataset_fn", "build_model"]
    if runner == "custom_loop":
        required += ["build_optimizer", "compute_loss"]
    missing = [name for name in required if not callable(getattr(module, name, None))]
    if missing:
        raise UsageError(
            f"trainer {module_name} ({runner} runner) is missing the functions "
            f"{', '.join(missing)}; see the trainer contract in the README"
        )

    trainer = Trainer(module, runner)
    configure = trainer.hook("configure")
    if configure is not None:
        configure(**dict(args))
    elif args:
        raise UsageError(
            f"trainer.args was given, but trainer {module_name} has no configure(**args) function"
        )
    return trainer


def check_legacy_optimizer(tf_keras, optimizer: object, where: str) -> None:
    """Raises UsageError unless `optimizer` is a tf-keras legacy optimizer.

    tf-keras's non-legacy optimizers do not work with ParameterServerStrategy's
    sharded variables, so the kit requires the legacy ones.
    """
    if not isinstance(optimizer, tf_keras.optimizers.legacy.Optimizer):
        raise UsageError(
            f"{where}: received optimizer {type(optimizer).__module__}.{type(optimizer).__name__}; "
            "expected a tf_keras.optimizers.legacy optimizer (for example "
            "tf_keras.optimizers.legacy.Adam), because ParameterServerStrategy needs them"
        )
