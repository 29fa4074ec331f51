"""A Rich progress bar that costs nothing between its redraws."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar
from typing_extensions import override


class CheapRichProgressBar(RichProgressBar):
    """Lightning's ``RichProgressBar``, reading the logged metrics only when it redraws.

    The parent reads every metric with ``.item()`` after every batch: a device synchronization
    per step on a GPU, and on a CPU more time than the training step of a small network. This
    bar reads them every ``refresh_rate`` batches and at the last batch of the epoch.

    It counts the batches the training loop has run, so that with
    :class:`~lit_nnopt.callbacks.StepsPerExecution` it counts batches, not groups of them, as
    Keras' bar does.
    """

    _metrics_read_at = 0  # batches of the epoch run when the metrics were last read

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()  # resumed mid-epoch
        batches_run = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        self._update(self.train_progress_bar_id, batches_run)
        if batches_run < self._metrics_read_at:  # a new epoch
            self._metrics_read_at = 0
        if batches_run - self._metrics_read_at >= self.refresh_rate or trainer.is_last_batch:
            self._metrics_read_at = batches_run
            self._update_metrics(trainer, pl_module)
        self.refresh()
