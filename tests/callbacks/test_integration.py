"""The callbacks in a real Trainer: Lightning's BoringModel (a foreign module), ours, AMP, accumulation, resume."""

from __future__ import annotations

import re

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, OnExceptionCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.plugins import MixedPrecision
from torch.utils.data import DataLoader, TensorDataset

from lit_nnopt import MNISTClassifier
from lit_nnopt.app.reports import stop_reason
from lit_nnopt.callbacks import EarlyStopping, GradientClipping, GradientNormMonitor, NaNGuard, ReduceLROnPlateau
from tests.helpers.callbacks import ScriptedMetricModel, capture_logs, quiet_trainer


class WeightsAtValidation(Callback):
    """Keeps a copy of the module's weights at the end of each validation, by epoch."""

    def __init__(self) -> None:
        self.by_epoch: dict[int, dict[str, torch.Tensor]] = {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.by_epoch[trainer.current_epoch] = {k: v.clone() for k, v in pl_module.state_dict().items()}


def test_foreign_module_with_a_scheduler(tmp_path):
    weights = WeightsAtValidation()
    stopper = EarlyStopping("val_loss", patience=3, restore_best_weights=True)
    plateau = ReduceLROnPlateau("val_loss", factor=0.1, patience=2, min_delta=0.0, verbose=False)
    clipping = GradientClipping(mode="norm", max_norm=1e-3)
    model = ScriptedMetricModel([1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5], lr=0.1, scheduler=True)
    trainer = quiet_trainer(tmp_path, max_epochs=7, callbacks=[weights, stopper, plateau, clipping])
    trainer.fit(model)
    # Lightning steps StepLR (halving) after each epoch's last batch, before validation: at epoch 3's
    # check, the second without improving on epoch 1's 0.5, the lr is 0.1 / 2**4. It and StepLR's base
    # lr are cut tenfold.
    assert [(r["epoch"], r["old_lr"], r["new_lr"]) for r in plateau.reductions] == [
        (3, pytest.approx(0.00625), pytest.approx(0.000625))
    ]
    assert trainer.lr_scheduler_configs[0].scheduler.base_lrs == [pytest.approx(0.01)]
    assert (stopper.stopped_epoch, stopper.best_epoch) == (4, 1)
    assert stop_reason(trainer).startswith("early stopping at epoch 4: Monitored metric val_loss did not improve")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, weights.by_epoch[1][name])
    assert clipping.steps == 5 * 4 and clipping.clipped_fraction == 1.0
    assert trainer.callback_metrics["grad_clip/norm_after"].item() == pytest.approx(1e-3, rel=1e-3)


def test_our_classifier(tmp_path):
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randn(64, 1, 28, 28, generator=generator), torch.randint(0, 10, (64,), generator=generator)
    loader = DataLoader(TensorDataset(images, labels), batch_size=16)
    clipping = GradientClipping(mode="agc", agc_exclude=["net.layers.3.*"])  # the output layer, as the paper
    plateau = ReduceLROnPlateau("val_acc", factor=0.5, patience=0, min_delta=1.0, verbose=False)
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[plateau, clipping, GradientNormMonitor(every_n_steps=1)])
    trainer.fit(MNISTClassifier(), train_dataloaders=loader, val_dataloaders=loader)
    # min_delta=1 makes no accuracy an improvement after the first: the second check halves the lr.
    assert [(r["epoch"], r["old_lr"], r["new_lr"]) for r in plateau.reductions] == [(1, 1e-3, 5e-4)]
    assert clipping.steps == 8 and "grad_2.0_norm_total" in trainer.callback_metrics


class RecordsScaledGradients(BoringModel):
    def on_after_backward(self) -> None:
        self.scaled_norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in self.parameters()]))


def test_clips_unscaled_gradients_under_mixed_precision(tmp_path):
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    clipping = GradientClipping(mode="norm", max_norm=1e9, on_nonfinite="raise")
    model = RecordsScaledGradients()
    trainer = quiet_trainer(
        tmp_path, max_steps=1, plugins=[MixedPrecision("16-mixed", "cpu", scaler)], callbacks=[clipping]
    )
    trainer.fit(model)
    # Lightning unscales before on_before_optimizer_step: the callback sees the scaled norm / 1024.
    assert trainer.callback_metrics["grad_clip/norm_before"].item() == pytest.approx(
        model.scaled_norm.item() / 1024.0, rel=1e-3
    )


def test_overflow_under_a_grad_scaler_is_skipped_not_raised(tmp_path):
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**60)  # overflows fp16 gradients
    clipping = GradientClipping(mode="norm", max_norm=1.0, on_nonfinite="raise")
    trainer = quiet_trainer(
        tmp_path, max_steps=2, plugins=[MixedPrecision("16-mixed", "cpu", scaler)], callbacks=[clipping]
    )
    trainer.fit(BoringModel())
    assert clipping.nonfinite_steps == 2 and scaler.get_scale() < 2.0**60


def test_clips_once_per_optimizer_step_under_accumulation(tmp_path):
    clipping = GradientClipping(mode="value", clip_value=1e-4)
    trainer = quiet_trainer(
        tmp_path, max_epochs=1, limit_train_batches=6, accumulate_grad_batches=3, callbacks=[clipping]
    )
    trainer.fit(BoringModel())
    assert clipping.steps == 2 == trainer.global_step


class NaNLossModel(BoringModel):
    """SGD with momentum (so the optimizer has state); the loss is NaN at the listed global steps."""

    def __init__(self, nan_steps: set[int]) -> None:
        super().__init__()
        self.nan_steps = nan_steps
        self.at_batch_start: dict[int, dict[str, torch.Tensor]] = {}
        self.momentum_at_batch_start: dict[int, torch.Tensor] = {}

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self.at_batch_start[batch_idx] = {k: v.clone() for k, v in self.state_dict().items()}
        state = self.trainer.optimizers[0].state.get(self.layer.weight, {})
        if "momentum_buffer" in state:
            self.momentum_at_batch_start[batch_idx] = state["momentum_buffer"].clone()

    def training_step(self, batch, batch_idx: int):
        loss = self.step(batch)
        return loss * torch.nan if self.global_step in self.nan_steps else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def test_nan_guard_rolls_back_skips_and_cuts_the_lr(tmp_path, monkeypatch, caplog):
    logs = capture_logs(monkeypatch, caplog)
    guard = NaNGuard(action="rollback", lr_factor=0.5, snapshot_every_n_steps=1)
    model = NaNLossModel(nan_steps={3})
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=6, callbacks=[guard])
    trainer.fit(model)
    assert re.search(
        "non-finite loss at step 3 .*rolled back to the weights and optimizer state before step 2", logs.text
    )
    # Batch 3's loss is NaN: its step is skipped and step 2 (taken from weights that had a finite
    # loss, but leading to ones that did not) is undone, so batch 4 starts where batch 2 did.
    for name, tensor in model.at_batch_start[4].items():
        assert torch.equal(tensor, model.at_batch_start[2][name])
    assert torch.equal(model.momentum_at_batch_start[4], model.momentum_at_batch_start[2])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert (guard.skipped_steps, guard.rollbacks) == (1, 1)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05)


def test_nan_guard_stops_with_a_checkpoint_of_the_last_good_state(tmp_path, monkeypatch, caplog):
    logs = capture_logs(monkeypatch, caplog)
    guard = NaNGuard(action="stop", snapshot_every_n_steps=1)
    model = NaNLossModel(nan_steps={3})
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=6, callbacks=[guard])
    trainer.fit(model)
    assert "NaNGuard: stopping: non-finite loss at step 3" in logs.text
    assert trainer.global_step == 4 and guard.skipped_steps == 1
    saved = torch.load(guard.last_good_checkpoint_path, weights_only=False)["state_dict"]
    for name, tensor in saved.items():
        assert torch.equal(tensor, model.at_batch_start[2][name])
    assert guard.stopping_reason_message.endswith(f"saved to {guard.last_good_checkpoint_path}")


def test_nan_guard_stops_after_max_retries_in_a_row(tmp_path, monkeypatch, caplog):
    logs = capture_logs(monkeypatch, caplog)
    guard = NaNGuard(action="rollback", max_retries=2, snapshot_every_n_steps=1)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=10, callbacks=[guard])
    trainer.fit(NaNLossModel(nan_steps={3, 4, 5, 6, 7}))
    assert "after 2 rollbacks in a row" in logs.text
    assert (guard.rollbacks, guard.skipped_steps, trainer.global_step) == (2, 3, 6)


def test_resume_gives_the_same_decisions_as_an_uninterrupted_run(tmp_path):
    script = [1.0, 0.5, 0.6, 0.7, 0.4, 0.45, 0.5, 0.55]

    def run(ckpt_path=None):
        callbacks = [
            EarlyStopping("val_loss", patience=3, restore_best_weights=True),
            ReduceLROnPlateau("val_loss", factor=0.5, patience=2, min_delta=0.0, verbose=False),
            GradientClipping(mode="autoclip", autoclip_percentile=50),
            ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1),
        ]
        model = ScriptedMetricModel(script)
        trainer = quiet_trainer(tmp_path, max_epochs=len(script), callbacks=callbacks, enable_checkpointing=True)
        trainer.fit(model, ckpt_path=ckpt_path)
        return trainer, model, callbacks[:3]

    _, whole_model, whole = run()
    # Reductions after epochs 3 and 6, the stop at 7: all after the resume point below.
    assert [r["epoch"] for r in whole[1].reductions] == [3, 6] and whole[0].stopped_epoch == 7
    _, resumed_model, resumed = run(ckpt_path=tmp_path / "ckpt" / "epoch=2.ckpt")
    for whole_callback, resumed_callback in zip(whole, resumed, strict=True):
        assert repr(resumed_callback.state_dict()) == repr(whole_callback.state_dict())
    for name, tensor in whole_model.state_dict().items():
        assert torch.allclose(resumed_model.state_dict()[name], tensor)


class LogsTrainLoss(BoringModel):
    def training_step(self, batch, batch_idx: int):
        loss = self.step(batch)
        self.log("train_loss", 1.0, on_step=False, on_epoch=True)  # never improves
        return loss


def test_plateau_decides_at_epoch_end_without_validation(tmp_path):
    plateau = ReduceLROnPlateau("train_loss", factor=0.5, patience=1, verbose=False)
    trainer = quiet_trainer(tmp_path, max_epochs=3, limit_val_batches=0, callbacks=[plateau])
    trainer.fit(LogsTrainLoss())
    assert [r["epoch"] for r in plateau.reductions] == [1, 2]


class RaisesAtStep(Callback):
    """Keeps the module's weights at ``step`` and raises there, as a crash would."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.weights: dict[str, torch.Tensor] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.weights = {k: v.clone() for k, v in pl_module.state_dict().items()}
            raise RuntimeError("crash")


def test_a_checkpoint_on_exception_holds_the_weights_of_that_moment_not_the_best(tmp_path):
    # Issue 15, finding 1: EarlyStopping restored the best weights in on_exception, and Lightning
    # moves checkpoint callbacks last, so a checkpoint written on the exception held the best epoch's weights.
    crash = RaisesAtStep(step=14)  # in epoch 3, whose weights are not the best (epoch 1's)
    stopper = EarlyStopping("val_loss", patience=10, restore_best_weights=True)
    checkpoint = OnExceptionCheckpoint(dirpath=tmp_path / "ckpt", filename="on_exception")
    trainer = quiet_trainer(tmp_path, max_epochs=5, callbacks=[stopper, crash, checkpoint], enable_checkpointing=True)
    model = ScriptedMetricModel([1.0, 0.5, 0.6, 0.7, 0.8])
    with pytest.raises(RuntimeError, match="crash"):
        trainer.fit(model)
    assert stopper.best_epoch == 1
    saved = torch.load(tmp_path / "ckpt" / "on_exception.ckpt", weights_only=True)
    assert saved["global_step"] == 14
    for name, tensor in crash.weights.items():
        assert torch.equal(saved["state_dict"][name], tensor), name
        assert torch.equal(model.state_dict()[name], tensor), name


class LogsTrainLossWithValidation(BoringModel):
    """Logs an epoch-level ``train_loss`` from ``training_step`` (1.0, then 2.0: never better) and validates."""

    def training_step(self, batch, batch_idx: int):
        self.log("train_loss", 1.0 + min(self.current_epoch, 1), on_step=False, on_epoch=True)
        return self.step(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_plateau_on_a_training_metric_with_validation_decides_at_the_epochs_end(tmp_path):
    # Issue 15, finding 2: it decided after validation, before Lightning computed train_loss.
    plateau = ReduceLROnPlateau("train_loss", factor=0.5, patience=1)
    trainer = quiet_trainer(tmp_path, max_epochs=3, callbacks=[plateau])
    trainer.fit(LogsTrainLossWithValidation())
    assert [(r["epoch"], r["new_lr"]) for r in plateau.reductions] == [(1, 0.05), (2, 0.025)]


def test_plateau_after_each_validation_when_asked(tmp_path):
    plateau = ReduceLROnPlateau("val_loss", factor=0.5, patience=1, check_on_train_epoch_end=False)
    trainer = quiet_trainer(tmp_path, max_epochs=2, val_check_interval=2, callbacks=[plateau])
    trainer.fit(ScriptedMetricModel([1.0, 1.0]))
    assert [r["epoch"] for r in plateau.reductions] == [0, 1, 1]  # four checks: at batches 2 and 4 of each epoch


def test_nan_guard_rolls_back_after_a_resume_as_without_one(tmp_path, monkeypatch, caplog):
    # Issue 15, finding 6: the snapshot was not in checkpoints, so a NaN at the first step after
    # a resume found "nothing to roll back to" where the uninterrupted run rolled back.
    logs = capture_logs(monkeypatch, caplog)

    class WeightsAtStep6(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == 6:  # the batch after the NaN at step 5
                self.weights = {k: v.clone() for k, v in pl_module.state_dict().items()}

    def run(ckpt_path=None) -> dict[str, torch.Tensor]:
        guard, after = NaNGuard(action="rollback", snapshot_every_n_steps=2), WeightsAtStep6()
        saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_train_steps=5, filename="{step}")
        trainer = quiet_trainer(tmp_path, max_steps=7, callbacks=[guard, after, saver], enable_checkpointing=True)
        trainer.fit(NaNLossModel(nan_steps={5}), ckpt_path=ckpt_path)
        return after.weights

    whole = run()
    resumed = run(ckpt_path=tmp_path / "ckpt" / "step=5.ckpt")
    assert logs.text.count("rolled back to the weights and optimizer state before step 4") == 2
    for name, tensor in whole.items():  # both went back to the snapshot taken before step 4
        assert torch.equal(resumed[name], tensor), name


def test_nan_guard_reuses_its_snapshot_buffers(tmp_path):
    guard = NaNGuard(snapshot_every_n_steps=1)
    trainer = quiet_trainer(tmp_path, max_steps=3, callbacks=[guard])
    buffers = []

    class Records(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            buffers.append(guard._snapshot["module"]["layer.weight"].data_ptr())

    trainer.callbacks.append(Records())
    trainer.fit(NaNLossModel(nan_steps=set()))
    assert len(buffers) == 3 and len(set(buffers)) == 1
    assert NaNGuard().snapshot_every_n_steps == 100
