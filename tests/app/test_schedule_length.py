"""ScheduleLength: OneCycleLR's fixed total_steps against the steps a run takes, said before training."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.utilities.types import LRSchedulerConfig

from lit_nnopt.app.cli import default_callbacks
from lit_nnopt.app.schedule_length import ScheduleLength, ScheduleTooShortError
from lit_nnopt.optim import WarmupCosineDecay


def _trainer(total_steps: int, steps: float, interval: str = "step", frequency: int = 1, max_epochs: int = 20):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=total_steps)
    config = LRSchedulerConfig(scheduler, interval=interval, frequency=frequency)
    return SimpleNamespace(lr_scheduler_configs=[config], estimated_stepping_batches=steps, max_epochs=max_epochs)


def _start(trainer, capsys) -> list[str]:
    ScheduleLength().on_train_start(trainer, None)
    return capsys.readouterr().err.splitlines()


def test_a_shorter_run_is_warned_that_the_cycle_is_cut_off_and_told_the_total_steps_that_fit(capsys):
    # onecycle.yaml with --trainer.max_epochs 2: 1,500 of its 15,000 steps.
    (message,) = _start(_trainer(15000, 1500), capsys)
    assert message.startswith(
        "lit_nnopt: warning: OneCycleLR has total_steps 15000, but this fit takes only 1500 optimizer steps"
    )
    assert "stops at 10% of its length, before it has annealed" in message
    assert "`--lr_scheduler.total_steps 1500` fits the whole schedule into this run" in message


def test_a_run_of_the_schedule_s_length_is_silent(capsys):
    assert _start(_trainer(15000, 15000), capsys) == []
    assert _start(_trainer(100, 400, frequency=4), capsys) == []  # stepped every 4th optimizer step
    assert _start(_trainer(20, 0, interval="epoch", max_epochs=20), capsys) == []  # stepped once per epoch


def test_a_longer_run_is_refused_before_torch_fails_mid_training(capsys):
    with pytest.raises(ScheduleTooShortError, match=r"total_steps 3000, but this fit takes 3750 optimizer steps"):
        _start(_trainer(3000, 3750), capsys)


def test_a_warmup_cosine_longer_than_the_run_is_warned_and_a_shorter_one_holds_its_last_lr(capsys):
    trainer = _trainer(100, 10)
    optimizer = trainer.lr_scheduler_configs[0].scheduler.optimizer
    cosine = WarmupCosineDecay(optimizer, warmup_steps=750, total_steps=15000)
    trainer.lr_scheduler_configs = [LRSchedulerConfig(cosine, interval="step")]
    trainer.estimated_stepping_batches = 1500
    (message,) = _start(trainer, capsys)
    assert message.startswith("lit_nnopt: warning: WarmupCosineDecay has total_steps 15000, but this fit takes only")
    trainer.estimated_stepping_batches = 30000
    assert _start(trainer, capsys) == []


def test_an_endless_run_or_a_scheduler_without_total_steps_is_not_judged(capsys):
    assert _start(_trainer(100, float("inf")), capsys) == []
    trainer = _trainer(100, 10)
    optimizer = trainer.lr_scheduler_configs[0].scheduler.optimizer
    trainer.lr_scheduler_configs = [LRSchedulerConfig(torch.optim.lr_scheduler.StepLR(optimizer, 5), interval="step")]
    assert _start(trainer, capsys) == []


def test_the_cli_checks_every_fit_unless_given_its_own():
    assert sum(isinstance(callback, ScheduleLength) for callback in default_callbacks({})) == 1
    own = ScheduleLength()
    checks = [callback for callback in default_callbacks({"callbacks": [own]}) if isinstance(callback, ScheduleLength)]
    assert checks == [own]
