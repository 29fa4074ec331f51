"""The monitoring family: EarlyStopping and ReduceLROnPlateau read, compare and default alike (issue 15)."""

from __future__ import annotations

import inspect

import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lit_nnopt.callbacks import EarlyStopping, ReduceLROnPlateau
from lit_nnopt.callbacks.monitor import MonitorMixin, resolve_mode, same_on_all_ranks
from tests.helpers.callbacks import ScriptedTrainer


def improvements(callback, values: list[torch.Tensor], monitor: str) -> list[bool]:
    """Feed ``values`` one check each; whether each check set a new best score."""
    trainer = ScriptedTrainer(optimizers=[torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)])
    improved = []
    for epoch, value in enumerate(values):
        trainer.current_epoch, trainer.callback_metrics = epoch, {monitor: value}
        best_before = callback.best_score
        callback.on_validation_end(trainer, None)
        improved.append(callback.best_score is not best_before)
    return improved


def test_a_float64_metric_is_compared_in_float64_as_lightning_does():
    values = [torch.tensor(v, dtype=torch.float64) for v in (1.0, 1 - 1e-9, 1 - 2e-9)]
    ours = EarlyStopping("val_loss", patience=1, check_on_train_epoch_end=False)
    theirs = LightningEarlyStopping("val_loss", patience=1, check_on_train_epoch_end=False)
    trainers = ScriptedTrainer(), ScriptedTrainer()
    for epoch, value in enumerate(values):
        for callback, trainer in zip((ours, theirs), trainers, strict=True):
            trainer.current_epoch, trainer.callback_metrics = epoch, {"val_loss": value}
            callback.on_validation_end(trainer, None)
    assert not trainers[0].should_stop and not trainers[1].should_stop
    assert ours.best_score.dtype == torch.float64 and ours.best_score.item() == 1 - 2e-9


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_early_stopping_and_plateau_agree_on_every_tie_at_min_delta(dtype):
    # Accuracies k/100, each 0.01 above the last: exactly at min_delta, decided by rounding alone.
    values = [torch.tensor(k / 100, dtype=dtype) for k in range(1, 100)]
    early = EarlyStopping("val_acc", min_delta=0.01, patience=1000, check_on_train_epoch_end=False)
    plateau = ReduceLROnPlateau("val_acc", min_delta=0.01, patience=1000)
    pairs_early, pairs_plateau = [], []
    for previous, current in zip(values, values[1:], strict=False):
        for callback, pairs in ((early, pairs_early), (plateau, pairs_plateau)):
            callback.best_score = previous
            pairs.append(improvements(callback, [current], "val_acc")[0])
    assert len(pairs_early) == 98 and pairs_early == pairs_plateau


def test_the_family_shares_its_defaults():
    def defaults(cls) -> dict:
        parameters = inspect.signature(cls).parameters
        return {name: parameters[name].default for name in ("monitor", "mode", "min_delta", "verbose", "strict")}

    assert (
        defaults(EarlyStopping)
        == defaults(ReduceLROnPlateau)
        == {
            "monitor": "val_loss",
            "mode": "auto",
            "min_delta": 0.0,
            "verbose": False,
            "strict": True,
        }
    )
    assert isinstance(EarlyStopping(), MonitorMixin) and isinstance(ReduceLROnPlateau(), MonitorMixin)


@pytest.mark.parametrize("cls", [EarlyStopping, ReduceLROnPlateau])
def test_mode_auto_reads_the_metric_name_in_both(cls):
    assert cls("val_loss").mode == "min" and cls("val_acc").mode == "max" and cls("train/top1").mode == "max"
    assert cls("val_score", mode="max").mode == "max"
    # Signed as in Lightning and Keras: negative in min mode.
    assert cls("val_loss", min_delta=0.1).min_delta == -0.1 and cls("val_acc", min_delta=0.1).min_delta == 0.1


@pytest.mark.parametrize("cls", [EarlyStopping, ReduceLROnPlateau])
@pytest.mark.parametrize(("monitor", "words"), [("val_score", "none"), ("val_top3", "none"), ("loss_acc", "both")])
def test_mode_auto_refuses_a_name_without_one_direction(cls, monitor, words):
    # Issue 26, goal 4: as Keras, refuse rather than guess "min" (which minimised a `val_top3`).
    with pytest.raises(MisconfigurationException) as refused:
        cls(monitor)
    message = str(refused.value)
    assert f"{cls.__name__}(mode='auto') cannot tell from its name whether `{monitor}`" in message
    assert f"it contains {words} of the known words" in message
    assert f"Pass mode='min' if a lower `{monitor}` is better, or mode='max' if a higher one is." in message


def test_mode_keeps_lightnings_state_key():
    assert EarlyStopping("val_loss").state_key == "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}"
    assert resolve_mode("val_acc", "min", "X") == "min"


class _Gathers:
    """A stand-in for a two-rank trainer whose ranks hold ``values``."""

    def __init__(self, values: list[float], dtype=torch.float32) -> None:
        self.world_size = 2
        self.values = torch.tensor(values, dtype=dtype)
        self.strategy = self
        self.root_device = torch.device("cpu")

    def all_gather(self, tensor):
        assert tensor.dtype == self.values.dtype
        return self.values


def test_ranks_that_agree_keep_their_value_and_others_take_the_mean():
    third = 0.1
    # A mean of three equal float64 values would not give them back; equal values are kept as they are.
    kept = same_on_all_ranks(_Gathers([third, third], torch.float64), torch.tensor(third, dtype=torch.float64))
    assert kept.item() == third and kept.dtype == torch.float64
    assert same_on_all_ranks(_Gathers([0.25, 0.75]), torch.tensor(0.25)).item() == 0.5
    assert same_on_all_ranks(None, torch.tensor([[3]])).dtype == torch.get_default_dtype()
