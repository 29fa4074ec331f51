"""Every drop-in under ``pytorch_lightning``, the separately installed Lightning, as under ``lightning.pytorch``.

Projects import Lightning either way; the two namespaces hold distinct classes, so a callback
built on one alone is refused by the other's Trainer ("Expected a parent").
"""

from __future__ import annotations

import pytorch_lightning
import torch
from pytorch_lightning.loops.optimization.automatic import _AutomaticOptimization
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lit_nnopt.callbacks import (
    EarlyStopping,
    GradientClipping,
    GradientNormMonitor,
    InterruptCheckpoint,
    NaNGuard,
    ReduceLROnPlateau,
    StepsPerExecution,
)

SAMPLES, BATCH = 96, 8  # 12 batches an epoch


class PlainModule(pytorch_lightning.LightningModule):
    """A module of a project that imports ``pytorch_lightning``: a linear classifier, its own logs."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(16, 3)

    def training_step(self, batch, batch_idx):
        inputs, labels = batch
        loss = F.cross_entropy(self.layer(inputs), labels)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        inputs, labels = batch
        self.log("val_loss", F.cross_entropy(self.layer(inputs), labels))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5, momentum=0.9)


def _loader(shuffle: bool) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(SAMPLES, 16, generator=generator)
    labels = torch.randint(0, 3, (SAMPLES,), generator=generator)
    return DataLoader(TensorDataset(inputs, labels), batch_size=BATCH, shuffle=shuffle)


def _fit(callbacks: list, tmp_path, max_epochs: int = 4) -> tuple[PlainModule, pytorch_lightning.Trainer]:
    pytorch_lightning.seed_everything(5, verbose=False)
    model = PlainModule()
    trainer = pytorch_lightning.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        callbacks=callbacks,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, train_dataloaders=_loader(shuffle=True), val_dataloaders=_loader(shuffle=False))
    return model, trainer


def test_every_drop_in_fits_a_pytorch_lightning_module(tmp_path):
    early_stopping = EarlyStopping(monitor="val_loss", mode="min", patience=10, restore_best_weights=True)
    plateau = ReduceLROnPlateau(monitor="val_loss", mode="min", factor=0.5, patience=0, min_delta=10.0)
    clipping = GradientClipping(mode="norm", max_norm=0.01)
    norms = GradientNormMonitor(every_n_steps=1)
    guard, interrupt = NaNGuard(), InterruptCheckpoint(dirpath=str(tmp_path / "interrupt"))
    callbacks = [early_stopping, plateau, clipping, norms, guard, interrupt, StepsPerExecution(steps=4)]
    model, trainer = _fit(callbacks, tmp_path)
    assert trainer.global_step == 4 * SAMPLES // BATCH
    assert clipping.steps == trainer.global_step and clipping.clipped_steps > 0
    # Every check after the first misses `min_delta=10`: the lr halves after epochs 2, 3 and 4.
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.5 * 0.5**3
    assert early_stopping.best_epoch is not None and torch.isfinite(torch.as_tensor(early_stopping.best_score))
    assert "grad_2.0_norm_total" in trainer.callback_metrics
    assert set(trainer.checkpoint_callback.state_dict()) and trainer.checkpoint_callback.best_model_path
    saved = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=False)["callbacks"]
    assert any(key.startswith("EarlyStopping") for key in saved) and "rng" in saved["InterruptCheckpoint"]


def test_grouped_steps_take_the_fast_path_and_train_bitwise_alike(tmp_path, monkeypatch):
    lightning_steps: list[int] = []
    run = _AutomaticOptimization.run

    def counted(self, optimizer, batch_idx, kwargs):
        lightning_steps.append(batch_idx)
        return run(self, optimizer, batch_idx, kwargs)

    monkeypatch.setattr(_AutomaticOptimization, "run", counted)
    single_model, single = _fit([], tmp_path / "single")
    single_rng = torch.get_rng_state()
    assert len(lightning_steps) == single.global_step
    lightning_steps.clear()
    grouped_model, grouped = _fit([StepsPerExecution(steps=5)], tmp_path / "grouped")
    assert lightning_steps == [], "every batch took the grouped path's direct step"
    assert grouped.global_step == single.global_step
    assert torch.equal(grouped_model.layer.weight, single_model.layer.weight)
    assert torch.equal(torch.get_rng_state(), single_rng)
