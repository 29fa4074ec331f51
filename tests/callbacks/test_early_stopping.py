"""EarlyStopping driven with scripted metric sequences; every expectation is counted by hand."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lit_nnopt.callbacks import EarlyStopping
from lit_nnopt.callbacks.early_stopping import EarlyStoppingReason
from tests.helpers.callbacks import ScriptedTrainer, capture_logs, quiet_trainer, run_checks


def stopper(**kwargs) -> EarlyStopping:
    return EarlyStopping(**{"monitor": "val_loss", "check_on_train_epoch_end": False, **kwargs})


def test_is_a_separate_class_with_lightnings_arguments():
    # Not a subclass of Lightning's (issue 25): it stands on public hooks, so Lightning's private
    # helpers may change without changing it.
    callback = stopper(patience=5, min_delta=0.1, mode="max", strict=False, stopping_threshold=0.9)
    assert not isinstance(callback, LightningEarlyStopping)
    assert (callback.patience, callback.min_delta, callback.mode, callback.strict) == (5, 0.1, "max", False)
    assert [reason.value for reason in EarlyStoppingReason] == [0, 1, 2, 3, 4]


def test_patience_counts_checks_without_improvement():
    callback, trainer = stopper(patience=3), ScriptedTrainer()
    # best 0.9 at epoch 1; epochs 2, 3, 4 do not beat it: the third of them stops.
    checks = run_checks(callback, trainer, [1.0, 0.9, 0.95, 0.91, 0.92, 0.5])
    assert checks == 5 and trainer.should_stop
    assert (callback.stopped_epoch, callback.best_epoch, callback.wait_count) == (4, 1, 3)
    assert callback.best_score.item() == pytest.approx(0.9)
    assert callback.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED


def test_min_delta_is_absolute_in_both_modes():
    callback = stopper(min_delta=0.05, patience=10)
    # 0.96 is not below 1.0 - 0.05; 0.94 is; 0.90 and 0.89 are not below 0.94 - 0.05.
    run_checks(callback, ScriptedTrainer(), [1.0, 0.96, 0.94, 0.90, 0.89])
    assert (callback.best_epoch, callback.wait_count) == (2, 2)
    callback = stopper(min_delta=0.05, patience=10, mode="max")
    # 0.54 is not above 0.5 + 0.05; 0.56 is.
    run_checks(callback, ScriptedTrainer(), [0.5, 0.54, 0.56])
    assert (callback.best_epoch, callback.wait_count) == (2, 0)


def test_start_from_epoch_ignores_the_first_epochs():
    callback, trainer = stopper(patience=2, start_from_epoch=2), ScriptedTrainer()
    # Epochs 0 and 1 are not monitored: 1.0 at epoch 2 is the first best; 3 and 4 do not beat it.
    run_checks(callback, trainer, [0.1, 0.2, 1.0, 1.1, 1.2, 0.0])
    assert (callback.stopped_epoch, callback.best_epoch, callback.best_score.item()) == (4, 2, 1.0)
    unmonitored, trainer = stopper(patience=2), ScriptedTrainer()
    run_checks(unmonitored, trainer, [0.1, 0.2, 1.0, 1.1, 1.2, 0.0])
    assert (unmonitored.stopped_epoch, unmonitored.best_epoch) == (2, 0)


def test_baseline_not_beaten_within_patience_stops_even_while_improving(monkeypatch, caplog):
    logs = capture_logs(monkeypatch, caplog)
    callback, trainer = stopper(patience=3, baseline=0.5, verbose=True), ScriptedTrainer()
    run_checks(callback, trainer, [0.9, 0.8, 0.7, 0.6])
    assert (callback.stopped_epoch, callback.best_epoch) == (2, 2)
    assert callback.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED
    callback.on_fit_end(trainer, None)
    assert callback.stopping_reason_message.startswith("Monitored metric val_loss did not beat the baseline 0.5")
    assert "EarlyStopping: stopped at epoch 2; best val_loss 0.7 at epoch 2." in logs.text


def test_beating_the_baseline_resets_the_count():
    callback, trainer = stopper(patience=3, baseline=0.5), ScriptedTrainer()
    # 0.45 beats the baseline at epoch 1 (count 0); epochs 2, 3, 4 do not improve.
    run_checks(callback, trainer, [0.9, 0.45, 0.5, 0.5, 0.5, 0.1])
    assert (callback.stopped_epoch, callback.best_epoch) == (4, 1)
    assert "did not improve in the last 3 records" in callback.stopping_reason_message


def weight_script(module: nn.Linear):
    """Before the check of epoch e the weight is e + 1, so a restored weight names its epoch."""

    def set_weight(epoch: int) -> None:
        with torch.no_grad():
            module.weight.fill_(epoch + 1.0)

    return set_weight


def test_restores_best_weights_when_fit_ends_without_stopping():
    module = nn.Linear(1, 1, bias=False)
    callback, trainer = stopper(patience=10, restore_best_weights=True), ScriptedTrainer(module)
    run_checks(callback, trainer, [3.0, 1.0, 2.0], before_check=weight_script(module))
    assert not trainer.should_stop and module.weight.item() == 3.0
    callback.on_fit_end(trainer, module)
    assert module.weight.item() == 2.0 and callback.best_epoch == 1
    assert callback.stopping_reason_message is None
    assert callback.best_weights["weight"].device.type == "cpu"


def test_restores_best_weights_after_stopping_but_not_on_an_exception():
    module = nn.Linear(1, 1, bias=False)
    callback, trainer = stopper(patience=2, restore_best_weights=True), ScriptedTrainer(module)
    run_checks(callback, trainer, [3.0, 1.0, 2.0, 2.0, 2.0], before_check=weight_script(module))
    assert callback.stopped_epoch == 3
    callback.on_fit_end(trainer, module)
    assert module.weight.item() == 2.0
    # Deliberate change (issue 15): on an interrupt or error the module keeps the weights of that
    # moment, which a checkpoint written on the exception must hold to resume from.
    with torch.no_grad():
        module.weight.fill_(-7.0)
    trainer.interrupted = True
    callback.on_exception(trainer, module, KeyboardInterrupt())
    assert module.weight.item() == -7.0


def test_a_threshold_stop_keeps_that_check_as_the_best():
    module = nn.Linear(1, 1, bias=False)
    callback = stopper(stopping_threshold=0.5, restore_best_weights=True)
    trainer = ScriptedTrainer(module)
    run_checks(callback, trainer, [1.0, 0.4, 0.3], before_check=weight_script(module))
    assert (callback.stopped_epoch, callback.best_epoch) == (1, 1)
    assert callback.stopping_reason is EarlyStoppingReason.STOPPING_THRESHOLD
    callback.on_fit_end(trainer, module)
    assert module.weight.item() == 2.0
    assert callback.stopping_reason_message.startswith("Stopping threshold reached: val_loss = 0.4")


def test_divergence_and_non_finite_stop_at_once():
    callback, trainer = stopper(divergence_threshold=5.0), ScriptedTrainer()
    run_checks(callback, trainer, [1.0, 6.0])
    assert callback.stopping_reason is EarlyStoppingReason.DIVERGENCE_THRESHOLD and callback.stopped_epoch == 1
    callback, trainer = stopper(), ScriptedTrainer()
    run_checks(callback, trainer, [1.0, math.nan])
    assert callback.stopping_reason is EarlyStoppingReason.NON_FINITE_METRIC and callback.best_epoch == 0


def test_state_round_trip_continues_with_the_same_decisions():
    module = nn.Linear(1, 1, bias=False)
    values = [1.0, 0.5, 0.7, 0.6, 0.8, 0.9]
    whole, trainer = stopper(patience=3, restore_best_weights=True), ScriptedTrainer(module)
    run_checks(whole, trainer, values, before_check=weight_script(module))
    first, trainer = stopper(patience=3, restore_best_weights=True), ScriptedTrainer(module)
    run_checks(first, trainer, values[:3], before_check=weight_script(module))
    resumed = stopper(patience=3, restore_best_weights=True)
    resumed.load_state_dict(first.state_dict())
    run_checks(resumed, ScriptedTrainer(module), values[3:], before_check=weight_script(module), first_epoch=3)
    assert (
        (resumed.stopped_epoch, resumed.best_epoch, resumed.wait_count)
        == (4, 1, 3)
        == (
            whole.stopped_epoch,
            whole.best_epoch,
            whole.wait_count,
        )
    )
    assert torch.equal(resumed.best_weights["weight"], whole.best_weights["weight"])


def test_loads_a_checkpoint_of_lightnings_early_stopping():
    old = LightningEarlyStopping("val_loss")
    callback = stopper()
    callback.load_state_dict(old.state_dict())
    assert callback.best_epoch is None and callback.best_weights is None and callback.stopping_reason_message is None


def test_bad_arguments_say_what_is_valid():
    with pytest.raises(ValueError, match="start_from_epoch"):
        stopper(start_from_epoch=-1)
    with pytest.raises(MisconfigurationException, match="`mode` can be auto, min, max, got sideways"):
        stopper(mode="sideways")


class LogsAtTrainEpochEnd(BoringModel):
    """Logs ``values[epoch]`` as ``train_metric`` in its own ``on_train_epoch_end``; fails at ``fail_epoch``."""

    def __init__(self, values, fail_epoch: int = -1) -> None:
        super().__init__()
        self.values, self.fail_epoch = list(values), fail_epoch

    def on_train_epoch_end(self) -> None:
        if self.current_epoch == self.fail_epoch:
            raise RuntimeError("planned")
        self.log("train_metric", torch.tensor(self.values[self.current_epoch]))


def test_checks_at_the_epochs_end_after_the_modules_hook_in_the_callbacks_order(tmp_path, monkeypatch, caplog):
    # Lightning runs only its own EarlyStopping after the module's `on_train_epoch_end`; this class
    # wraps that hook while fit runs, so every instance sees the value the module logs there.
    logs = capture_logs(monkeypatch, caplog)
    first = EarlyStopping("train_metric", mode="min", patience=1, verbose=True)
    second = EarlyStopping("train_metric", mode="max", patience=1, verbose=True)
    module = LogsAtTrainEpochEnd([3.0, 2.0, 1.0, 0.5])
    quiet_trainer(tmp_path, max_epochs=4, limit_val_batches=0, callbacks=[first, second]).fit(module)
    assert (first.best_epoch, second.stopped_epoch, second.best_epoch) == (1, 1, 0)
    improved = [r.getMessage() for r in logs.records if r.getMessage().startswith("Metric train_metric improved")]
    assert improved == [
        "Metric train_metric improved. New best score: 3.000",
        "Metric train_metric improved. New best score: 3.000",
        "Metric train_metric improved by 1.000 >= min_delta = 0.0. New best score: 2.000",
    ]
    assert "on_train_epoch_end" not in vars(module)  # unwrapped when fit ended


def test_the_modules_hook_is_unwrapped_when_fit_fails(tmp_path):
    module, callback = LogsAtTrainEpochEnd([3.0, 2.0], fail_epoch=1), EarlyStopping("train_metric", mode="min")
    with pytest.raises(RuntimeError, match="planned"):
        quiet_trainer(tmp_path, max_epochs=2, limit_val_batches=0, callbacks=[callback]).fit(module)
    assert callback.best_epoch == 0 and "on_train_epoch_end" not in vars(module)
