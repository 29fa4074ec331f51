"""lit_nnopt's callbacks from a YAML config and from the command line, on the real MNIST, for a few batches."""

from __future__ import annotations

import json

import pytest

from tests.helpers import cli_fit

# The command line in a subprocess.
pytestmark = pytest.mark.slow

# The README's YAML example.
CONFIG = """\
trainer:
  callbacks:
    - class_path: lit_nnopt.callbacks.EarlyStopping
      init_args:
        monitor: val_loss
        patience: 5
        restore_best_weights: true
        verbose: true
    - class_path: lit_nnopt.callbacks.GradientClipping
      init_args:
        mode: agc
"""


def test_callbacks_from_yaml_and_the_command_line(mnist_dir, tmp_path):
    config = tmp_path / "callbacks.yaml"
    config.write_text(CONFIG)
    result = cli_fit(
        config,
        mnist_dir,
        tmp_path,
        "--trainer.logger", "false",  # the run folder is then default_root_dir/fit-<date>-<time>
        "--trainer.max_epochs", "2",
        "--trainer.limit_train_batches", "5",
        "--trainer.limit_val_batches", "2",
        "--trainer.callbacks+=lit_nnopt.callbacks.ReduceLROnPlateau",
        # min_delta 100: no check after the first improves, so patience 1 reduces at epoch 1.
        "--trainer.callbacks.patience", "1",
        "--trainer.callbacks.factor", "0.5",
        "--trainer.callbacks.min_delta", "100",
        "--trainer.callbacks.verbose", "true",  # the family's default is quiet, as Lightning's and Keras'
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Epoch 1: ReduceLROnPlateau reduced the lr of optimizer 0 group 0 from 0.001 to 0.0005" in output
    assert "EarlyStopping: did not stop; best val_loss" in output
    (summary,) = tmp_path.glob("fit-*/summary.json")
    history = json.loads(summary.read_text())["history"]
    assert [row["epoch"] for row in history] == [0, 1]
    assert all(0.0 <= row["grad_clip/clipped"] <= 1.0 for row in history)
