"""Shared fixtures: a small synthetic dataset, and the project's configs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from {{ cookiecutter.project_slug }}.data import SyntheticDataModule


@pytest.fixture
def configs() -> Path:
    """The project's `configs/` folder."""
    return Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture
def synthetic_data() -> SyntheticDataModule:
    """320 images of 10 classes in batches of 32: an epoch takes milliseconds on a CPU."""
    return SyntheticDataModule(train_size=192, val_size=64, test_size=64, batch_size=32, seed=0)


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs write `runs/` (and W&B files) into the test's own folder, offline."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # LightningCLI reads only the args the test gives
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))


@pytest.fixture
def quick_fit_args() -> list[str]:
    """Command-line overrides that train the default config for two short epochs on synthetic data."""
    return [
        "--data", "{{ cookiecutter.project_slug }}.data.SyntheticDataModule",
        "--data.train_size", "192", "--data.val_size", "64", "--data.test_size", "64",
        "--data.batch_size", "32",
        "--trainer.max_epochs", "2",
        "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip
