"""TrainingClock: how long a ``fit`` trained, its warm-up (compiling) and its validation each on their own."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from typing_extensions import override

from lit_nnopt.app.reports import RunSummary

CLOCK_FILE = "training_clock.json"


class TrainingClock(Callback):
    """Times the training steps of a ``fit``, with its warm-up and its validation reported apart.

    The clock runs from the start of the first training step to the end of the last one. Two
    parts of that span are reported on their own and left out of ``training_seconds``:

    - the warm-up: from the start of the first step to the moment its first batch's gradients
      are ready (``on_before_optimizer_step`` of the first optimizer step). With
      ``model.compile: true`` that is where ``torch.compile`` compiles the forward and backward
      passes; it holds one batch's work besides. It is measured to the first batch rather than
      to the end of the first Lightning step, because under ``StepsPerExecution`` that step is
      a whole group of batches. Recompiles later in training (a smaller last batch, say) count
      as training.
    - validation: every validation loop inside the span (sanity checks are not timed).

    On a CUDA device the clock is read after ``torch.cuda.synchronize()``: at the first step, at
    the first gradients, and around each validation loop, never once per step. The figures
    (seconds) go into ``summary.json`` under ``training_clock`` when the run has a
    :class:`~lit_nnopt.app.RunSummary`, else into ``training_clock.json`` in the run's folder;
    rank zero logs them in one line. A resumed ``fit`` times only its own part.

    Example::

        trainer:
          callbacks:
            - class_path: lit_nnopt.app.training_clock.TrainingClock
    """

    def __init__(self) -> None:
        self._clock = time.perf_counter
        self.figures: dict[str, Any] = {}
        self._reset()

    def _reset(self) -> None:
        self._first_step_at: float | None = None
        self._warm_at: float | None = None
        self._last_step_end: float | None = None
        self._stepped_since_mark = False
        self._validation_started: float | None = None
        self._validations: list[tuple[float, float]] = []

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()
        self.figures = {}

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._first_step_at is None:
            self._first_step_at = self._now(pl_module)
        self._stepped_since_mark = True

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._warm_at is None and self._first_step_at is not None:
            self._warm_at = self._now(pl_module)

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._validation_started = self._now(pl_module)
        self._mark_training_end(self._validation_started)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._validation_started is None:
            return
        self._validations.append((self._validation_started, self._now(pl_module)))
        self._validation_started = None

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._stepped_since_mark:  # steps ran after the last validation, or there was none
            self._mark_training_end(self._now(pl_module))

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._stepped_since_mark:  # a fit stopped inside an epoch (max_steps, a callback)
            self._mark_training_end(self._now(pl_module))
        if self._first_step_at is None or self._last_step_end is None:
            return
        self.figures = self._figures()
        rank_zero_info(
            "TrainingClock: {training_seconds:.3f} s of training, {warmup_seconds:.3f} s of warm-up (first "
            "gradients), {validation_seconds:.3f} s of validation".format(**self.figures)
        )
        summary = next((cb for cb in trainer.callbacks if isinstance(cb, RunSummary)), None)
        if summary is not None:
            summary.record("training_clock", self.figures)
        else:
            self._write(Path(trainer.log_dir or trainer.default_root_dir))  # log_dir: a collective under DDP

    def _mark_training_end(self, now: float) -> None:
        if self._stepped_since_mark:
            self._last_step_end = now
            self._stepped_since_mark = False

    def _figures(self) -> dict[str, float]:
        """Seconds: the span, warm-up, validation (all of it, and within the span) and training."""
        start, end = self._first_step_at, self._last_step_end
        assert start is not None and end is not None
        warm_at = self._warm_at if self._warm_at is not None else start
        inside = sum(stop - begin for begin, stop in self._validations if begin >= start and stop <= end)
        span = end - start
        return {
            "train_span_seconds": span,
            "warmup_seconds": warm_at - start,
            "validation_seconds": sum(stop - begin for begin, stop in self._validations),
            "validation_seconds_in_span": inside,
            "training_seconds": span - (warm_at - start) - inside,
        }

    def _now(self, pl_module: pl.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return self._clock()

    @rank_zero_only
    def _write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CLOCK_FILE).write_text(json.dumps(self.figures, indent=2))
