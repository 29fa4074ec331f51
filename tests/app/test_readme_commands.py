"""The README's train-test-predict commands run as printed, one after the other, offline, in a fresh folder."""

from __future__ import annotations

import json
import os
import shlex

import pytest

from tests.app.test_docs import readme_cli_commands
from tests.helpers import REPO, run_cli

# A short run instead of 20 epochs: the commands are the README's, only cut short.
SHORT = {
    "fit": ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "20", "--trainer.limit_val_batches", "2"],
    "test": ["--trainer.limit_test_batches", "2"],
    "predict": ["--trainer.limit_predict_batches", "1"],
}


@pytest.mark.slow  # three command-line runs
def test_the_readme_fit_then_test_and_predict_with_best_run_as_printed(mnist_dir, tmp_path):
    os.symlink(mnist_dir, tmp_path / "data")  # "./data", as the README has the user put MNIST there
    os.symlink(REPO / "configs", tmp_path / "configs")
    commands = [shlex.split(line) for line in readme_cli_commands()]
    first_fit = next(i for i, words in enumerate(commands) if words[3] == "fit")
    sequence = commands[first_fit : first_fit + 3]
    assert [words[3] for words in sequence] == ["fit", "test", "predict"]
    assert all(words[-2:] == ["--ckpt_path", "best"] for words in sequence[1:])
    for words in sequence:
        result = run_cli(*words[3:], *SHORT[words[3]], cwd=tmp_path)
        assert result.returncode == 0, f"{shlex.join(words)}:\n{result.stderr[-3000:]}"
    (run,) = (tmp_path / "runs" / "lit_nnopt").iterdir()  # test and predict joined the fit's run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["final"]["test_acc"] > 0.5
    assert (run / "predictions.csv").is_file()
