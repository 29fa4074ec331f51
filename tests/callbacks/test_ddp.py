"""Two CPU processes (ddp_spawn, gloo) whose ranks see different metric values and one NaN loss: all decide alike."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.multiprocessing.spawn import ProcessExitedException

from lit_nnopt.callbacks import EarlyStopping, GradientClipping, NaNGuard, ReduceLROnPlateau
from tests.helpers.callbacks import ScriptedMetricModel, quiet_trainer

# Two DDP processes on the CPU.
pytestmark = pytest.mark.slow

# The mean over the two ranks is SCRIPT; rank 0 sees SCRIPT - OFFSETS, rank 1 SCRIPT + OFFSETS:
#   rank 0: 1.0, 0.25, 0.75, 0.25, 0.75, 0.25    alone: best at epoch 1, plateau at 3, stop at 4
#   rank 1: 1.0, 0.75, 0.25, 0.75, 0.25, 0.75    alone: best at epoch 2, plateau at 4, stop at 5
#   mean:   1.0, 0.5,  0.5,  0.5,  0.5,  0.5     best at epoch 1, plateau at 3, stop at 4
SCRIPT = [1.0, 0.5, 0.5, 0.5, 0.5, 0.5]
OFFSETS = [0.0, 0.25, -0.25, 0.25, -0.25, 0.25]
NAN_STEP = 2  # rank 1 only


class NaNOnOneRank(ScriptedMetricModel):
    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.step(batch)
        return loss * math.nan if (self.global_rank, self.global_step) == (1, NAN_STEP) else loss


class RecordPerRank(Callback):
    """Writes what each rank decided to ``rank<r>.pt``: ddp_spawn does not send callbacks back."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.weights_at_epoch_1: dict[str, torch.Tensor] = {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 1 and not trainer.sanity_checking:
            self.weights_at_epoch_1 = {k: v.clone() for k, v in pl_module.state_dict().items()}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stopper, plateau, guard, clipping = (
            next(c for c in trainer.callbacks if isinstance(c, kind))
            for kind in (EarlyStopping, ReduceLROnPlateau, NaNGuard, GradientClipping)
        )
        record = {
            "stopped_epoch": stopper.stopped_epoch,
            "best_epoch": stopper.best_epoch,
            "reductions": plateau.reductions,
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
            "skipped_steps": guard.skipped_steps,
            "clipping_steps": clipping.steps,
            "weights": {k: v.clone() for k, v in pl_module.state_dict().items()},
            "weights_at_epoch_1": self.weights_at_epoch_1,
        }
        torch.save(record, self.folder / f"rank{trainer.global_rank}.pt")


def _fit_two_ranks(tmp_path: Path) -> None:
    callbacks = [
        NaNGuard(lr_factor=0.5),
        GradientClipping(mode="norm", max_norm=1e-3),
        EarlyStopping("val_loss", patience=3, restore_best_weights=True),
        ReduceLROnPlateau("val_loss", factor=0.5, patience=2, min_delta=0.0, verbose=False),
        RecordPerRank(tmp_path),
    ]
    trainer = quiet_trainer(
        tmp_path, strategy="ddp_spawn", devices=2, max_epochs=len(SCRIPT), limit_train_batches=2, callbacks=callbacks
    )
    trainer.fit(NaNOnOneRank(SCRIPT, rank_offsets=OFFSETS, lr=0.1))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_two_ranks_with_different_metrics_decide_alike(tmp_path):
    try:
        _fit_two_ranks(tmp_path)
    except ProcessExitedException as error:
        # Seen once in a whole slow tier (never in 13 runs of this test alone): a spawned rank
        # aborted in native code ("terminate called without an active exception"), not in a
        # Python assertion. One more try tells such a crash from a fault of the callbacks.
        if error.signal_name != "SIGABRT":
            raise
        _fit_two_ranks(tmp_path)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]
    for record in ranks:
        assert (record["stopped_epoch"], record["best_epoch"]) == (4, 1)
        # NaNGuard halved 0.1 at step 2; the plateau halved 0.05 at epoch 3.
        assert [(r["epoch"], r["old_lr"], r["new_lr"]) for r in record["reductions"]] == [(3, 0.05, 0.025)]
        assert record["skipped_steps"] == 1 and record["clipping_steps"] == 5 * 2 - 1
        for name, tensor in record["weights"].items():
            assert torch.isfinite(tensor).all()
            assert torch.equal(tensor, record["weights_at_epoch_1"][name])
    for name, tensor in ranks[0]["weights"].items():
        assert torch.equal(tensor, ranks[1]["weights"][name])
