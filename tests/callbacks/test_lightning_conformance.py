"""Lightning's own EarlyStopping behaviour, checked against ours (issue 15, finding 4).

The cases are those of Lightning's ``tests_pytorch/callbacks/test_early_stopping.py`` that test
behaviour (which epoch stops, which reason, which hook decides, what a subclass may override),
rewritten on small Trainers; they leave out what tests message text. Each runs against
Lightning's class too, so a case that fails only for ours is a difference.
"""

from __future__ import annotations

import pickle
from unittest import mock

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.demos.boring_classes import BoringModel

from lit_nnopt.callbacks import EarlyStopping
from lit_nnopt.callbacks.early_stopping import EarlyStoppingReason

BOTH = pytest.mark.parametrize("cls", [LightningEarlyStopping, EarlyStopping], ids=["lightning", "lit_nnopt"])
# Lightning's EarlyStopping says why it stopped (`stopping_reason`, `stopping_reason_message`) from 2.6 on.
LIGHTNING_SAYS_WHY = hasattr(LightningEarlyStopping("val_loss"), "stopping_reason")


def says_why(cls) -> bool:
    return cls is EarlyStopping or LIGHTNING_SAYS_WHY


def small_trainer(tmp_path, callbacks, **kwargs) -> Trainer:
    defaults = {
        "default_root_dir": tmp_path, "limit_train_batches": 2, "limit_val_batches": 1, "num_sanity_val_steps": 0,
        "logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
    }  # fmt: skip
    return Trainer(callbacks=callbacks, **{**defaults, **kwargs})


class LogsPerEpoch(BoringModel):
    """Logs ``values[epoch]`` as ``name`` at the end of validation (or of the training epoch)."""

    def __init__(self, values, name="val_loss", on_train=False) -> None:
        super().__init__()
        self.values, self.name, self.on_train = list(values), name, on_train

    def on_validation_epoch_end(self) -> None:
        if not self.on_train:
            self.log(self.name, torch.tensor(self.values[self.current_epoch], dtype=torch.float32))

    def on_train_epoch_end(self) -> None:
        if self.on_train:
            self.log(self.name, torch.tensor(self.values[self.current_epoch], dtype=torch.float32))


PATIENCE_CASES = [([6, 5, 5, 5, 5, 5], 3, 4), ([6, 5, 4, 4, 3, 3], 1, 3), ([6, 5, 6, 5, 5, 5], 3, 4)]


@BOTH
@pytest.mark.parametrize(("values", "patience", "stop_epoch"), PATIENCE_CASES)
def test_patience_after_validation(tmp_path, cls, values, patience, stop_epoch):
    trainer = small_trainer(tmp_path, [cls(monitor="val_loss", patience=patience)], max_epochs=10)
    trainer.fit(LogsPerEpoch(values + [0.0] * 4))
    assert trainer.current_epoch - 1 == stop_epoch


@BOTH
@pytest.mark.parametrize(("values", "patience", "stop_epoch"), PATIENCE_CASES)
def test_patience_at_the_training_epochs_end(tmp_path, cls, values, patience, stop_epoch):
    callback = cls(monitor="train_loss", patience=patience, check_on_train_epoch_end=True)
    trainer = small_trainer(tmp_path, [callback], max_epochs=10, limit_val_batches=0)
    trainer.fit(LogsPerEpoch(values + [0.0] * 4, name="train_loss", on_train=True))
    assert trainer.current_epoch - 1 == stop_epoch


@BOTH
@pytest.mark.parametrize(
    ("stopping_threshold", "divergence_threshold", "values", "stop_epoch"),
    [(None, None, [8, 4, 2, 3, 4, 5, 8, 10], 5), (2.9, None, [9, 8, 7, 6, 5, 6, 4, 3, 2, 1], 8),
     (None, 15.9, [9, 4, 2, 16, 32, 64], 3)],
)  # fmt: skip
def test_thresholds(tmp_path, cls, stopping_threshold, divergence_threshold, values, stop_epoch):
    callback = cls(
        monitor="abc", stopping_threshold=stopping_threshold, divergence_threshold=divergence_threshold, mode="min"
    )
    trainer = small_trainer(tmp_path, [callback], max_epochs=20)
    trainer.fit(LogsPerEpoch(values + [0.0] * 20, name="abc"))
    assert trainer.current_epoch - 1 == stop_epoch


@BOTH
@pytest.mark.parametrize("bad", [torch.inf, torch.nan])
def test_a_non_finite_metric_stops(tmp_path, cls, bad):
    callback = cls(monitor="val_loss", check_finite=True)
    trainer = small_trainer(tmp_path, [callback], max_epochs=10)
    trainer.fit(LogsPerEpoch([4, 3, bad, 2, 1]))
    assert trainer.current_epoch - 1 == 2 == callback.stopped_epoch
    if says_why(cls):
        assert callback.stopping_reason is EarlyStoppingReason.NON_FINITE_METRIC


@BOTH
@pytest.mark.parametrize(
    ("limit_train_batches", "min_epochs", "min_steps", "stop_step"), [(3, 0, 10, 10), (3, 2, 0, 6)]
)
def test_min_epochs_and_min_steps_delay_the_stop(tmp_path, cls, limit_train_batches, min_epochs, min_steps, stop_step):
    class LogsFoo(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("foo", batch_idx)
            return super().training_step(batch, batch_idx)

    callback = cls("foo", mode="min")
    trainer = small_trainer(
        tmp_path,
        [callback],
        limit_val_batches=0,
        limit_train_batches=limit_train_batches,
        min_epochs=min_epochs,
        min_steps=min_steps,
    )
    with mock.patch.object(callback, "_evaluate_stopping_criteria", side_effect=[(True, "")] * 10):
        trainer.fit(LogsFoo())
    assert trainer.should_stop and trainer.global_step == stop_step


@BOTH
@pytest.mark.parametrize("case", [{"val_check_interval": 0.5, "limit_train_batches": 4, "max_epochs": 10},
                                  {"check_val_every_n_epoch": 2, "max_epochs": 5}])  # fmt: skip
def test_checks_after_validation_when_it_is_not_once_per_epoch(tmp_path, cls, case):
    class LogsFoo(BoringModel):
        def validation_step(self, batch, batch_idx):
            self.log("foo", 1)
            return super().validation_step(batch, batch_idx)

    callback = cls(monitor="foo", mode="min")
    trainer = small_trainer(tmp_path, [callback], **case)
    with mock.patch.object(callback, "_evaluate_stopping_criteria", side_effect=[(False, "A"), (True, "B")]) as check:
        trainer.fit(LogsFoo())
    assert check.call_count == 2
    if "val_check_interval" in case:
        assert trainer.global_step == 2 * 2
    else:
        assert trainer.current_epoch == 2 * 2


@BOTH
def test_the_value_is_squeezed(cls):
    callback, trainer = cls(monitor="foo", mode="min"), Trainer(logger=False)
    trainer.callback_metrics["foo"] = torch.tensor([[[0.0]]])
    with mock.patch.object(callback, "_evaluate_stopping_criteria", return_value=(False, "")) as check:
        callback._run_early_stopping_check(trainer)
    check.assert_called_once_with(torch.tensor(0.0))


@BOTH
@pytest.mark.parametrize("first_stops", [True, False])
def test_with_two_instances_the_first_to_stop_stops(tmp_path, cls, first_stops):
    quick, slow = cls("abc", mode="min"), cls("cba", mode="min", patience=3)

    class LogsBoth(BoringModel):
        def on_validation_epoch_end(self):
            self.log("abc", torch.tensor([8, 4, 2, 3, 4, 5, 8, 10][self.current_epoch], dtype=torch.float32))
            self.log("cba", torch.tensor(0.0))

    trainer = small_trainer(tmp_path, [quick, slow] if first_stops else [slow, quick], max_epochs=20)
    trainer.fit(LogsBoth())
    assert trainer.current_epoch - 1 == 3


@BOTH
def test_state_round_trip_and_old_state(cls):
    if not says_why(cls):
        pytest.skip("this Lightning's EarlyStopping has no stopping_reason (Lightning 2.6 added it)")
    callback = cls(monitor="val_loss", patience=3)
    callback.stopping_reason, callback.stopping_reason_message = EarlyStoppingReason.PATIENCE_EXHAUSTED, "m"
    restored = cls(monitor="val_loss", patience=3)
    restored.load_state_dict(callback.state_dict())
    assert (restored.stopping_reason, restored.stopping_reason_message) == (EarlyStoppingReason.PATIENCE_EXHAUSTED, "m")
    old = {"wait_count": 2, "stopped_epoch": 5, "best_score": torch.tensor(0.5), "patience": 3}
    restored.load_state_dict(old)
    assert restored.stopping_reason is EarlyStoppingReason.NOT_STOPPED and restored.stopping_reason_message is None
    assert (restored.wait_count, restored.stopped_epoch) == (2, 5)


@BOTH
def test_pickles(cls):
    callback = cls(monitor="val_loss")
    assert vars(pickle.loads(pickle.dumps(callback))).keys() == vars(callback).keys()


@BOTH
def test_a_subclass_that_overrides_the_criteria_decides(tmp_path, cls):
    class StopAtEpoch2(cls):
        def _evaluate_stopping_criteria(self, current):
            return self._epoch == 2, "told to"

        def on_validation_end(self, trainer, pl_module):
            self._epoch = trainer.current_epoch
            super().on_validation_end(trainer, pl_module)

    callback = StopAtEpoch2(monitor="val_loss", check_on_train_epoch_end=False)
    trainer = small_trainer(tmp_path, [callback], max_epochs=10)
    trainer.fit(LogsPerEpoch([1.0] * 10))
    assert callback.stopped_epoch == 2
    if says_why(cls):
        assert callback.stopping_reason_message == "told to"


def test_ours_has_lightnings_attributes_and_no_second_message():
    ours, theirs = EarlyStopping("val_loss"), LightningEarlyStopping("val_loss")
    assert set(vars(theirs)) <= set(vars(ours))
    assert not hasattr(ours, "stop_reason_message")
