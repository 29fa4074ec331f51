"""For the callback tests: a scripted stand-in for the Trainer, and small foreign modules.

``ScriptedTrainer`` holds exactly what the metric-driven callbacks read from a
Trainer, so a test can drive their hooks with a scripted sequence of metric values, Keras-style,
in milliseconds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.trainer.states import TrainerFn, TrainerState
from lightning.pytorch.utilities.types import LRSchedulerConfig
from torch import nn
from torch.utils.data import DataLoader


class ScriptedTrainer:
    """The attributes of ``pl.Trainer`` that EarlyStopping, ReduceLROnPlateau and the clipping callbacks read."""

    def __init__(self, module: nn.Module | None = None, optimizers: Sequence = (), schedulers: Sequence = ()) -> None:
        self.strategy = SingleDeviceStrategy(torch.device("cpu"))
        self.state = TrainerState(fn=TrainerFn.FITTING)
        self.sanity_checking = False
        self.fast_dev_run = False
        self.should_stop = False
        self.interrupted = False
        self.enable_validation = True
        self.current_epoch = 0
        self.global_step = 0
        self.global_rank = 0
        self.world_size = 1
        self.val_check_interval = 1.0
        self.check_val_every_n_epoch = 1
        self.log_every_n_steps = 1
        self.callback_metrics: dict[str, torch.Tensor] = {}
        self.lightning_module = module
        self.optimizers = list(optimizers)
        self.lr_scheduler_configs = [LRSchedulerConfig(scheduler) for scheduler in schedulers]
        self.precision_plugin = pl.plugins.Precision()


def run_checks(
    callback: Callback,
    trainer: ScriptedTrainer,
    values: Sequence[float],
    monitor: str = "val_loss",
    before_check=None,
    first_epoch: int = 0,
) -> int:
    """Feed ``values`` as one validation check per epoch, until the trainer is told to stop; return checks run."""
    for epoch, value in enumerate(values, start=first_epoch):
        trainer.current_epoch = epoch
        if before_check is not None:
            before_check(epoch)
        trainer.callback_metrics = {monitor: torch.tensor(float(value))}
        callback.on_validation_end(trainer, trainer.lightning_module)
        if trainer.should_stop:
            return epoch - first_epoch + 1
    return len(values)


class ScriptedMetricModel(BoringModel):
    """Lightning's BoringModel (a module lit_nnopt knows nothing about) logging a scripted ``val_loss``.

    ``val_loss`` at epoch ``e`` is ``script[e]`` (plus ``rank_offsets[e]`` times (-1, +1) for
    ranks 0 and 1, so that under DDP the ranks see different values with the same mean), logged
    without ``sync_dist`` as a careless user would.
    """

    def __init__(
        self,
        script: Sequence[float],
        rank_offsets: Sequence[float] | None = None,
        lr: float = 0.1,
        scheduler: bool = False,
    ) -> None:
        super().__init__()
        self.script = list(script)
        self.rank_offsets = list(rank_offsets or [0.0] * len(script))
        self.lr = lr
        self.scheduler = scheduler
        # Fixed data, so that a resumed run sees the same batches as an uninterrupted one.
        self.data = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=4)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=4)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        sign = -1.0 if self.global_rank == 0 else 1.0
        value = self.script[self.current_epoch] + sign * self.rank_offsets[self.current_epoch]
        self.log("val_loss", value)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr)
        if not self.scheduler:
            return optimizer
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]


def quiet_trainer(tmp_path, **kwargs) -> pl.Trainer:
    """A CPU Trainer with a few batches, no progress bar, summary or logger, writing under ``tmp_path``."""
    defaults = {
        "accelerator": "cpu",
        "devices": 1,
        "default_root_dir": tmp_path,
        "limit_train_batches": 4,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": False,
        "enable_checkpointing": False,
    }
    return pl.Trainer(**{**defaults, **kwargs})


def capture_logs(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture what Lightning and lit_nnopt's callbacks log (their loggers may not propagate to pytest's)."""
    for name in ("lightning.pytorch", "lit_nnopt.callbacks"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
        caplog.set_level(logging.INFO, logger=name)
    return caplog
