"""Callbacks that tests hand to CLI subprocesses: ``--trainer.callbacks+=tests.helpers.cli_callbacks.NAME``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning.pytorch as pl
import torch


class DumpRankState(pl.Callback):
    """Writes, per rank, the final metrics and the training sample indices this rank was served."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        state = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "metrics": {name: float(value) for name, value in trainer.callback_metrics.items()},
            "global_step": trainer.global_step,
            "epoch0_indices": loader.indices(0).tolist(),
            "split_size": len(loader.targets),
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(state))


class PauseForSignal(pl.Callback):
    """Test helper: after training step ``step``, writes ``marker`` and waits until it is gone.

    The test sends its signal while the run waits here, then deletes the marker: the signal
    arrives at a known point, however slow the machine.
    """

    def __init__(self, marker: str, step: int) -> None:
        self.marker = Path(marker)
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return
        self.marker.write_text("waiting")
        deadline = time.monotonic() + 60
        while self.marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)


class DumpWeights(pl.Callback):
    """Writes, per rank, the weights and the global step at the end of fit."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        weights = {name: tensor.clone() for name, tensor in pl_module.state_dict().items()}
        torch.save(
            {"global_step": trainer.global_step, "weights": weights}, self.out_dir / f"rank{trainer.global_rank}.pt"
        )
