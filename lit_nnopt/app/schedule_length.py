"""ScheduleLength: a schedule of a fixed number of steps (OneCycleLR) checked against the run's length.

OneCycleLR's ``total_steps`` is fixed in the config (``onecycle.yaml``, ``cnn.yaml``), while
``--trainer.max_epochs``, ``max_steps`` or ``limit_train_batches`` change how many steps a
run takes. Shorter, the cycle is cut off before it anneals: the technique the config is named
after is not what runs. Longer, torch raises "Tried to step ... times" when the schedule ends,
in the middle of training. Both are said before the first training step.
"""

from __future__ import annotations

import math
import sys

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.types import LRSchedulerConfig
from typing_extensions import override


class ScheduleTooShortError(ValueError):
    """A run takes more scheduler steps than its schedule has."""


class ScheduleLength(Callback):
    """Warns when a scheduler's ``total_steps`` exceed the steps of the run; refuses a OneCycle run that needs more.

    The warning is one ``lit_nnopt: warning:`` line on stderr, from rank zero. It applies to
    every LR scheduler with a ``total_steps`` attribute (``torch.optim.lr_scheduler.OneCycleLR``,
    ``lit_nnopt.optim.WarmupCosineDecay``). A run longer than the schedule is refused only
    for OneCycleLR, which torch stops with an error; WarmupCosineDecay holds its last lr.
    The run's scheduler steps are ``trainer.estimated_stepping_batches`` (optimizer steps:
    ``max_epochs``, ``max_steps``, ``limit_train_batches`` and gradient accumulation included)
    for ``interval: step``, ``max_epochs`` for ``interval: epoch``, each divided by the
    scheduler's ``frequency``.

    Raises:
        ScheduleTooShortError: at the start of training, when the run would step a OneCycleLR
            past its ``total_steps``.
    """

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for config in trainer.lr_scheduler_configs:
            self._check(trainer, config)

    def _check(self, trainer: pl.Trainer, config: LRSchedulerConfig) -> None:
        total = getattr(config.scheduler, "total_steps", None)
        if not isinstance(total, int):
            return
        if config.interval == "step":
            intervals, unit = trainer.estimated_stepping_batches, "optimizer steps"
        else:
            intervals, unit = trainer.max_epochs if trainer.max_epochs not in (None, -1) else math.inf, "epochs"
        if not math.isfinite(intervals):
            return
        steps = int(intervals) // config.frequency
        name = type(config.scheduler).__name__
        fix = f"`--lr_scheduler.total_steps {steps}` fits the whole schedule into this run"
        if steps > total and isinstance(config.scheduler, torch.optim.lr_scheduler.OneCycleLR):
            raise ScheduleTooShortError(
                f"{name} has total_steps {total}, but this fit takes {steps} {unit}: torch stops it with an error "
                f"at step {total + 1}. Shorten the run (`--trainer.max_epochs`, `--trainer.max_steps`), or {fix}."
            )
        if steps < total:
            _warn(
                f"{name} has total_steps {total}, but this fit takes only {steps} {unit}: the schedule stops at "
                f"{100 * steps / total:.2g}% of its length, before it has annealed, so this run is not the technique "
                f"the config names. {fix}; or train for the schedule's length."
            )


@rank_zero_only
def _warn(message: str) -> None:
    # A line like the CLI's others, not Python's warning format with this file's path and line.
    sys.stderr.write(f"lit_nnopt: warning: {message}\n")
