"""InterruptCheckpoint and ExactResume in process: a fit cut by a signal, or saved mid-epoch, resumes bitwise."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.nn import functional as F
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lit_nnopt import BatchLoader
from lit_nnopt.app.reports import RunSummary
from lit_nnopt.callbacks import EarlyStopping, ExactResume, InterruptCheckpoint


class _TinyClassifier(pl.LightningModule):
    """Logs its epoch metrics as torchmetrics objects (a mean, a max, an accuracy), as ExactResume asks."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 10))
        self.accuracy = MulticlassAccuracy(10)
        self.mean_loss, self.peak_loss = MeanMetric(), MaxMetric()

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        self.accuracy.update(logits, y)
        self.mean_loss.update(loss)
        self.peak_loss.update(loss)
        self.log("loss", self.mean_loss, on_step=False, on_epoch=True)
        self.log("peak_loss", self.peak_loss, on_step=False, on_epoch=True)
        self.log("accuracy", self.accuracy, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.001)


class _SignalAt(pl.Callback):
    """Sends ``signum`` to this process ``times`` times, at one training step or validation batch of epoch 0."""

    def __init__(self, signum: int, step: int = -1, val_batch: int = -1, times: int = 1) -> None:
        self.signum, self.step, self.val_batch, self.times = signum, step, val_batch, times

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self._send()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking and trainer.current_epoch == 0 and batch_idx == self.val_batch:
            self._send()

    def _send(self) -> None:
        for _ in range(self.times):
            os.kill(os.getpid(), self.signum)


def _tiny_fit(
    root: Path,
    *callbacks: pl.Callback,
    ckpt_path: str | None = None,
    val_batches: int = 0,
    interrupt: InterruptCheckpoint | None = None,
    before_interrupt: tuple[pl.Callback, ...] = (),
    module_class: type[pl.LightningModule] = _TinyClassifier,
):
    pl.seed_everything(3, verbose=False)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand((640, 1, 28, 28), generator=generator)
    loader = BatchLoader(images, torch.randint(0, 10, (640,), generator=generator), 32, shuffle=True, seed=1)
    val_loader = BatchLoader(images[:128], torch.randint(0, 10, (128,), generator=generator), 32, shuffle=False)
    summary = RunSummary()
    trainer = pl.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        default_root_dir=root,
        limit_val_batches=val_batches,
        num_sanity_val_steps=0,
        callbacks=[*before_interrupt, interrupt or InterruptCheckpoint(), summary, *callbacks],
    )
    model = module_class()
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=val_loader, ckpt_path=ckpt_path)
    return model, [{k: v for k, v in row.items() if k != "elapsed_seconds"} for row in summary.history]


def test_a_fit_stopped_mid_epoch_by_sigterm_resumes_to_the_same_weights_and_metrics(tmp_path):
    model, history = _tiny_fit(tmp_path / "whole")
    with pytest.raises(SystemExit) as stop:
        _tiny_fit(tmp_path / "cut", _SignalAt(signal.SIGTERM, step=13))
    assert stop.value.code == 143
    checkpoint = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["global_step"] == 13 and saved["callbacks"]["InterruptCheckpoint"]["partial_epoch"]["epoch"] == 0
    resumed, resumed_history = _tiny_fit(tmp_path / "cut", ckpt_path=str(checkpoint))
    assert resumed_history == history and [row["epoch"] for row in history] == [0, 1]
    for name, tensor in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name


def test_sigterm_with_restore_best_weights_saves_and_resumes_the_state_of_the_signal(tmp_path):
    # Issue 15, finding 1: EarlyStopping used to load the best epoch's weights in on_exception,
    # before this checkpoint was written, so it held those weights with the current step.
    def stopper():
        return EarlyStopping("val_loss", patience=10, restore_best_weights=True)

    # Listed before the interrupt checkpoint, as in the CLI, where the default callbacks come last.
    model, history = _tiny_fit(tmp_path / "whole", val_batches=2, before_interrupt=(stopper(),))
    with pytest.raises(SystemExit) as stop:
        _tiny_fit(tmp_path / "cut", _SignalAt(signal.SIGTERM, step=27), val_batches=2, before_interrupt=(stopper(),))
    assert stop.value.code == 143
    checkpoint = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    resumed, resumed_history = _tiny_fit(
        tmp_path / "cut", val_batches=2, ckpt_path=str(checkpoint), before_interrupt=(stopper(),)
    )
    assert resumed_history == history
    for name, tensor in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name


@pytest.mark.parametrize("grace, epochs_done", [(10.0, [0]), (0.0, [])])
def test_a_signal_during_validation_waits_for_its_end_at_most_the_grace(tmp_path, grace, epochs_done):
    interrupt = InterruptCheckpoint(validation_grace=grace)
    with pytest.raises(SystemExit) as stop:
        _tiny_fit(tmp_path, _SignalAt(signal.SIGTERM, val_batch=1), val_batches=4, interrupt=interrupt)
    assert stop.value.code == 143
    assert interrupt.saved_path == str(tmp_path / "checkpoints" / "last.ckpt")
    saved = torch.load(interrupt.saved_path, weights_only=True)
    assert saved["global_step"] == 20  # all of epoch 0's training batches
    history = saved["callbacks"]["RunSummary"]["history"]
    assert [row["epoch"] for row in history] == epochs_done  # the epoch ended, with its validation, or not


def test_a_second_ctrl_c_stops_at_once_without_a_checkpoint(tmp_path, capfd, caplog):
    with pytest.raises(SystemExit) as stop:
        _tiny_fit(tmp_path, _SignalAt(signal.SIGINT, step=5, times=2))
    assert stop.value.code == 1  # Lightning's exit status for a KeyboardInterrupt
    # Logged (issue 15): to stderr in a program, to pytest's log capture under pytest.
    assert "stopped at once, without a checkpoint" in capfd.readouterr().err + caplog.text
    assert not (tmp_path / "checkpoints").exists()


def test_validation_grace_must_not_be_negative():
    with pytest.raises(ValueError, match="`validation_grace` must be a number of seconds >= 0, got -1"):
        InterruptCheckpoint(validation_grace=-1)


# -- ExactResume on its own ----------------------------------------------------------------------


class _SaveAtStep13(pl.Callback):
    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 13:
            trainer.save_checkpoint(self.path)


def test_exact_resume_alone_makes_a_mid_epoch_checkpoint_resume_bitwise(tmp_path):
    checkpoint = tmp_path / "step13.ckpt"
    model, history = _tiny_fit(tmp_path / "whole", _SaveAtStep13(checkpoint), interrupt=ExactResume())
    resumed, resumed_history = _tiny_fit(tmp_path / "again", ckpt_path=str(checkpoint), interrupt=ExactResume())
    assert resumed_history == history
    for name, tensor in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name


class _LogsATensor(_TinyClassifier):
    """Also logs its loss as a plain tensor with ``on_epoch=True``: Lightning averages it outside any checkpoint."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("tensor_loss", loss, on_step=False, on_epoch=True)
        return loss


def test_a_value_logged_as_a_tensor_covers_only_the_batches_after_a_mid_epoch_resume(tmp_path):
    # The documented limit of ExactResume (issue 25): public APIs reach a Metric's state, not
    # Lightning's own running mean of a logged tensor. The weights and Metric values still match.
    checkpoint = tmp_path / "step13.ckpt"
    model, history = _tiny_fit(
        tmp_path / "whole", _SaveAtStep13(checkpoint), interrupt=ExactResume(), module_class=_LogsATensor
    )
    resumed, resumed_history = _tiny_fit(
        tmp_path / "again", ckpt_path=str(checkpoint), interrupt=ExactResume(), module_class=_LogsATensor
    )
    for name, tensor in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name
    cut, uncut = resumed_history[0], history[0]
    assert {name: cut[name] for name in ("loss", "peak_loss", "accuracy")} == {
        name: uncut[name] for name in ("loss", "peak_loss", "accuracy")
    }
    assert cut["tensor_loss"] != uncut["tensor_loss"]  # the mean of the batches after step 13 alone
    assert resumed_history[1] == history[1]  # the next epoch is whole again


def test_two_exact_resumes_are_refused(tmp_path):
    with pytest.raises(MisconfigurationException, match="InterruptCheckpoint, ExactResume: each restores"):
        _tiny_fit(tmp_path, ExactResume())
