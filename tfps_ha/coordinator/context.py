"""The input and output types shared by both runners."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable

from tfps_ha.coordinator.heartbeat import Heartbeat
from tfps_ha.spec import TrainingSpec
from tfps_ha.trainer import Trainer
from tfps_ha.workdir import Workdir


@dataclasses.dataclass
class RunContext:
    """Everything a runner needs.

    Attributes:
      tf: The TensorFlow module.
      keras: The tf_keras module.
      strategy: The ParameterServerStrategy.
      coordinator: The ClusterCoordinator of `strategy`.
      num_workers: Workers in the cluster.
      trainer: The user's trainer.
      training: Training length and checkpoint cadence.
      target_steps: The step count to reach (the spec's, or `--steps`).
      workdir: The job's working folder.
      heartbeat: Progress writer read by the supervisor.
      stop: Set on SIGTERM; the runner then saves and returns early.
      before_save: Called with the step before every checkpoint save. It
        raises to reject the save, for example `LeadershipLostError` when this
        coordinator is no longer the leader.
      after_save: Called with the step and the checkpoint path after every save.
    """

    tf: Any
    keras: Any
    strategy: Any
    coordinator: Any
    num_workers: int
    trainer: Trainer
    training: TrainingSpec
    target_steps: int
    workdir: Workdir
    heartbeat: Heartbeat
    stop: threading.Event
    before_save: Callable[[int], None] = lambda step: None
    after_save: Callable[[int, str], None] = lambda step, path: None


@dataclasses.dataclass
class RunResult:
    """The end state of one runner call.

    Attributes:
      completed: Whether `final_step` reached the target.
      final_step: Steps applied, counted exactly across restarts.
      resumed_from_step: Step of the checkpoint this run started from (0 when fresh).
      metrics: Held-out metrics from the trainer's `evaluate`, plus the last loss.
      preempted: Whether SIGTERM stopped the run after a checkpoint.
      checkpoint_step: Step of the last checkpoint saved or restored.
    """

    completed: bool
    final_step: int
    resumed_from_step: int
    metrics: dict
    preempted: bool = False
    checkpoint_step: int = 0
