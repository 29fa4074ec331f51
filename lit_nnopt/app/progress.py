"""A Rich progress bar that costs nothing between its redraws."""

from __future__ import annotations

import io
import re
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from rich.console import Console
from typing_extensions import override


def progress_bar(refresh_rate: int) -> ProgressBar:
    """lit_nnopt's Rich bar, or Lightning's tqdm bar where Lightning's Rich bar cannot start."""
    if rich_bar_starts():
        return CheapRichProgressBar(refresh_rate=refresh_rate)
    return TQDMProgressBar(refresh_rate=refresh_rate)


def rich_bar_starts() -> bool:
    """Whether Lightning's ``RichProgressBar`` can start with the installed rich.

    Lightning before 2.5 clears rich's live display when the bar starts, whether or not one is
    shown, and rich 14.1 and later raise ``IndexError`` when there is none (Lightning 2.5 checks
    first): that pair fails every fit at its first bar.
    """
    try:
        Console(file=io.StringIO()).clear_live()
    except IndexError:
        major, minor = (int(part) for part in re.findall(r"\d+", pl.__version__)[:2])
        return (major, minor) >= (2, 5)
    return True


class CheapRichProgressBar(RichProgressBar):
    """Lightning's ``RichProgressBar``, reading the logged metrics only when it redraws.

    The parent reads every metric with ``.item()`` after every batch: a device synchronization
    per step on a GPU, and on a CPU more time than the training step of a small network. This
    bar reads them (its public ``get_metrics``) every ``refresh_rate`` batches and at the last
    batch of the epoch, and shows the values read last in between.

    It counts the batches the training loop has run, so that with
    :class:`~lit_nnopt.callbacks.StepsPerExecution` it counts batches, not groups of them, as
    Keras' bar does.
    """

    _batches_at_metrics_read = 0  # batches of the epoch run when the metrics were last read
    _read_metrics_now = True
    _metrics_shown: dict[str, Any] | None = None

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.is_disabled and self.train_progress_bar_id is None:
            # Resumed mid-epoch: Lightning does not call the epoch's start hook, which makes the bar.
            self.on_train_epoch_start(trainer, pl_module)
        batches_run = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        if batches_run < self._batches_at_metrics_read:  # a new epoch
            self._batches_at_metrics_read = 0
        self._read_metrics_now = (
            batches_run - self._batches_at_metrics_read >= self.refresh_rate or trainer.is_last_batch
        )
        if self._read_metrics_now:
            self._batches_at_metrics_read = batches_run
        try:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batches_run - 1)
        finally:
            self._read_metrics_now = True  # at the epoch's end and after validation, as the parent
        # Lightning 2.6 sets the bar to `batch_idx + 1`; before, it advanced by `refresh_rate` per
        # call. Either way the bar shows the batches run, whatever a step holds.
        if self.progress is not None and self.train_progress_bar_id is not None:
            if self.progress.tasks[self.train_progress_bar_id].completed != batches_run:
                self.progress.update(self.train_progress_bar_id, completed=batches_run)

    @override
    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        if self._read_metrics_now or self._metrics_shown is None:
            self._metrics_shown = super().get_metrics(trainer, pl_module)
        return self._metrics_shown
