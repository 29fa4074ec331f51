"""Every config in configs/ is complete and runnable alone, and says what it demonstrates."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CONFIGS, run_cli

ALL_CONFIGS = sorted(CONFIGS.glob("*.yaml"))
# One thread: on a small shared CPU, torch's thread pool spends more time waiting than computing.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda path: path.stem)
def test_config_opens_with_a_one_line_description(config: Path) -> None:
    first, second = config.read_text().splitlines()[:2]
    assert first.startswith("# ") and len(first) > 20, f"{config.name} must open with '# what it demonstrates'"
    assert not second.startswith("#"), f"{config.name}: the description is one line"


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda path: path.stem)
def test_config_runs_one_batch(config: Path, mnist_dir: Path, tmp_path: Path) -> None:
    result = run_cli(
        "fit", "--config", str(config), "--data.data_dir", str(mnist_dir), "--trainer.fast_dev_run", "true",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        env=ONE_THREAD,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Trainer.fit` stopped" in result.stdout + result.stderr


def test_the_required_configs_exist() -> None:
    names = {path.stem for path in ALL_CONFIGS}
    required = {
        "sgd", "momentum", "adam", "l2", "dropout", "exponential_decay", "plateau", "batchnorm", "clipping",
        "early_stopping", "cnn", "tutorial",
    }
    assert required <= names, f"missing: {sorted(required - names)}"
