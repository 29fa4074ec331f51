"""StepsPerExecution: groups of batches in one Lightning step give the training of one batch per step.

Small synthetic data (110 samples, batches of 10: 11 batches an epoch, so groups of 3 leave a
last group of 2) and tiny networks: every K>1 run is compared bit for bit with the K=1 run
that Lightning's automatic optimization drives alone, for lit_nnopt's MNISTClassifier and
for a foreign LightningModule that knows nothing of lit_nnopt.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loops.optimization.automatic import _AutomaticOptimization
from lightning.pytorch.plugins import MixedPrecision
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lit_nnopt import MLP, MNISTClassifier, _lightning_internals
from lit_nnopt.app.progress import CheapRichProgressBar, rich_bar_starts
from lit_nnopt.callbacks import GradientClipping, NaNGuard, StepsPerExecution
from lit_nnopt.data import BatchLoader
from tests.helpers import REPO, cli_fit

SAMPLES, BATCH = 110, 10  # 11 batches an epoch
K = 3  # groups of 3, 3, 3, 2


def _tensors(count: int = SAMPLES, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand((count, 1, 28, 28), generator=generator)
    labels = torch.randint(0, 10, (count,), generator=generator)
    return images, labels


# The loaders other projects use, and lit_nnopt's own: each shuffles every epoch.
LOADERS = ["BatchLoader", "DataLoader", "DataLoader-generator"]


def _loader(kind: str = "BatchLoader", count: int = SAMPLES) -> BatchLoader | DataLoader:
    images, labels = _tensors(count)
    if kind == "BatchLoader":
        return BatchLoader(images, labels, BATCH, shuffle=True, seed=3)
    # Without a generator, the sampler draws each epoch's seed from torch's global generator.
    generator = torch.Generator().manual_seed(3) if kind == "DataLoader-generator" else None
    return DataLoader(TensorDataset(images, labels), batch_size=BATCH, shuffle=True, generator=generator)


def _val_loader() -> BatchLoader:
    return BatchLoader(*_tensors(40, seed=1), 20, shuffle=False)


@pytest.mark.parametrize("steps", [0, -1, 1.5, True, "4"])
def test_steps_must_be_a_positive_integer(steps):
    with pytest.raises(ValueError, match="`steps` must be a positive number"):
        StepsPerExecution(steps)


# -- training: K=3 against K=1 --------------------------------------------------------------


@pytest.fixture(params=["direct", "lightning"])
def step_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs the test twice: a group's batches through DirectStep where it applies, then through Lightning's step."""
    if request.param == "lightning":
        monkeypatch.setattr(_lightning_internals, "direct_step_obstacle", lambda trainer: "forced by the test")
    return request.param


def _trainer(steps: int, callbacks: list | None = None, **kwargs) -> pl.Trainer:
    defaults = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 3,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
    }
    return pl.Trainer(**{**defaults, **kwargs}, callbacks=[*(callbacks or []), StepsPerExecution(steps)])


def _model(
    optimizer: dict | None = None,
    lr_scheduler: dict | None = None,
    interval: str = "epoch",
    frequency: int = 1,
    dropout: float = 0.0,
) -> MNISTClassifier:
    pl.seed_everything(7, verbose=False)
    return MNISTClassifier(
        net=MLP([16], dropout=dropout),
        optimizer=optimizer or {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1, "momentum": 0.9}},
        lr_scheduler=lr_scheduler,
        lr_scheduler_interval=interval,
        lr_scheduler_frequency=frequency,
    )


def _fit(
    steps: int,
    *,
    validate: bool = False,
    model: pl.LightningModule | None = None,
    loader: str = "BatchLoader",
    **kwargs,
) -> tuple:
    model_kwargs = {
        k: kwargs.pop(k) for k in ("optimizer", "lr_scheduler", "interval", "frequency", "dropout") if k in kwargs
    }
    model = model if model is not None else _model(**model_kwargs)
    trainer = _trainer(steps, **kwargs)
    trainer.fit(model, train_dataloaders=_loader(loader), val_dataloaders=_val_loader() if validate else None)
    # Where the fit leaves torch's global generator: what dropout and augmentation draw from next.
    trainer.rng_state_after_fit = torch.get_rng_state()
    return model, trainer


def _lr(trainer: pl.Trainer) -> float:
    return trainer.optimizers[0].param_groups[0]["lr"]


def _assert_same_tensors(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        if isinstance(tensor, dict):
            _assert_same_tensors(actual[name], tensor)
        elif isinstance(tensor, torch.Tensor):
            assert torch.equal(actual[name], tensor), name
        elif isinstance(tensor, list):  # LBFGS keeps lists of tensors
            _assert_same_tensors(dict(enumerate(actual[name])), dict(enumerate(tensor)))
        else:
            assert actual[name] == tensor, name


def _assert_same_training(grouped: tuple, single: tuple) -> None:
    (grouped_model, grouped_trainer), (single_model, single_trainer) = grouped, single
    assert grouped_trainer.global_step == single_trainer.global_step
    _assert_same_tensors(grouped_model.state_dict(), single_model.state_dict())
    _assert_same_tensors(
        grouped_trainer.optimizers[0].state_dict()["state"], single_trainer.optimizers[0].state_dict()["state"]
    )
    assert [c.scheduler.state_dict() for c in grouped_trainer.lr_scheduler_configs] == [
        c.scheduler.state_dict() for c in single_trainer.lr_scheduler_configs
    ]
    assert _lr(grouped_trainer) == _lr(single_trainer)
    # Every metric logged, summed in the same order.
    _assert_same_tensors(dict(grouped_trainer.callback_metrics), dict(single_trainer.callback_metrics))
    assert torch.equal(grouped_trainer.rng_state_after_fit, single_trainer.rng_state_after_fit)


def _initial_weights() -> dict[str, torch.Tensor]:
    return _model().state_dict()


EXPONENTIAL = {"class_path": "torch.optim.lr_scheduler.ExponentialLR", "init_args": {"gamma": 0.5}}
# Only the first epoch improves on `inf - 10`: the lr halves after epochs 1 and 2.
PLATEAU = {
    "class_path": "torch.optim.lr_scheduler.ReduceLROnPlateau",
    "init_args": {"mode": "min", "factor": 0.5, "patience": 0, "threshold": 10.0, "threshold_mode": "abs"},
}


@pytest.mark.usefixtures("step_path")
def test_exponential_lr_per_epoch_trains_bitwise_alike():
    adam = {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}}
    single = _fit(1, optimizer=adam, lr_scheduler=EXPONENTIAL)
    grouped = _fit(K, optimizer=adam, lr_scheduler=EXPONENTIAL)
    assert single[1].global_step == 33 and _lr(single[1]) == pytest.approx(0.01 * 0.5**3)
    assert not torch.equal(single[0].state_dict()["net.layers.1.weight"], _initial_weights()["net.layers.1.weight"])
    assert {"train_loss", "train_acc"} <= set(grouped[1].callback_metrics)
    _assert_same_training(grouped, single)


@pytest.mark.usefixtures("step_path")
@pytest.mark.parametrize("frequency", [2, 4])
def test_step_lr_per_optimizer_step_with_frequency_trains_bitwise_alike(frequency):
    step_lr = {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 1, "gamma": 0.7}}
    single = _fit(1, lr_scheduler=step_lr, interval="step", frequency=frequency)
    grouped = _fit(K, lr_scheduler=step_lr, interval="step", frequency=frequency)
    # Lightning counts the frequency in batches of the epoch, from 1 at each epoch's start:
    # 11 // frequency scheduler steps in each epoch of 11 batches.
    assert _lr(single[1]) == pytest.approx(0.1 * 0.7 ** (3 * (11 // frequency)))
    _assert_same_training(grouped, single)


@pytest.mark.usefixtures("step_path")
def test_reduce_lr_on_plateau_monitoring_val_loss_trains_bitwise_alike():
    single = _fit(1, lr_scheduler=PLATEAU, validate=True, dropout=0.2)
    grouped = _fit(K, lr_scheduler=PLATEAU, validate=True, dropout=0.2)
    assert _lr(single[1]) == pytest.approx(0.1 * 0.25), "the plateau halves the lr after epochs 1 and 2"
    assert "val_loss" in grouped[1].callback_metrics
    _assert_same_training(grouped, single)


@pytest.mark.usefixtures("step_path")
@pytest.mark.parametrize(
    "max_steps, lr_scheduler",
    [
        (5, EXPONENTIAL),  # inside the second group of the first epoch
        (10, EXPONENTIAL),  # inside the last group (batches 9 and 10) of the first epoch
        (16, EXPONENTIAL),  # inside the second group of the second epoch
        (5, PLATEAU),  # before any validation: nothing for the plateau to monitor yet
        (16, PLATEAU),  # in the second epoch, after one validation
    ],
    ids=["5-exponential", "10-exponential", "16-exponential", "5-plateau", "16-plateau"],
)
def test_max_steps_inside_a_group_stops_there(max_steps, lr_scheduler):
    single = _fit(1, lr_scheduler=lr_scheduler, validate=True, max_steps=max_steps)
    grouped = _fit(K, lr_scheduler=lr_scheduler, validate=True, max_steps=max_steps)
    assert single[1].global_step == grouped[1].global_step == max_steps
    _assert_same_training(grouped, single)


class StopAtStep(pl.Callback):
    """Asks the fit to stop after the optimizer step numbered ``step``, from a per-step hook."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


@pytest.mark.usefixtures("step_path")
@pytest.mark.parametrize(
    "min_epochs, expected_steps",
    [(None, 5), (2, 22)],  # Lightning honours the stop at once, or only once `min_epochs` are run
    ids=["stop", "stop-after-min-epochs"],
)
def test_a_stop_asked_inside_a_group_stops_where_single_batches_stop(min_epochs, expected_steps):
    single = _fit(1, lr_scheduler=EXPONENTIAL, callbacks=[StopAtStep(4)], min_epochs=min_epochs)
    grouped = _fit(K, lr_scheduler=EXPONENTIAL, callbacks=[StopAtStep(4)], min_epochs=min_epochs)
    assert single[1].global_step == expected_steps
    _assert_same_training(grouped, single)


@pytest.mark.usefixtures("step_path")
@pytest.mark.parametrize("limit", [5, 7, 0.5])
def test_limit_train_batches_counts_batches_not_groups(limit):
    step_lr = {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 1, "gamma": 0.7}}
    single = _fit(1, lr_scheduler=step_lr, interval="step", limit_train_batches=limit, validate=True)
    grouped = _fit(K, lr_scheduler=step_lr, interval="step", limit_train_batches=limit, validate=True)
    assert grouped[1].num_training_batches == single[1].num_training_batches == int(limit * 11 if limit < 1 else limit)
    assert grouped[1].global_step == 3 * single[1].num_training_batches
    _assert_same_training(grouped, single)


def test_fp16_mixed_precision_with_a_grad_scaler_trains_bitwise_alike():
    def fit(steps: int) -> tuple:
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
        model, trainer = _fit(steps, max_epochs=2, plugins=[MixedPrecision("16-mixed", "cpu", scaler)])
        return model, trainer, scaler.get_scale()

    *single, single_scale = fit(1)
    *grouped, grouped_scale = fit(K)
    assert grouped_scale == single_scale
    _assert_same_training(tuple(grouped), tuple(single))


# -- a foreign LightningModule -------------------------------------------------------------------


class ForeignModule(pl.LightningModule):
    """A BoringModel-like module of its own: a linear layer, its own logs, a step-wise scheduler."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(784, 10)
        self.seen_batch_indices: list[int] = []

    def training_step(self, batch, batch_idx):
        images, labels = batch
        self.seen_batch_indices.append(batch_idx)
        loss = F.cross_entropy(self.layer(images.flatten(1)), labels)
        self.log("foreign_loss", loss, on_step=True, on_epoch=True)
        self.log("foreign_batch_idx", float(batch_idx), on_step=True, on_epoch=False)
        return {"loss": loss}

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        self.log("foreign_val_loss", F.cross_entropy(self.layer(images.flatten(1)), labels))

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=0.01)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 2}}


def _fit_foreign(steps: int, **kwargs) -> tuple:
    pl.seed_everything(11, verbose=False)
    model = ForeignModule()
    return _fit(steps, model=model, validate=True, **kwargs)


@pytest.mark.usefixtures("step_path")
@pytest.mark.parametrize(
    "trainer_kwargs", [{}, {"max_steps": 13}, {"limit_train_batches": 8}], ids=["epochs", "max_steps", "limit"]
)
def test_foreign_module_trains_bitwise_alike(trainer_kwargs):
    single = _fit_foreign(1, **trainer_kwargs)
    grouped = _fit_foreign(K, **trainer_kwargs)
    assert grouped[0].seen_batch_indices == single[0].seen_batch_indices
    assert {"foreign_loss_epoch", "foreign_val_loss"} <= set(grouped[1].callback_metrics)
    _assert_same_training(grouped, single)


class ForeignModuleWithBatchHook(ForeignModule):
    def on_after_batch_transfer(self, batch, dataloader_idx):
        images, labels = batch
        return images.flip(-1), labels  # a mirror "augmentation": every batch must go through it


@pytest.mark.usefixtures("step_path")
def test_foreign_module_batch_transfer_hooks_see_every_batch():
    pl.seed_everything(11, verbose=False)
    single = _fit(1, model=ForeignModuleWithBatchHook(), validate=True)
    pl.seed_everything(11, verbose=False)
    grouped = _fit(K, model=ForeignModuleWithBatchHook(), validate=True)
    pl.seed_everything(11, verbose=False)
    without_hook = _fit(1, model=ForeignModule(), validate=True)
    assert not torch.equal(single[0].layer.weight, without_hook[0].layer.weight)
    _assert_same_training(grouped, single)


class RecordLoggedSteps(pl.loggers.Logger):
    """A logger that keeps what it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[tuple[int, dict]] = []

    @property
    def name(self) -> str:
        return "record"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.received.append((step, dict(metrics)))


@pytest.mark.usefixtures("step_path")
def test_loggers_receive_the_same_step_and_epoch_metrics():
    loggers = {steps: RecordLoggedSteps() for steps in (1, K)}
    for steps, logger in loggers.items():
        _fit_foreign(steps, logger=logger, log_every_n_steps=2)
    assert loggers[K].received == loggers[1].received
    assert any("foreign_loss_step" in metrics for _, metrics in loggers[1].received)


# -- hooks, clipping, NaNGuard ------------------------------------------------------------------


class CountHooks(Callback):
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.steps_seen: list[int] = []
        self.batch_end_indices: list[int] = []
        self.last_batch_flags: list[bool] = []

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.counts["on_before_backward"] += 1

    def on_after_backward(self, trainer, pl_module) -> None:
        self.counts["on_after_backward"] += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.counts["on_before_optimizer_step"] += 1
        self.steps_seen.append(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.counts["on_train_batch_end"] += 1
        self.batch_end_indices.append(batch_idx)
        self.last_batch_flags.append(trainer.is_last_batch)


@pytest.mark.usefixtures("step_path")
def test_step_hooks_run_per_optimizer_step_and_batch_hooks_per_group():
    single_hooks, grouped_hooks = CountHooks(), CountHooks()
    _, single = _fit(1, max_epochs=2, callbacks=[single_hooks])
    _, grouped = _fit(K, max_epochs=2, callbacks=[grouped_hooks])
    assert grouped.global_step == single.global_step == 22
    for name in ("on_before_backward", "on_after_backward", "on_before_optimizer_step"):
        assert grouped_hooks.counts[name] == single_hooks.counts[name] == 22, name
    assert grouped_hooks.steps_seen == single_hooks.steps_seen == list(range(22))
    assert single_hooks.counts["on_train_batch_end"] == 22
    assert grouped_hooks.counts["on_train_batch_end"] == 8
    assert grouped_hooks.batch_end_indices == [0, 3, 6, 9] * 2, "the index of the group's first batch"
    assert grouped_hooks.last_batch_flags == [False, False, False, True] * 2
    assert single_hooks.last_batch_flags == ([False] * 10 + [True]) * 2


@pytest.mark.usefixtures("step_path")
@pytest.mark.parametrize(
    "clipping",
    [{"mode": "norm", "max_norm": 0.05}, {"mode": "autoclip", "autoclip_percentile": 10.0}],
    ids=["norm", "autoclip"],
)
def test_gradient_clipping_callback_clips_every_step_alike(clipping):
    single_clipping, grouped_clipping = GradientClipping(**clipping), GradientClipping(**clipping)
    single = _fit(1, max_epochs=2, callbacks=[single_clipping])
    grouped = _fit(K, max_epochs=2, callbacks=[grouped_clipping])
    assert grouped_clipping.steps == single_clipping.steps == 22
    assert grouped_clipping.clipped_steps == single_clipping.clipped_steps > 0
    _assert_same_training(grouped, single)


class NaNAtCall(torch.nn.Module):
    """A tiny MLP whose output is NaN at its ``at``-th training forward pass (counted from 1)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.mlp = MLP([16])
        self.at = at
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mlp(x)
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                return out * float("nan")
        return out


class WeightsAtGroupStart(Callback):
    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.weights.append({name: tensor.clone() for name, tensor in pl_module.state_dict().items()})


@pytest.mark.usefixtures("step_path")
def test_nan_guard_skips_the_rest_of_the_group_then_rolls_back(caplog, monkeypatch):
    """Batch 5 (the second of group 2) is NaN: batch 6 is skipped too, and group 2 is undone."""
    pl.seed_everything(7, verbose=False)
    guard, starts = NaNGuard(action="rollback", snapshot_every_n_steps=1), WeightsAtGroupStart()
    model = MNISTClassifier(net=NaNAtCall(5))
    trainer = _trainer(K, max_epochs=1, callbacks=[guard, starts])
    monkeypatch.setattr(logging.getLogger("lit_nnopt.callbacks"), "propagate", True)  # NaNGuard logs, not warns
    trainer.fit(model, train_dataloaders=_loader())
    assert re.search(
        "non-finite loss at step 4 .*rolled back to the weights and optimizer state before step 3", caplog.text
    )
    assert (guard.skipped_steps, guard.rollbacks) == (1, 1)
    _assert_same_tensors(starts.weights[2], starts.weights[1])  # group 2 left no trace
    assert not torch.equal(starts.weights[3]["net.mlp.layers.1.weight"], starts.weights[2]["net.mlp.layers.1.weight"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


# -- the direct step of a group's batches, and Lightning's own where it does not apply ----------------------


@pytest.fixture
def lightning_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the batch index of each batch that Lightning's automatic optimization runs."""
    calls: list[int] = []
    run = _AutomaticOptimization.run

    def counted(self, optimizer, batch_idx, kwargs):
        calls.append(batch_idx)
        return run(self, optimizer, batch_idx, kwargs)

    monkeypatch.setattr(_AutomaticOptimization, "run", counted)
    return calls


@pytest.mark.parametrize("model", [_model, ForeignModule], ids=["MNISTClassifier", "foreign"])
def test_every_batch_takes_the_direct_step_in_the_plain_case(model, lightning_steps):
    pl.seed_everything(11, verbose=False)
    _, trainer = _fit(K, model=model(), max_epochs=1)
    assert trainer.global_step == 11 and lightning_steps == [], "no batch went through Lightning's own step"


class OwnOptimizerStep(ForeignModule):
    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
        optimizer.step(closure=optimizer_closure)


class OwnGradientClipping(ForeignModule):
    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        self.clip_gradients(optimizer, gradient_clip_val=0.5, gradient_clip_algorithm="norm")


@pytest.mark.parametrize(
    "module, trainer_kwargs",
    [
        (OwnOptimizerStep, {}),
        (OwnGradientClipping, {}),
        (ForeignModule, {"profiler": "simple"}),
        (ForeignModule, {"precision": "bf16-mixed"}),
        (ForeignModule, {"precision": "64-true"}),
    ],
    ids=["optimizer_step", "configure_gradient_clipping", "profiler", "bf16-mixed", "64-true"],
)
def test_anything_but_the_plain_case_keeps_lightnings_step_for_every_batch(module, trainer_kwargs, lightning_steps):
    def fit(steps: int) -> tuple:
        pl.seed_everything(11, verbose=False)
        return _fit(steps, model=module(), validate=True, **trainer_kwargs)

    single = fit(1)
    lightning_steps.clear()
    grouped = fit(K)
    assert lightning_steps == list(range(11)) * 3
    _assert_same_training(grouped, single)


@pytest.mark.usefixtures("step_path")
def test_an_optimizer_that_evaluates_the_closure_several_times_trains_bitwise_alike():
    """LBFGS runs the closure up to ``max_iter`` times a step: each run has the step's hooks, as in Lightning."""
    lbfgs = {"class_path": "torch.optim.LBFGS", "init_args": {"lr": 0.1, "max_iter": 3}}
    hooks = {steps: CountHooks() for steps in (1, K)}
    single = _fit(1, optimizer=lbfgs, max_epochs=1, callbacks=[hooks[1]])
    grouped = _fit(K, optimizer=lbfgs, max_epochs=1, callbacks=[hooks[K]])
    assert hooks[K].counts == hooks[1].counts | {"on_train_batch_end": 4}
    assert single[1].global_step == 11 and hooks[1].counts["on_before_backward"] > 11
    _assert_same_training(grouped, single)


class RecordStepHooks(Callback):
    """Records, in call order, the hooks of each optimizer step: callback's and module's, with what they see."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.batch_end_losses: dict[int, float] = {}

    def record(self, source: str, hook: str, trainer: pl.Trainer, pl_module: pl.LightningModule, *seen) -> None:
        self.calls.append(
            (source, hook, trainer.global_step, pl_module._current_fx_name, torch.is_grad_enabled(), *seen)
        )

    def on_before_zero_grad(self, trainer, pl_module, optimizer) -> None:
        self.record("callback", "on_before_zero_grad", trainer, pl_module, type(optimizer).__name__)

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.record("callback", "on_before_backward", trainer, pl_module, loss.item(), loss.requires_grad)

    def on_after_backward(self, trainer, pl_module) -> None:
        self.record("callback", "on_after_backward", trainer, pl_module, pl_module.layer.weight.grad.sum().item())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.record("callback", "on_before_optimizer_step", trainer, pl_module, type(optimizer).__name__)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batch_end_losses[trainer.global_step] = outputs["loss"].item()


class RecordingModule(ForeignModule):
    """ForeignModule, whose step hooks and ``training_step`` write into the callback's record."""

    def __init__(self, record: RecordStepHooks) -> None:
        super().__init__()
        self.record = record

    def training_step(self, batch, batch_idx):
        self.record.record("module", "training_step", self.trainer, self, batch_idx)
        return super().training_step(batch, batch_idx)

    def on_before_zero_grad(self, optimizer) -> None:
        self.record.record("module", "on_before_zero_grad", self.trainer, self, type(optimizer).__name__)

    def on_before_backward(self, loss) -> None:
        self.record.record("module", "on_before_backward", self.trainer, self, loss.item())

    def on_after_backward(self) -> None:
        self.record.record("module", "on_after_backward", self.trainer, self)

    def on_before_optimizer_step(self, optimizer) -> None:
        self.record.record("module", "on_before_optimizer_step", self.trainer, self, type(optimizer).__name__)


def test_the_direct_step_calls_the_hooks_of_each_step_as_lightning_does(lightning_steps):
    records = {}
    for steps in (1, K):
        records[steps] = RecordStepHooks()
        pl.seed_everything(11, verbose=False)
        _fit(steps, model=RecordingModule(records[steps]), callbacks=[records[steps]], max_epochs=2)
    assert lightning_steps == list(range(11)) * 2, "only the run of one batch per step took Lightning's step"
    calls = records[1].calls
    assert len(calls) == 22 * 9 and calls[:2] == [
        ("module", "training_step", 0, "training_step", True, 0),
        ("callback", "on_before_zero_grad", 0, "on_before_zero_grad", True, "AdamW"),
    ]
    assert records[K].calls == calls
    # A group's outputs are its last batch's: the loss Lightning's step gave that batch.
    assert records[K].batch_end_losses == {
        step: records[1].batch_end_losses[step] for step in (3, 6, 9, 11, 14, 17, 20, 22)
    }


# -- any loader: the loader's own order, the global generator left where one batch per step leaves it ----------


class RecordBatches(Callback):
    """Records the labels of every batch that reaches ``training_step``, in order, through a module hook."""

    def __init__(self) -> None:
        self.labels: list[torch.Tensor] = []

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.labels.append(pl_module.last_labels)


class LabelledModule(ForeignModule):
    def training_step(self, batch, batch_idx):
        self.last_labels = batch[1].clone()
        return super().training_step(batch, batch_idx)


@pytest.mark.usefixtures("step_path")
@pytest.mark.parametrize("loader", LOADERS)
def test_any_shuffled_loader_serves_the_same_batches_and_trains_bitwise_alike(loader):
    records = {steps: RecordBatches() for steps in (1, K)}
    fits = {}
    for steps, record in records.items():
        pl.seed_everything(11, verbose=False)
        fits[steps] = _fit(steps, model=LabelledModule(), loader=loader, callbacks=[record], validate=True)
    single_labels = torch.cat(records[1].labels)
    assert len(records[1].labels) == 33
    assert not torch.equal(single_labels[:SAMPLES], single_labels[SAMPLES : 2 * SAMPLES]), "shuffled every epoch"
    assert torch.equal(torch.cat(records[K].labels), single_labels)
    _assert_same_training(fits[K], fits[1])


@pytest.mark.usefixtures("step_path")
@pytest.mark.parametrize("loader", LOADERS)
def test_dropout_draws_the_same_masks_with_any_loader(loader):
    single = _fit(1, loader=loader, dropout=0.5, lr_scheduler=EXPONENTIAL, validate=True)
    grouped = _fit(K, loader=loader, dropout=0.5, lr_scheduler=EXPONENTIAL, validate=True)
    _assert_same_training(grouped, single)


class RecordValidations(Callback):
    def __init__(self) -> None:
        self.at_steps: list[int] = []

    def on_validation_start(self, trainer, pl_module) -> None:
        self.at_steps.append(trainer.global_step)


@pytest.mark.usefixtures("step_path")
@pytest.mark.parametrize(
    "trainer_kwargs",
    [
        {"val_check_interval": 4},  # inside the second group of 3
        {"val_check_interval": 0.5},  # after 5 of 11 batches
        {"val_check_interval": 5, "check_val_every_n_epoch": None},  # counted over the whole fit
    ],
    ids=["every-4-batches", "half-epoch", "every-5-batches-of-the-fit"],
)
def test_validation_runs_after_the_same_batches_as_without_groups(trainer_kwargs):
    records = {steps: RecordValidations() for steps in (1, K)}
    fits = {
        steps: _fit(steps, loader="DataLoader", validate=True, callbacks=[record], **trainer_kwargs)
        for steps, record in records.items()
    }
    assert len(records[1].at_steps) >= 6
    assert records[K].at_steps == records[1].at_steps
    _assert_same_training(fits[K], fits[1])


class TwoLoaderModule(ForeignModule):
    """Trains on a dict of two loaders, as Lightning combines them (``max_size_cycle``)."""

    def training_step(self, batch, batch_idx):
        (images, labels), (more_images, more_labels) = batch["main"], batch["extra"]
        return super().training_step((torch.cat([images, more_images]), torch.cat([labels, more_labels])), batch_idx)


@pytest.mark.usefixtures("step_path")
def test_several_train_loaders_are_grouped_as_lightning_combines_them():
    def fit(steps: int) -> tuple:
        pl.seed_everything(11, verbose=False)
        model, trainer = TwoLoaderModule(), _trainer(steps, max_epochs=2)
        loaders = {"main": _loader("DataLoader"), "extra": _loader("DataLoader-generator", count=50)}
        trainer.fit(model, train_dataloaders=loaders)
        trainer.rng_state_after_fit = torch.get_rng_state()
        return model, trainer

    single, grouped = fit(1), fit(K)
    assert single[1].global_step == 22
    assert grouped[0].seen_batch_indices == single[0].seen_batch_indices
    _assert_same_training(grouped, single)


# -- a Lightning version the grouped path was not verified on -----------------------------------------------


def test_an_unverified_lightning_runs_one_batch_per_step_says_so_once_and_trains_alike(monkeypatch, caplog):
    single_hooks, fallback_hooks = CountHooks(), CountHooks()
    single = _fit(1, loader="DataLoader", dropout=0.2, validate=True, callbacks=[single_hooks])
    monkeypatch.setattr(pl, "__version__", "2.99.0")
    with caplog.at_level(logging.INFO):
        fallback = _fit(K, loader="DataLoader", dropout=0.2, validate=True, callbacks=[fallback_hooks])
    (message,) = [record.getMessage() for record in caplog.records if "StepsPerExecution" in record.getMessage()]
    assert "\n" not in message
    assert "runs one batch per Lightning step: lightning 2.99.0 is not a version" in message
    assert fallback_hooks.counts["on_train_batch_end"] == single_hooks.counts["on_train_batch_end"] == 33
    _assert_same_training(fallback, single)


@pytest.mark.parametrize("version, verified", [("2.4.0", True), ("2.6.6", True), ("2.3.3", False), ("3.0.0", False)])
def test_the_guard_knows_the_verified_versions_only(monkeypatch, version, verified):
    monkeypatch.setattr(pl, "__version__", version)
    reason = _lightning_internals.unverified_lightning(pl.Trainer(logger=False, enable_progress_bar=False))
    assert (reason is None) == verified
    assert verified or f"lightning {version} is not a version its grouped path was verified on" in reason


# -- misuse ------------------------------------------------------------------------------------


class ManualModule(ForeignModule):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False


@pytest.mark.parametrize(
    "trainer_kwargs, model, match",
    [
        ({"gradient_clip_val": 1.0}, None, r"gradient_clip_val=1.0.*GradientClipping callback"),
        ({"accumulate_grad_batches": 2}, None, r"accumulate_grad_batches=2.*own optimizer step"),
        ({}, ManualModule, r"needs automatic optimization.*ManualModule"),
    ],
    ids=["clip", "accumulate", "manual"],
)
def test_trainer_options_a_group_cannot_honour_are_refused(trainer_kwargs, model, match):
    with pytest.raises(MisconfigurationException, match=match):
        _fit(K, model=model() if model else None, validate=True, **trainer_kwargs)


def test_plateau_stepped_per_optimizer_step_is_refused():
    with pytest.raises(MisconfigurationException, match="ReduceLROnPlateau scheduler stepped every optimizer step"):
        _fit(K, lr_scheduler=PLATEAU, interval="step", validate=True)


def test_steps_1_accepts_what_groups_refuse():
    _, trainer = _fit(1, max_epochs=1, gradient_clip_val=1.0, accumulate_grad_batches=2)
    assert trainer.global_step == 6


# -- resume mid-epoch, whatever the group sizes ------------------------------------------------------


class SaveAtStep(Callback):
    """Saves a checkpoint mid-epoch after the step reaching ``step``, as ModelCheckpoint(every_n_train_steps) does."""

    def __init__(self, step: int, path: Path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


EXPONENTIAL_ADAM = {
    "lr_scheduler": EXPONENTIAL,
    "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}},
}
# Lightning 2.4 restores a mid-epoch checkpoint as if the batch during which it was saved had not
# completed (its counters one behind the loader); from 2.5 on, such a run ends as if never stopped.
LIGHTNING_RESUMES_MID_EPOCH_EXACTLY = tuple(int(part) for part in pl.__version__.split(".")[:2]) >= (2, 5)


def _fit_saving_mid_epoch(steps: int, path: Path) -> tuple:
    whole = _fit(steps, callbacks=[SaveAtStep(6, path)], **EXPONENTIAL_ADAM)  # 6: after the second group
    assert (
        torch.load(path, weights_only=True)["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["ready"] == 6
    )
    return whole


def _resumed_fit(steps: int, path: Path) -> tuple:
    model = _model(**EXPONENTIAL_ADAM)
    trainer = _trainer(steps)
    trainer.fit(model, train_dataloaders=_loader(), ckpt_path=path)
    trainer.rng_state_after_fit = torch.get_rng_state()
    return model, trainer


@pytest.mark.usefixtures("step_path")
@pytest.mark.parametrize("first, second", [(K, K), (K, 1), (1, K), (K, 2)])
def test_resume_mid_epoch_with_any_group_size_trains_as_one_batch_per_step(first, second, tmp_path):
    _fit_saving_mid_epoch(1, tmp_path / "single.ckpt")
    _fit_saving_mid_epoch(first, tmp_path / "grouped.ckpt")
    _assert_same_training(_resumed_fit(second, tmp_path / "grouped.ckpt"), _resumed_fit(1, tmp_path / "single.ckpt"))


@pytest.mark.skipif(not LIGHTNING_RESUMES_MID_EPOCH_EXACTLY, reason="Lightning 2.4 restores counters one behind")
@pytest.mark.usefixtures("step_path")
@pytest.mark.parametrize("first, second", [(K, K), (1, K)])
def test_resume_mid_epoch_with_groups_ends_as_the_uninterrupted_run(first, second, tmp_path):
    whole = _fit_saving_mid_epoch(first, tmp_path / "mid.ckpt")
    _assert_same_training(_resumed_fit(second, tmp_path / "mid.ckpt"), whole)


# -- the command line ---------------------------------------------------------------------------


def _error_paragraph(result) -> str:
    assert result.returncode != 0
    output = result.stderr + result.stdout
    assert "Traceback" not in output
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("lit_nnopt: error:")]
    return line


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, option",
    [
        (["--trainer.gradient_clip_val", "1.0"], "gradient_clip_val=1.0"),
        (["--trainer.accumulate_grad_batches", "2"], "accumulate_grad_batches=2"),
    ],
    ids=["clip", "accumulate"],
)
def test_cli_refuses_trainer_options_that_a_group_cannot_honour(args, option, mnist_dir, tmp_path):
    result = cli_fit("adam.yaml", mnist_dir, tmp_path, *args)
    message = _error_paragraph(result)
    assert option in message and "StepsPerExecution(steps=128)" in message
    assert not list(tmp_path.rglob("*.ckpt")), "refused before any training"


def _cli_fits(mnist_dir: Path, root: Path, *extra: str) -> tuple[dict, dict]:
    """The last.ckpt of adam.yaml with StepsPerExecution(steps=4) and (steps=1), run side by side."""

    def fit(steps: int) -> dict:
        result = cli_fit(
            "adam.yaml",
            mnist_dir,
            root / f"k{steps}",
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.limit_val_batches",
            "2",
            "--trainer.callbacks.steps",
            str(steps),
            *extra,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        (last,) = (root / f"k{steps}").rglob("last.ckpt")
        return torch.load(last, weights_only=True)

    with ThreadPoolExecutor(2) as pool:
        grouped, single = pool.map(fit, [4, 1])
    assert grouped["callbacks"]["StepsPerExecution"] == {"steps": 4}
    assert single["callbacks"]["StepsPerExecution"] == {"steps": 1}
    return grouped, single


@pytest.mark.slow
def test_cli_fit_with_groups_saves_the_weights_of_single_batches(mnist_dir, tmp_path):
    # One epoch of 750 batches: groups of 4 leave a last group of 2.
    grouped, single = _cli_fits(mnist_dir, tmp_path, "--trainer.max_epochs", "1")
    assert grouped["global_step"] == single["global_step"] == 750
    _assert_same_tensors(grouped["state_dict"], single["state_dict"])
    _assert_same_tensors(grouped["optimizer_states"][0]["state"], single["optimizer_states"][0]["state"])
    assert grouped["lr_schedulers"] == single["lr_schedulers"]


@pytest.mark.slow
def test_cli_limit_train_batches_counts_batches_not_groups(mnist_dir, tmp_path):
    """`--trainer.limit_train_batches 10` trains on 10 batches whatever the group size, as Keras' steps_per_epoch."""
    grouped, single = _cli_fits(mnist_dir, tmp_path, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "10")
    assert grouped["global_step"] == single["global_step"] == 20
    _assert_same_tensors(grouped["state_dict"], single["state_dict"])


# -- DDP: two CPU processes (gloo) --------------------------------------------------------------


def _ddp_fit(mnist_dir: Path, root: Path, steps: int) -> list[dict]:
    result = cli_fit(
        "adam.yaml",
        mnist_dir,
        root / "runs",
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.callbacks.steps",
        str(steps),
        "--trainer.callbacks+=tests.helpers.cli_callbacks.DumpWeights",
        "--trainer.callbacks.out_dir",
        str(root / "ranks"),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return [torch.load(root / "ranks" / f"rank{rank}.pt", weights_only=True) for rank in range(2)]


@pytest.mark.slow
def test_ddp_groups_train_like_single_batches_on_every_rank(mnist_dir, tmp_path):
    grouped = _ddp_fit(mnist_dir, tmp_path / "k4", 4)
    single = _ddp_fit(mnist_dir, tmp_path / "k1", 1)
    for ranks in (grouped, single):
        assert [rank["global_step"] for rank in ranks] == [375, 375]  # 24,000 samples a rank, groups 4 * 93 + 3
        _assert_same_tensors(ranks[1]["weights"], ranks[0]["weights"])
    _assert_same_tensors(grouped[0]["weights"], single[0]["weights"])


def _ddp_dataloader_fit(steps: int, out_dir: Path) -> list[dict]:
    command = [sys.executable, "-m", "tests.helpers.ddp_dataloader_fit", str(steps), str(out_dir)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(2)]


@pytest.mark.slow
def test_ddp_with_a_distributed_sampler_serves_each_rank_the_same_batches_and_weights(tmp_path):
    grouped = _ddp_dataloader_fit(K, tmp_path / "grouped")
    single = _ddp_dataloader_fit(1, tmp_path / "single")
    for rank in range(2):
        assert grouped[rank]["global_step"] == single[rank]["global_step"] == 3 * 13  # 100 samples a rank, batches of 8
        assert torch.equal(grouped[rank]["labels"], single[rank]["labels"])
        _assert_same_tensors(grouped[rank]["weights"], single[rank]["weights"])
    assert not torch.equal(single[0]["labels"], single[1]["labels"]), "each rank its own share"


# -- the progress bar -------------------------------------------------------------------------


class RecordBar(Callback):
    """Records the train bar's (completed, total) after each training step; placed after the bar."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = next(callback for callback in trainer.callbacks if isinstance(callback, CheapRichProgressBar))
        task = bar.progress.tasks[bar.train_progress_bar_id]
        self.seen.append((task.completed, task.total))


@pytest.mark.usefixtures("step_path")
@pytest.mark.skipif(not rich_bar_starts(), reason="this Lightning cannot start its Rich bar with this rich")
@pytest.mark.parametrize(("steps", "expected"), [(1, list(range(1, 12))), (K, [3, 6, 9, 11]), (4, [4, 8, 11])])
def test_progress_bar_counts_batches_not_groups(steps, expected):
    record = RecordBar()
    trainer = _trainer(steps, max_epochs=1, enable_progress_bar=True, callbacks=[CheapRichProgressBar(), record])
    trainer.fit(MNISTClassifier(net=MLP([16])), train_dataloaders=_loader())
    assert record.seen == [(done, SAMPLES // BATCH) for done in expected]
