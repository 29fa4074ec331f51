"""steps_per_execution: groups of batches in one Lightning step give the weights of one batch per step.

Small synthetic data (110 samples, batches of 10: 11 batches an epoch, so groups of 3 leave a
last group of 2) and a tiny MLP: every K>1 run is compared bit for bit with the K=1 run that
Lightning's automatic optimization drives.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lit_nnopt import MLP, MNISTClassifier
from lit_nnopt.callbacks import GradientClipping, NaNGuard
from lit_nnopt.cli import _check_steps_per_execution
from lit_nnopt.data import BatchGroup, BatchLoader
from lit_nnopt.idx import DataError
from lit_nnopt.progress import CheapRichProgressBar
from tests.conftest import CONFIGS, run_cli

SAMPLES, BATCH = 110, 10  # 11 batches an epoch
K = 3  # groups of 3, 3, 3, 2


def _tensors(count: int = SAMPLES, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (count,), generator=generator)
    return images, labels


def _loader(steps: int = 1, count: int = SAMPLES, **kwargs) -> BatchLoader:
    return BatchLoader(*_tensors(count), BATCH, shuffle=True, seed=3, steps_per_execution=steps, **kwargs)


def _val_loader() -> BatchLoader:
    return BatchLoader(*_tensors(40, seed=1), 20, shuffle=False)


def _flatten(groups: list[BatchGroup]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    assert all(isinstance(group, BatchGroup) for group in groups)
    return [batch for group in groups for batch in group.batches()]


def _assert_same_batches(actual: list, expected: list) -> None:
    assert len(actual) == len(expected)
    for (images, labels), (expected_images, expected_labels) in zip(actual, expected):
        assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)


def _assert_same_groups(actual: list[BatchGroup], expected: list[BatchGroup]) -> None:
    assert len(actual) == len(expected)
    for group, expected_group in zip(actual, expected):
        assert group.batch_size == expected_group.batch_size
        assert torch.equal(group.images, expected_group.images) and torch.equal(group.labels, expected_group.labels)


# -- BatchLoader -------------------------------------------------------------------------------


def test_groups_hold_the_same_batches_in_the_same_order_as_single_batches():
    single, grouped = _loader(1), _loader(K)
    epochs = []
    for _ in range(2):
        batches, groups = list(single), list(grouped)
        assert [len(group.labels) for group in groups] == [30, 30, 30, 20]
        assert all(group.batch_size == BATCH for group in groups)
        _assert_same_batches(_flatten(groups), batches)
        assert len(batches) == 11
        epochs.append(torch.cat([labels for _, labels in batches]))
    assert not torch.equal(epochs[0], epochs[1]), "each epoch is a new permutation"


@pytest.mark.parametrize(
    "count, steps, world_size, expected",
    [(110, 1, 1, 11), (110, 3, 1, 4), (110, 11, 1, 1), (110, 12, 1, 1), (105, 5, 1, 3), (110, 2, 2, 3)],
)
def test_length_counts_groups(count, steps, world_size, expected):
    loader = _loader(steps, count=count, world_size=world_size)
    assert len(loader) == expected
    assert len(list(loader)) == expected


def test_resume_mid_epoch_continues_with_the_same_groups():
    reference = _loader(K)
    uninterrupted = [list(reference) for _ in range(2)]

    interrupted = _loader(K)
    iterator = iter(interrupted)
    head = [next(iterator) for _ in range(2)]
    state = interrupted.state_dict()
    assert state["epoch"] == 0 and state["batches_served"] == 2 * K and state["steps_per_execution"] == K

    resumed = _loader(K)
    resumed.load_state_dict(state)
    _assert_same_groups(head + list(resumed), uninterrupted[0])
    _assert_same_groups(list(resumed), uninterrupted[1])


@pytest.mark.parametrize("other", [1, 2, 4])
def test_resume_mid_epoch_with_another_group_size_is_refused(other):
    loader = _loader(K)
    next(iter(loader))
    state = loader.state_dict()
    assert state["batches_served"] == K
    with pytest.raises(DataError, match="steps_per_execution"):
        _loader(other).load_state_dict(state)


def test_state_at_the_end_of_an_epoch_loads_with_another_group_size():
    loader = _loader(K)
    list(loader)
    state = loader.state_dict()
    assert state["epoch"] == 1 and state["batches_served"] == 0
    reference = _loader(1)
    list(reference)
    resumed = _loader(1)
    resumed.load_state_dict(state)
    _assert_same_batches(list(resumed), list(reference))


# -- training: K=3 against K=1 --------------------------------------------------------------


def _trainer(**kwargs) -> pl.Trainer:
    defaults = {
        "accelerator": "cpu", "devices": 1, "max_epochs": 3, "logger": False, "enable_checkpointing": False,
        "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
    }
    return pl.Trainer(**{**defaults, **kwargs})


def _fit(
    steps: int,
    *,
    optimizer: dict | None = None,
    lr_scheduler: dict | None = None,
    interval: str = "epoch",
    frequency: int = 1,
    dropout: float = 0.0,
    validate: bool = False,
    loader_steps: int | None = None,
    **trainer_kwargs,
) -> tuple[MNISTClassifier, pl.Trainer]:
    pl.seed_everything(7, verbose=False)
    model = MNISTClassifier(
        net=MLP([16], dropout=dropout),
        optimizer=optimizer or {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1, "momentum": 0.9}},
        lr_scheduler=lr_scheduler,
        lr_scheduler_interval=interval,
        lr_scheduler_frequency=frequency,
        steps_per_execution=steps,
    )
    trainer = _trainer(**trainer_kwargs)
    train = _loader(steps if loader_steps is None else loader_steps)
    trainer.fit(model, train_dataloaders=train, val_dataloaders=_val_loader() if validate else None)
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
        else:
            assert actual[name] == tensor, name


def _assert_same_training(grouped: tuple, single: tuple) -> None:
    (grouped_model, grouped_trainer), (single_model, single_trainer) = grouped, single
    assert grouped_trainer.global_step == single_trainer.global_step
    _assert_same_tensors(grouped_model.state_dict(), single_model.state_dict())
    _assert_same_tensors(grouped_trainer.optimizers[0].state_dict()["state"], single_trainer.optimizers[0].state_dict()["state"])
    assert _lr(grouped_trainer) == _lr(single_trainer)
    # The epoch's metrics (logged at an epoch end only), summed in the same order.
    single_metrics, grouped_metrics = single_trainer.callback_metrics, grouped_trainer.callback_metrics
    for name in ("train_loss", "train_acc"):
        assert (name in grouped_metrics) == (name in single_metrics), name
        if name in single_metrics:
            assert torch.equal(grouped_metrics[name], single_metrics[name]), name


def _initial_weights() -> dict[str, torch.Tensor]:
    pl.seed_everything(7, verbose=False)
    return MNISTClassifier(net=MLP([16])).state_dict()


EXPONENTIAL = {"class_path": "torch.optim.lr_scheduler.ExponentialLR", "init_args": {"gamma": 0.5}}
# Only the first epoch improves on `inf - 10`: the lr halves after epochs 1 and 2.
PLATEAU = {
    "class_path": "torch.optim.lr_scheduler.ReduceLROnPlateau",
    "init_args": {"mode": "min", "factor": 0.5, "patience": 0, "threshold": 10.0, "threshold_mode": "abs"},
}


def test_exponential_lr_per_epoch_trains_bitwise_alike():
    adam = {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}}
    single = _fit(1, optimizer=adam, lr_scheduler=EXPONENTIAL)
    grouped = _fit(K, optimizer=adam, lr_scheduler=EXPONENTIAL)
    assert single[1].global_step == 33 and _lr(single[1]) == pytest.approx(0.01 * 0.5**3)
    assert not torch.equal(single[0].state_dict()["net.layers.1.weight"], _initial_weights()["net.layers.1.weight"])
    _assert_same_training(grouped, single)


@pytest.mark.parametrize("frequency", [2, 4])
def test_step_lr_per_optimizer_step_with_frequency_trains_bitwise_alike(frequency):
    step_lr = {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 1, "gamma": 0.7}}
    single = _fit(1, lr_scheduler=step_lr, interval="step", frequency=frequency)
    grouped = _fit(K, lr_scheduler=step_lr, interval="step", frequency=frequency)
    # Lightning counts the frequency in batches of the epoch, from 1 at each epoch's start:
    # 11 // frequency scheduler steps in each epoch of 11 batches.
    assert _lr(single[1]) == pytest.approx(0.1 * 0.7 ** (3 * (11 // frequency)))
    _assert_same_training(grouped, single)


def test_reduce_lr_on_plateau_monitoring_val_loss_trains_bitwise_alike():
    single = _fit(1, lr_scheduler=PLATEAU, validate=True, dropout=0.2)
    grouped = _fit(K, lr_scheduler=PLATEAU, validate=True, dropout=0.2)
    assert _lr(single[1]) == pytest.approx(0.1 * 0.25), "the plateau halves the lr after epochs 1 and 2"
    assert "val_loss" in grouped[1].callback_metrics
    _assert_same_training(grouped, single)


def test_plateau_stepped_per_optimizer_step_is_refused():
    with pytest.raises(MisconfigurationException, match="ReduceLROnPlateau.*every epoch"):
        _fit(K, lr_scheduler=PLATEAU, interval="step", validate=True)


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


def test_ungrouped_batches_to_a_grouped_model_train_as_single_batches():
    step_lr = {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 1, "gamma": 0.5}}
    single = _fit(1, lr_scheduler=step_lr, interval="step", frequency=K, max_epochs=2)
    grouped = _fit(K, lr_scheduler=step_lr, interval="step", frequency=K, max_epochs=2, loader_steps=1)
    assert _lr(single[1]) == pytest.approx(0.1 * 0.5 ** (2 * (11 // K)))
    _assert_same_training(grouped, single)


# -- hooks, clipping, misuse --------------------------------------------------------------------


class CountHooks(Callback):
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.steps_seen: list[int] = []
        self.batch_end_indices: list[int] = []

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
    assert grouped_hooks.batch_end_indices == [0, 1, 2, 3] * 2


@pytest.mark.parametrize(
    "clipping", [{"mode": "norm", "max_norm": 0.05}, {"mode": "autoclip", "autoclip_percentile": 10.0}], ids=["norm", "autoclip"]
)
def test_gradient_clipping_callback_clips_every_step_alike(clipping):
    single_clipping, grouped_clipping = GradientClipping(**clipping), GradientClipping(**clipping)
    single = _fit(1, max_epochs=2, callbacks=[single_clipping])
    grouped = _fit(K, max_epochs=2, callbacks=[grouped_clipping])
    assert grouped_clipping.steps == single_clipping.steps == 22
    assert grouped_clipping.clipped_steps == single_clipping.clipped_steps > 0
    _assert_same_training(grouped, single)


def test_single_batch_model_refuses_groups_naming_steps_per_execution():
    with pytest.raises(MisconfigurationException, match="steps_per_execution") as error:
        _fit(1, loader_steps=K, max_epochs=1)
    assert "--model.steps_per_execution" in str(error.value)


def test_trainer_clipping_passes_without_groups_and_no_accumulation_passes_with_them():
    assert _check_steps_per_execution({"model": {"steps_per_execution": 1}, "trainer": {"gradient_clip_val": 1.0}}) is None
    assert _check_steps_per_execution({"model": {"steps_per_execution": 4}, "trainer": {"accumulate_grad_batches": 1}}) is None


# -- the command line ---------------------------------------------------------------------------


def _error_paragraph(result) -> str:
    assert result.returncode != 0
    output = result.stderr + result.stdout
    assert "Traceback" not in output
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("lit_nnopt: error:")]
    return line


@pytest.mark.parametrize(
    "args, option",
    [
        (["--model.steps_per_execution", "4", "--trainer.gradient_clip_val", "1.0"], "--trainer.gradient_clip_val"),
        (["--model.steps_per_execution", "4", "--trainer.accumulate_grad_batches", "2"], "--trainer.accumulate_grad_batches"),
    ],
    ids=["clip", "accumulate"],
)
def test_cli_refuses_trainer_options_that_a_group_cannot_honour(args, option, tmp_path):
    result = run_cli("fit", "--config", str(CONFIGS / "adam.yaml"), "--trainer.default_root_dir", str(tmp_path), *args)
    message = _error_paragraph(result)
    assert option in message and "steps_per_execution" in message


def _cli_fits(mnist_dir: Path, root: Path, *extra: str) -> tuple[dict, dict]:
    """The last.ckpt of the same command with --model.steps_per_execution 4 and 1, run side by side."""

    def fit(steps: int) -> dict:
        result = run_cli(
            "fit", "--config", str(CONFIGS / "adam.yaml"), "--data.data_dir", str(mnist_dir),
            "--trainer.default_root_dir", str(root / f"k{steps}"), "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "2",
            "--model.steps_per_execution", str(steps), *extra,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        (last,) = (root / f"k{steps}").rglob("last.ckpt")
        return torch.load(last, weights_only=True)

    with ThreadPoolExecutor(2) as pool:
        grouped, single = pool.map(fit, [4, 1])
    assert grouped["hyper_parameters"]["steps_per_execution"] == 4
    assert single["hyper_parameters"]["steps_per_execution"] == 1
    return grouped, single


def test_cli_fit_with_groups_saves_the_weights_of_single_batches(mnist_dir, tmp_path):
    # One epoch of 750 batches: groups of 4 leave a last group of 2.
    grouped, single = _cli_fits(mnist_dir, tmp_path, "--trainer.max_epochs", "1")
    assert grouped["global_step"] == single["global_step"] == 750
    _assert_same_tensors(grouped["state_dict"], single["state_dict"])
    _assert_same_tensors(grouped["optimizer_states"][0]["state"], single["optimizer_states"][0]["state"])
    assert grouped["lr_schedulers"] == single["lr_schedulers"]


def test_cli_limit_train_batches_counts_batches_not_groups(mnist_dir, tmp_path):
    """`--trainer.limit_train_batches 10` trains on 10 batches whatever the group size, as Keras' steps_per_epoch."""
    grouped, single = _cli_fits(
        mnist_dir, tmp_path, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "10"
    )
    assert grouped["global_step"] == single["global_step"] == 20
    _assert_same_tensors(grouped["state_dict"], single["state_dict"])


# -- DDP: two CPU processes (gloo) --------------------------------------------------------------


class DumpWeights(Callback):
    """Writes, per rank, the weights and the global step at the end of fit."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        weights = {name: tensor.clone() for name, tensor in pl_module.state_dict().items()}
        torch.save({"global_step": trainer.global_step, "weights": weights}, self.out_dir / f"rank{trainer.global_rank}.pt")


def _ddp_fit(mnist_dir: Path, root: Path, steps: int) -> list[dict]:
    result = run_cli(
        "fit", "--config", str(CONFIGS / "adam.yaml"), "--data.data_dir", str(mnist_dir),
        "--trainer.default_root_dir", str(root / "runs"), "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "1",
        "--trainer.callbacks+=tests.test_steps_per_execution.DumpWeights", "--trainer.callbacks.out_dir", str(root / "ranks"),
        "--model.steps_per_execution", str(steps),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return [torch.load(root / "ranks" / f"rank{rank}.pt", weights_only=True) for rank in range(2)]


def test_ddp_groups_train_like_single_batches_on_every_rank(mnist_dir, tmp_path):
    grouped = _ddp_fit(mnist_dir, tmp_path / "k4", 4)
    single = _ddp_fit(mnist_dir, tmp_path / "k1", 1)
    for ranks in (grouped, single):
        assert [rank["global_step"] for rank in ranks] == [375, 375]  # 24,000 samples a rank, groups 4 * 93 + 3
        _assert_same_tensors(ranks[1]["weights"], ranks[0]["weights"])
    _assert_same_tensors(grouped[0]["weights"], single[0]["weights"])


# -- the progress bar -------------------------------------------------------------------------


class RecordBar(Callback):
    """Records the train bar's (completed, total) after each training step; placed after the bar."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = next(callback for callback in trainer.callbacks if isinstance(callback, CheapRichProgressBar))
        task = bar.progress.tasks[bar.train_progress_bar_id]
        self.seen.append((task.completed, task.total))


@pytest.mark.parametrize(("steps", "expected"), [(1, list(range(1, 12))), (K, [3, 6, 9, 11])])
def test_progress_bar_counts_batches_not_groups(steps, expected):
    record = RecordBar()
    model = MNISTClassifier(net=MLP([16]), steps_per_execution=steps)
    trainer = _trainer(max_epochs=1, enable_progress_bar=True, callbacks=[CheapRichProgressBar(), record])
    trainer.fit(model, train_dataloaders=_loader(steps))
    assert record.seen == [(done, SAMPLES // BATCH) for done in expected]


# -- NaNGuard acts once per group ----------------------------------------------------------------


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


def test_nan_guard_skips_the_rest_of_the_group_then_rolls_back(caplog, monkeypatch):
    """Batch 5 (the second of group 2) is NaN: batch 6 is skipped too, and group 2 is undone."""
    pl.seed_everything(7, verbose=False)
    guard, starts = NaNGuard(action="rollback", snapshot_every_n_steps=1), WeightsAtGroupStart()
    model = MNISTClassifier(net=NaNAtCall(5), steps_per_execution=K)
    trainer = _trainer(max_epochs=1, callbacks=[guard, starts])
    monkeypatch.setattr(logging.getLogger("lit_nnopt.callbacks"), "propagate", True)  # NaNGuard logs (issue 15)
    trainer.fit(model, train_dataloaders=_loader(K))
    assert re.search("non-finite loss at step 4 .*rolled back to the weights and optimizer state before step 3",
                     caplog.text)
    assert (guard.skipped_steps, guard.rollbacks) == (1, 1)
    _assert_same_tensors(starts.weights[2], starts.weights[1])  # group 2 left no trace
    assert not torch.equal(starts.weights[3]["net.mlp.layers.1.weight"], starts.weights[2]["net.mlp.layers.1.weight"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
