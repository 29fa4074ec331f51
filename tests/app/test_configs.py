"""Every config in configs/ is complete and runnable alone, and says what it demonstrates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import ALL_CONFIGS, CONFIGS, cli_fit, run_cli

# One thread: on a small shared CPU, torch's thread pool spends more time waiting than computing.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda path: path.stem)
def test_config_opens_with_a_one_line_description(config: Path) -> None:
    first, second = config.read_text().splitlines()[:2]
    assert first.startswith("# ") and len(first) > 20, f"{config.name} must open with '# what it demonstrates'"
    assert not second.startswith("#"), f"{config.name}: the description is one line"


def _on_this_machine(config: Path) -> list[str]:
    """Run a GPU config on the CPU where there is no GPU: its keys are still checked."""
    trainer = yaml.safe_load(config.read_text()).get("trainer") or {}
    if trainer.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        return ["--trainer.accelerator", "cpu"]
    return []


@pytest.mark.slow  # the command line in a subprocess, once per config
@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda path: path.stem)
def test_config_runs_one_batch(config: Path, mnist_dir: Path, tmp_path: Path) -> None:
    result = cli_fit(
        config,
        mnist_dir,
        tmp_path,
        "--trainer.fast_dev_run",
        "true",
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        *_on_this_machine(config),
        env=ONE_THREAD,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Trainer.fit` stopped" in result.stdout + result.stderr


def test_the_required_configs_exist() -> None:
    names = {path.stem for path in ALL_CONFIGS}
    required = {
        "sgd",
        "momentum",
        "adam",
        "l2",
        "dropout",
        "exponential_decay",
        "plateau",
        "batchnorm",
        "clipping",
        "early_stopping",
        "cnn",
        "tutorial",
    }
    assert required <= names, f"missing: {sorted(required - names)}"


def test_tutorial_config_is_the_articles_recipe_with_keras_semantics() -> None:
    config = yaml.safe_load((CONFIGS / "tutorial.yaml").read_text())
    net = config["model"]["net"]
    assert net["class_path"] == "lit_nnopt.MLP"
    assert net["init_args"] == {
        "hidden_sizes": [128],
        "activation": "relu",
        "dropout": 0.2,
        "init": "keras",
        "l2": 0.01,
    }
    assert config["model"]["lr_scheduler_interval"] == "step"
    assert config["optimizer"] == {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.001, "eps": 1e-7}}
    assert config["lr_scheduler"] == {
        "class_path": "lit_nnopt.optim.ExponentialDecay",
        "init_args": {"decay_steps": 10000, "decay_rate": 0.9},
    }
    assert config["data"] == {"batch_size": 64, "val_split": 0.2, "val_split_mode": "last", "standardize": False}
    assert config["trainer"] == {"max_epochs": 20}


# Test accuracy of the best checkpoint, as the README's results table states it (measured with
# `python -m lit_nnopt compare`, on the real MNIST).
README_TEST_ACCURACY = {"tutorial": 0.9633, "adam": 0.9811}


@pytest.mark.slow
def test_tutorial_and_adam_reach_the_readme_accuracy(mnist_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli(
        "compare",
        str(CONFIGS / "tutorial.yaml"),
        str(CONFIGS / "adam.yaml"),
        "--out",
        str(out),
        "--data.data_dir",
        str(mnist_dir),
        "--trainer.logger",
        "false",
        env=ONE_THREAD,
        timeout=3600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["config"]: row for row in json.loads((out / "comparison.json").read_text())}
    for name, expected in README_TEST_ACCURACY.items():
        assert rows[name]["error"] is None, rows[name]["error"]
        assert rows[name]["test_acc"] == pytest.approx(expected, abs=0.003), f"{name}: README says {expected:.2%}"
