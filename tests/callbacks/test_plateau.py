"""ReduceLROnPlateau driven with scripted metric sequences; each expected lr is counted by hand (Keras' rules)."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lit_nnopt.callbacks import ReduceLROnPlateau
from tests.helpers.callbacks import ScriptedTrainer, capture_logs


def sgd(*lrs: float) -> torch.optim.SGD:
    """SGD with one parameter group per lr."""
    return torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs])


def lrs_after_each_check(callback, values, optimizer=None, monitor="val_loss", trainer=None):
    """The lr of group 0 after each check (or of all groups, with several)."""
    optimizer = optimizer or sgd(1.0)
    trainer = trainer or ScriptedTrainer(optimizers=[optimizer])
    callback.on_fit_start(trainer, None)
    history = []
    for epoch, value in enumerate(values):
        trainer.current_epoch = epoch
        trainer.callback_metrics = {monitor: torch.tensor(float(value))}
        callback.on_validation_end(trainer, None)
        lrs = [group["lr"] for group in optimizer.param_groups]
        history.append(lrs[0] if len(lrs) == 1 else lrs)
    return history


def plateau(**kwargs) -> ReduceLROnPlateau:
    return ReduceLROnPlateau(**{"factor": 0.5, "min_delta": 0.0, "verbose": False, **kwargs})


def test_reduces_after_patience_checks_without_improvement():
    # best 1.0; epochs 1, 2 no better: reduce at 2. best 0.5 at 3; epochs 4, 5 worse: reduce at 5.
    lrs = lrs_after_each_check(plateau(patience=2), [1.0, 1.0, 1.0, 0.5, 0.6, 0.7])
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.5, 0.25]


def test_min_delta_absolute_as_keras():
    callback = plateau(patience=1, min_delta=0.1)
    # 0.95 is not below 1.0 - 0.1: reduce. 0.85 is below 0.9: best. 0.8 is not below 0.75: reduce.
    assert lrs_after_each_check(callback, [1.0, 0.95, 0.85, 0.8]) == [1.0, 0.5, 0.5, 0.25]
    assert callback.best_score.item() == pytest.approx(0.85)


def test_min_delta_relative():
    callback = plateau(patience=1, min_delta=0.1, min_delta_mode="relative")
    # 9.5 is not below 10 - 10%: reduce. 8.9 is below 9.0: best. 8.5 is not below 8.9 - 0.89: reduce.
    assert lrs_after_each_check(callback, [10.0, 9.5, 8.9, 8.5]) == [1.0, 0.5, 0.5, 0.25]
    absolute = plateau(patience=1, min_delta=0.1)
    assert lrs_after_each_check(absolute, [10.0, 9.5, 8.9, 8.5]) == [1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("cooldown", "reduced_at"),
    [
        (0, [1, 2, 3, 4, 5, 6, 7]),
        # Keras: the counter is decremented before the check, so the last cooldown check counts.
        (1, [1, 2, 3, 4, 5, 6, 7]),
        (2, [1, 3, 5, 7]),
        (3, [1, 4, 7]),
    ],
)
def test_cooldown_as_keras(cooldown, reduced_at):
    callback = plateau(patience=1, cooldown=cooldown, factor=0.5)
    lrs_after_each_check(callback, [1.0] * 8)
    assert [reduction["epoch"] for reduction in callback.reductions] == reduced_at


def test_min_lr_floors_each_group():
    optimizer = sgd(1.0, 0.1)
    callback = plateau(patience=1, min_lr=[0.3, 0.05])
    lrs = lrs_after_each_check(callback, [1.0] * 5, optimizer=optimizer)
    # epoch 1: both halve; epoch 2: group 0 to its floor 0.3 (not 0.25), group 1 already at 0.05.
    assert lrs == [[1.0, 0.1], [0.5, 0.05], [0.3, 0.05], [0.3, 0.05], [0.3, 0.05]]
    assert [(r["epoch"], r["group"], r["old_lr"], r["new_lr"]) for r in callback.reductions] == [
        (1, 0, 1.0, 0.5),
        (1, 1, 0.1, 0.05),
        (2, 0, 0.5, 0.3),
    ]


def test_min_lr_list_must_match_the_groups():
    callback = plateau(min_lr=[0.1, 0.1, 0.1])
    with pytest.raises(MisconfigurationException, match="3 values of `min_lr`, but the optimizers have 2"):
        callback.on_fit_start(ScriptedTrainer(optimizers=[sgd(1.0, 1.0)]), None)


def test_mode_auto_decides_by_the_metric_name():
    # mode="auto" on names is tested for the whole family in test_monitor.py.
    callback = plateau(monitor="val_acc", patience=1)
    assert lrs_after_each_check(callback, [0.5, 0.6, 0.55], monitor="val_acc") == [1.0, 1.0, 0.5]


def test_a_non_finite_value_is_no_improvement():
    assert lrs_after_each_check(plateau(patience=1), [1.0, math.nan, math.inf]) == [1.0, 0.5, 0.25]


def test_a_missing_metric_is_an_error():
    trainer = ScriptedTrainer(optimizers=[sgd(1.0)])
    trainer.callback_metrics = {"val_acc": torch.tensor(0.5)}
    with pytest.raises(RuntimeError, match="monitors `val_loss`, which was not logged. Logged metrics: val_acc"):
        plateau().on_validation_end(trainer, None)


def test_sanity_check_and_validate_do_not_count():
    trainer = ScriptedTrainer(optimizers=[sgd(1.0)])
    trainer.callback_metrics = {"val_loss": torch.tensor(1.0)}
    trainer.sanity_checking = True
    callback = plateau(patience=0)
    callback.on_validation_end(trainer, None)
    assert callback.best_score.item() == float("inf")


def test_logs_each_reduction_from_its_own_logger(monkeypatch, caplog):
    logs = capture_logs(monkeypatch, caplog)
    lrs_after_each_check(plateau(patience=1, verbose=True), [1.0, 2.0])
    (record,) = [record for record in logs.records if record.name == "lit_nnopt.callbacks.plateau"]
    assert record.getMessage() == (
        "Epoch 1: ReduceLROnPlateau reduced the lr of optimizer 0 group 0 from 1 to 0.5:"
        " val_loss did not improve on 1 in 1 checks."
    )


def test_scales_the_schedule_of_an_lr_scheduler():
    optimizer = sgd(1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    trainer = ScriptedTrainer(optimizers=[optimizer], schedulers=[scheduler])
    callback = plateau(patience=1, factor=0.1)
    callback.on_fit_start(trainer, None)
    lrs = []
    for epoch, value in enumerate([1.0, 1.0, 1.0, 1.0]):
        trainer.current_epoch = epoch
        trainer.callback_metrics = {"val_loss": torch.tensor(value)}
        callback.on_validation_end(trainer, None)
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    # Reductions at epochs 1, 2, 3 multiply the LambdaLR schedule 1 / (t + 1) by 0.1 each.
    assert lrs == pytest.approx([1 / 2, 0.1 / 3, 0.01 / 4, 0.001 / 5])
    assert scheduler.base_lrs == pytest.approx([0.001])


def test_refuses_a_scheduler_that_would_undo_the_reduction():
    optimizer = sgd(1.0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1.0, total_steps=10)
    with pytest.raises(MisconfigurationException, match="OneCycleLR, which sets the lr from its own fields"):
        plateau().on_fit_start(ScriptedTrainer(optimizers=[optimizer], schedulers=[scheduler]), None)


def test_state_round_trip_continues_with_the_same_decisions():
    values = [1.0, 0.9, 0.95, 0.97, 0.99, 0.8, 0.85, 0.86, 0.87]
    whole = plateau(patience=2, cooldown=2)
    expected = lrs_after_each_check(whole, values)
    optimizer = sgd(1.0)
    first = plateau(patience=2, cooldown=2)
    trainer = ScriptedTrainer(optimizers=[optimizer])
    lrs_after_each_check(first, values[:4], optimizer=optimizer, trainer=trainer)
    resumed = plateau(patience=2, cooldown=2)
    resumed.load_state_dict(first.state_dict())
    resumed.on_fit_start(trainer, None)
    rest = []
    for epoch, value in enumerate(values[4:], start=4):
        trainer.current_epoch = epoch
        trainer.callback_metrics = {"val_loss": torch.tensor(value)}
        resumed.on_validation_end(trainer, None)
        rest.append(optimizer.param_groups[0]["lr"])
    assert expected[4:] == rest
    assert resumed.reductions == whole.reductions


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"factor": 1.0}, "`factor` must be between 0 and 1"),
        ({"patience": -1}, "`patience` must be >= 0"),
        ({"min_delta_mode": "percent"}, "`min_delta_mode` can be absolute, relative"),
        ({"min_lr": [0.1, -1.0]}, "`min_lr` must be >= 0"),
    ],
)
def test_bad_arguments_say_what_is_valid(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReduceLROnPlateau(**kwargs)
    with pytest.raises(MisconfigurationException, match="`mode` can be auto, min, max, got up"):
        ReduceLROnPlateau(mode="up")


def keras_reduce_lr_on_plateau(values, factor, patience, min_delta, cooldown, min_lr, lr=1.0):
    """A line-by-line transcription of keras.callbacks.ReduceLROnPlateau.on_epoch_end (mode min)."""
    best, wait, cooldown_counter, lrs = math.inf, 0, 0, []
    for current in values:
        if cooldown_counter > 0:
            cooldown_counter -= 1
            wait = 0
        if current - (-min_delta) < best:  # Keras: monitor_op(current - min_delta, best), min_delta negated for min
            best = current
            wait = 0
        elif not cooldown_counter > 0:
            wait += 1
            if wait >= patience and lr > min_lr:
                lr = max(lr * factor, min_lr)
                cooldown_counter = cooldown
                wait = 0
        lrs.append(lr)
    return lrs


@pytest.mark.parametrize("seed", range(20))
def test_matches_a_transcription_of_keras(seed):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randint(0, 6, (30,), generator=generator).div(4).tolist()  # many ties, many plateaus
    patience, cooldown = (int(v) for v in torch.randint(0, 4, (2,), generator=generator))
    kwargs = {"factor": 0.5, "patience": patience, "min_delta": 0.25, "cooldown": cooldown, "min_lr": 0.01}
    expected = keras_reduce_lr_on_plateau(values, **kwargs)
    assert lrs_after_each_check(ReduceLROnPlateau(verbose=False, **kwargs), values) == pytest.approx(expected)


def test_loads_the_state_of_older_checkpoints():
    callback = plateau()
    callback.load_state_dict({"best": 0.5, "wait": 2, "cooldown_counter": 0, "reductions": []})
    assert callback.best_score.item() == 0.5 and callback.wait == 2
    callback.load_state_dict({"best": None, "wait": 0})
    assert callback.best_score.item() == float("inf")
