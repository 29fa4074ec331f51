"""Callbacks that tests pass to the CLI with ``--trainer.callbacks+=tests.helpers.NAME``."""

import json
from pathlib import Path

import lightning.pytorch as pl


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
            "split_size": len(loader.labels),
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(state))
