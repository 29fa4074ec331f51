"""A Rich progress bar that costs nothing between its redraws."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar

from lit_nnopt.data import BatchLoader


class CheapRichProgressBar(RichProgressBar):
    """Lightning's ``RichProgressBar``, reading the logged metrics only when it redraws.

    The parent reads every metric with ``.item()`` after every batch: a device synchronization
    per step on a GPU, and on a CPU more time than the training step of a small network. This
    bar reads them every ``refresh_rate`` Lightning steps and at the last batch of the epoch.

    With ``steps_per_execution`` it counts batches, not groups of them, as Keras' bar does.
    """

    @property
    def total_train_batches(self) -> int | float:
        return min(super().total_train_batches * self._batches_per_step(), self._batches_per_epoch())

    def _batches_per_step(self) -> int:
        loader = self.trainer.train_dataloader
        return loader.steps_per_execution if isinstance(loader, BatchLoader) else 1

    def _batches_per_epoch(self) -> int | float:
        loader = self.trainer.train_dataloader
        return loader.batches_per_epoch if isinstance(loader, BatchLoader) else float("inf")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()  # resumed mid-epoch
        self._update(self.train_progress_bar_id, min((batch_idx + 1) * self._batches_per_step(), self.total_train_batches))
        if (batch_idx + 1) % self.refresh_rate == 0 or trainer.is_last_batch:
            self._update_metrics(trainer, pl_module)
        self.refresh()
