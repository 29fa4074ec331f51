"""RunSummary's record of a run: whether it learnt, and its time across a resume; driven hook by hook."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch

from lit_nnopt.app import reports
from lit_nnopt.app.reports import (
    AT_CHANCE,
    DIVERGED,
    MIN_STEPS_TO_JUDGE,
    OK,
    RunSummary,
    did_not_learn_message,
    print_summary,
    run_health,
)


def _epoch_end(summary: RunSummary, epoch: int, **metrics: float) -> None:
    trainer = SimpleNamespace(
        sanity_checking=False,
        current_epoch=epoch,
        callback_metrics={name: torch.tensor(value) for name, value in metrics.items()},
    )
    summary.on_train_epoch_end(trainer, None)


def test_a_loss_that_becomes_nan_is_recorded_by_name_and_the_run_is_diverged():
    summary = RunSummary()
    _epoch_end(summary, 0, train_loss=0.9, val_loss=0.8, val_acc=0.7)
    _epoch_end(summary, 1, train_loss=math.nan, val_loss=math.inf, val_acc=0.0983)
    _epoch_end(summary, 2, train_loss=math.nan, val_loss=math.nan, val_acc=0.0983)
    assert "non_finite" not in summary.history[0]
    assert summary.history[1]["non_finite"] == ["train_loss", "val_loss"]
    assert summary.history[1]["train_loss"] is None  # JSON has no NaN
    health = run_health(summary.history)
    assert health == {
        "status": DIVERGED,
        "problem_epoch": 1,
        "problem": "train_loss, val_loss became NaN or infinite in epoch 1",
    }


@pytest.mark.parametrize(
    ("accuracies", "status"),
    [
        ([0.0983, 0.1135, 0.1032], AT_CHANCE),  # a constant prediction: one class's share
        ([0.09, 0.149], AT_CHANCE),
        ([0.09, 0.15], OK),  # the threshold itself is above chance: 1.5 / 10
        ([0.31], OK),
    ],
)
def test_accuracy_that_never_leaves_chance_is_at_chance(accuracies, status):
    history = [{"epoch": epoch, "train_loss": 2.3, "val_acc": acc} for epoch, acc in enumerate(accuracies)]
    health = run_health(history)
    assert health["status"] == status
    if status == AT_CHANCE:
        assert health["problem"].startswith(f"val_acc stayed at chance: at most {max(accuracies):.4f} in ")
        assert "under 0.15 (1.5 / 10 classes)" in health["problem"]


def test_chance_follows_the_number_of_classes_and_a_run_without_val_acc_is_not_judged_on_it():
    history = [{"epoch": 0, "val_acc": 0.4}]
    assert run_health(history, num_classes=10)["status"] == OK
    assert run_health(history, num_classes=2)["status"] == AT_CHANCE  # under 1.5 / 2
    assert run_health([{"epoch": 0, "train_loss": 2.3, "val_acc": None}])["status"] == OK


def test_a_smoke_run_is_not_judged_on_accuracy_but_still_on_its_losses():
    at_chance = [{"epoch": 0, "train_loss": 2.3, "val_acc": 0.11}]
    assert run_health(at_chance, steps=MIN_STEPS_TO_JUDGE - 1)["status"] == OK
    assert run_health(at_chance, steps=MIN_STEPS_TO_JUDGE)["status"] == AT_CHANCE
    assert run_health(at_chance)["status"] == AT_CHANCE
    diverged = [{"epoch": 0, "train_loss": None, "val_acc": 0.11, "non_finite": ["train_loss"]}]
    assert run_health(diverged, steps=1)["status"] == DIVERGED
    with pytest.raises(ValueError, match="`num_classes` must be at least 2, got 1"):
        RunSummary(num_classes=1)


def test_elapsed_seconds_go_on_after_a_resume(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(reports.time, "perf_counter", lambda: now[0])
    first = RunSummary()
    first.on_fit_start(None, None)
    now[0] = 105.0
    _epoch_end(first, 0, train_loss=0.5)
    now[0] = 107.0  # interrupted mid-epoch 1: the checkpoint holds 7 s
    saved = first.state_dict()

    now[0] = 5000.0  # another process, much later
    resumed = RunSummary()
    resumed.load_state_dict(saved)
    resumed.on_fit_start(None, None)
    now[0] = 5003.0
    _epoch_end(resumed, 1, train_loss=0.4)
    assert [row["elapsed_seconds"] for row in resumed.history] == [5.0, 10.0]
    assert resumed.state_dict()["elapsed_seconds"] == 10.0


def test_a_checkpoint_without_the_seconds_resumes_from_its_last_epoch(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(reports.time, "perf_counter", lambda: now[0])
    resumed = RunSummary()
    resumed.load_state_dict({"history": [{"epoch": 0, "elapsed_seconds": 4.0}]})
    now[0] = 50.0
    resumed.on_fit_start(None, None)
    now[0] = 52.0
    _epoch_end(resumed, 1, train_loss=0.4)
    assert resumed.history[-1]["elapsed_seconds"] == 6.0


def test_the_closing_paragraph_says_what_went_wrong_and_what_to_do():
    diverged = {"status": DIVERGED, "problem": "train_loss became NaN or infinite in epoch 0", "history": []}
    message = did_not_learn_message(diverged, lr=1e25)
    assert message.startswith("lit_nnopt: this run diverged: train_loss became NaN or infinite in epoch 0. ")
    assert "none is offered for testing, and `--ckpt_path best` passes this run over" in message
    assert "Lower the learning rate (this run's: 1e+25)" in message and message.endswith("(Exit status 3.)")
    assert "`--trainer.callbacks+=lit_nnopt.callbacks.NaNGuard --trainer.callbacks.lr_factor 0.1`" in message

    exploded = {"status": AT_CHANCE, "problem": "val_acc stayed at chance", "history": [{"train_loss": 2e11}]}
    assert "train_loss 2e+11 at the end, far above a uniform guess's 2.30, says the learning rate (this run's: 1e+06)" \
        " is too high" in did_not_learn_message(exploded, lr=1e6)  # fmt: skip
    untrained = {"status": AT_CHANCE, "problem": "val_acc stayed at chance", "history": [{"train_loss": 2.291}]}
    assert "train_loss 2.291 at the end, near a uniform guess's 2.30" in did_not_learn_message(untrained, lr=0.01)
    assert "train for more steps" in did_not_learn_message(untrained, lr=0.01)


def test_a_run_that_had_nan_guard_is_not_told_to_add_it():
    diverged = {"status": DIVERGED, "problem": "train_loss became NaN or infinite in epoch 0", "history": []}
    message = did_not_learn_message(diverged, lr=1e25, suggest_nan_guard=False)
    assert "Lower the learning rate (this run's: 1e+25). (Exit status 3.)" in message and "NaNGuard" not in message


def test_the_results_table_shows_results_and_the_verdict_not_the_optimizer_settings(tmp_path, capsys):
    summary = {
        "final": {"val_acc": 0.0983, "lr-Adam": 0.002, "lr-Adam-momentum": 0.9, "lr-Adam-weight_decay": 0.0},
        "best": {"val_acc": 0.0983},
        "best_epoch": 0,
        "status": "at_chance",
    }
    print_summary(summary, tmp_path / "summary.json")
    printed = capsys.readouterr().out
    assert "lr-Adam " in printed and "momentum" not in printed and "weight_decay" not in printed
    assert re.search(r"status\s*│\s*at_chance", printed)


class _Clock:
    """A stand-in for ``time`` in lit_nnopt.app.reports: each reading is 50 s after the previous one."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 50.0
        return self.now


def test_a_fit_resumed_from_its_checkpoint_goes_on_counting_its_seconds(tmp_path, monkeypatch):
    from lightning.pytorch.demos.boring_classes import BoringModel

    def fit(epochs: int, ckpt_path: str | None = None) -> RunSummary:
        monkeypatch.setattr(reports, "time", _Clock())  # a new process: its clock starts anew
        summary = RunSummary()
        trainer = pl.Trainer(
            max_epochs=epochs,
            limit_train_batches=2,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
            callbacks=[summary],
        )
        trainer.fit(BoringModel(), ckpt_path=ckpt_path)
        trainer.save_checkpoint(tmp_path / "last.ckpt")
        return summary

    first = fit(1)
    resumed = fit(2, ckpt_path=str(tmp_path / "last.ckpt"))
    before, after = (row["elapsed_seconds"] for row in resumed.history)
    assert before == first.history[0]["elapsed_seconds"] and after > first.summary["wall_seconds"] >= before
    assert resumed.summary["wall_seconds"] > after
