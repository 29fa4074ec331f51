"""TrainingClock: hooks driven with a scripted clock (when it reads it, what it reports), and one tiny fit."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

from lit_nnopt.app.reports import RunSummary
from lit_nnopt.app.training_clock import CLOCK_FILE, TrainingClock


def scripted(readings: list[float], device: str = "cpu", callbacks: list | None = None, log_dir: str = "") -> tuple:
    """A clock whose reads must be exactly ``readings``, a stand-in trainer and a module on ``device``."""
    clock = TrainingClock()
    left = list(readings)
    clock._clock = lambda: left.pop(0)
    trainer = SimpleNamespace(sanity_checking=False, callbacks=callbacks or [], log_dir=log_dir, default_root_dir="")
    module = SimpleNamespace(device=torch.device(device))
    return clock, trainer, module, left


def two_epochs(clock: TrainingClock, trainer, module, steps_per_epoch: int = 2) -> None:
    """Lightning's order: steps (each with its optimizer steps), then validation, then the epoch's end."""
    clock.on_train_start(trainer, module)
    for _ in range(2):
        for step in range(steps_per_epoch):
            clock.on_train_batch_start(trainer, module, None, step)
            for _ in range(3):  # three batches per Lightning step, as under StepsPerExecution
                clock.on_before_optimizer_step(trainer, module, None)
        clock.on_validation_start(trainer, module)
        clock.on_validation_end(trainer, module)
        clock.on_train_epoch_end(trainer, module)
    clock.on_train_end(trainer, module)


def test_warm_up_and_validation_are_reported_apart_from_training():
    # first step 10, first gradients 13, validation 15-16 and 18-19.5: six reads, none per step.
    summary = RunSummary()
    clock, trainer, module, left = scripted([10, 13, 15, 16, 18, 19.5], callbacks=[summary])
    two_epochs(clock, trainer, module)
    assert left == []
    assert clock.figures == {
        "train_span_seconds": 8,
        "warmup_seconds": 3,
        "validation_seconds": 2.5,
        "validation_seconds_in_span": 1,
        "training_seconds": 4,
    }
    assert summary.summary["training_clock"] == clock.figures


def test_sanity_check_is_not_timed_and_a_run_without_validation_ends_at_its_last_epoch():
    clock, trainer, module, left = scripted([0, 1, 5])
    trainer.sanity_checking = True
    clock.on_validation_start(trainer, module)
    clock.on_validation_end(trainer, module)
    trainer.sanity_checking = False
    clock.on_train_start(trainer, module)
    clock.on_train_batch_start(trainer, module, None, 0)
    clock.on_before_optimizer_step(trainer, module, None)
    clock.on_train_batch_start(trainer, module, None, 1)
    clock.on_train_epoch_end(trainer, module)
    clock._write = lambda folder: None
    clock.on_train_end(trainer, module)
    assert left == []
    assert clock.figures["training_seconds"] == 4 and clock.figures["validation_seconds"] == 0


def test_the_clock_is_read_after_a_cuda_synchronize(monkeypatch: pytest.MonkeyPatch):
    synchronized = []
    monkeypatch.setattr(torch.cuda, "synchronize", synchronized.append)
    clock, trainer, module, _ = scripted([10, 13, 15, 16, 18, 19.5], device="cuda", callbacks=[RunSummary()])
    two_epochs(clock, trainer, module)
    assert synchronized == [torch.device("cuda")] * 6


def test_without_a_run_summary_the_figures_go_to_a_file(tmp_path: Path):
    clock, trainer, module, _ = scripted([10, 13, 15, 16, 18, 19.5], log_dir=str(tmp_path))
    two_epochs(clock, trainer, module)
    assert json.loads((tmp_path / CLOCK_FILE).read_text())["training_seconds"] == 4


def test_a_tiny_fit_on_the_cpu_reports_every_figure(tmp_path: Path):
    clock, summary = TrainingClock(), RunSummary()
    trainer = Trainer(
        default_root_dir=tmp_path, max_epochs=2, limit_train_batches=3, limit_val_batches=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[clock, summary],
    )  # fmt: skip
    trainer.fit(BoringModel())
    figures = json.loads((tmp_path / "summary.json").read_text())["training_clock"]
    assert figures == pytest.approx(clock.figures)
    assert 0 < figures["training_seconds"] < figures["train_span_seconds"]
    assert figures["validation_seconds"] > figures["validation_seconds_in_span"] > 0  # the last validation is after
