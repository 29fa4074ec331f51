"""``python -m lit_nnopt tune`` on the real MNIST: a search and its files, pruning, a SIGTERM and its resume.

Trials are short (two or three epochs of 50 or 100 batches): each test takes one to three minutes
on two busy cores, most of it in starting processes. What is pinned is what ``tune`` does with
its trials, not how well they learn.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from lit_nnopt.app.search_space import check_against_config, load_search_space
from lit_nnopt.app.trial_report import PRUNED_AT_EPOCH
from tests.helpers import CONFIGS, PNG_SIGNATURE, run_cli

pytestmark = pytest.mark.slow

THREADS = {"OMP_NUM_THREADS": "1"}


def _short_trials(mnist_dir: Path, epochs: int, train_batches: int = 50) -> list[str]:
    """``fit`` options of every trial: few epochs and batches, no W&B files."""
    return [
        *("--data.data_dir", str(mnist_dir), "--trainer.max_epochs", str(epochs)),
        *("--trainer.limit_train_batches", str(train_batches), "--trainer.limit_val_batches", "20"),
        *("--trainer.logger.mode", "disabled"),
    ]


def _trials(out: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}").get_trials()


def _trained(out: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    """The trials of study ``name`` that ran a ``fit`` (each has its folder), leaving out any that two workers
    asked for at once beyond ``--trials`` and that ended before they trained."""
    return [trial for trial in _trials(out, name) if "folder" in trial.user_attrs]


def _table(out: Path) -> list[dict[str, str]]:
    """The rows of ``trials.csv`` of trials that ran a ``fit``."""
    with (out / "trials.csv").open(newline="") as stream:
        return [row for row in csv.DictReader(stream) if row["folder"]]


def _summaries(folder: Path) -> list[dict]:
    """The ``summary.json`` of every run under ``folder``: one per ``fit`` that trained there."""
    return [json.loads(path.read_text()) for path in sorted(folder.rglob("summary.json"))]


def test_a_search_writes_its_study_table_report_plots_and_a_best_config_that_fit_trains(
    mnist_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["tune", "--config", str(CONFIGS / "momentum.yaml"), "--trials", "3", "--workers", "2", "--out", str(out)]
    args += _short_trials(mnist_dir, epochs=2)
    result = run_cli(*args, env=THREADS)
    assert result.returncode == 0, result.stderr[-3000:]
    url = f"sqlite:///{out.resolve() / 'study.db'}"
    assert f"Study `momentum` in {url}: 0 of 3 trials done; 2 workers on this machine." in result.stderr

    trials = _trained(out, "momentum")
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 3
    for trial in trials:
        folder = out / "trials" / f"{trial.number:04d}"
        assert trial.user_attrs["folder"] == str(folder) and trial.user_attrs["epochs_run"] == 2
        (summary,) = _summaries(folder / "fit")  # one fit per trial
        assert trial.value == summary["best"]["val_acc"]  # a trial's value is its best validation accuracy
        assert list(trial.intermediate_values) == [0, 1]
        assert max(trial.intermediate_values.values()) == pytest.approx(trial.value)
        assert f"trial {trial.number}: val_acc {trial.value:.4f} (" in result.stderr
    rows = _table(out)
    assert [(row["trial"], row["state"], row["epochs_run"], row["pruned_at_epoch"]) for row in rows] == [
        (str(trial.number), "COMPLETE", "2", "") for trial in trials
    ]
    for row, trial in zip(rows, trials, strict=True):
        assert float(row["val_acc"]) == trial.value
        assert float(row["optimizer.lr"]) == trial.params["optimizer.lr"]
        assert float(row["optimizer.momentum"]) == trial.params["optimizer.momentum"]

    best = max(trials, key=lambda trial: trial.value)
    text = (out / "best.yaml").read_text()
    assert text.startswith(
        f"# The best of `tune` study `momentum` on {CONFIGS / 'momentum.yaml'}: trial {best.number}, "
        f"val_acc {best.value:.4f}\n"
    )
    config = yaml.safe_load(text)
    assert config["optimizer"]["init_args"]["lr"] == best.params["optimizer.lr"]
    assert config["optimizer"]["init_args"]["momentum"] == best.params["optimizer.momentum"]
    assert config["trainer"]["max_epochs"] == 20 and config["trainer"]["limit_train_batches"] is None  # no overrides
    assert "TrialReport" not in text
    report = (out / "tune.md").read_text()
    assert "- Trials: 3 complete, 0 pruned, 0 failed (of 3 asked)" in report
    best_line = f"- Best: trial {best.number}, val_acc {best.value:.4f}: optimizer.lr={best.params['optimizer.lr']}, "
    assert best_line in report
    for plot in ("history.png", "importance.png"):
        assert (out / plot).read_bytes().startswith(PNG_SIGNATURE)
        assert f"![{plot}]({plot})" in report

    again = run_cli(*args, env=THREADS)  # the study has its trials: nothing more to train
    assert again.returncode == 0, again.stderr[-3000:]
    assert "3 of 3 trials done" in again.stderr and "trial 3" not in again.stderr
    assert len(_trained(out, "momentum")) == 3

    root = tmp_path / "best_fit"
    trained = run_cli(
        *("fit", "--config", str(out / "best.yaml"), "--data.data_dir", str(mnist_dir)),
        *("--trainer.max_epochs", "1", "--trainer.limit_train_batches", "10", "--trainer.limit_val_batches", "5"),
        *("--trainer.logger.mode", "disabled", "--trainer.default_root_dir", str(root)),
        env=THREADS,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    (run_config,) = root.rglob("config.yaml")
    assert yaml.safe_load(run_config.read_text())["optimizer"]["init_args"] == config["optimizer"]["init_args"]


def test_a_trial_below_the_median_is_pruned_once_the_startup_trials_have_completed(
    mnist_dir: Path, tmp_path: Path
) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("optimizer.lr: {low: 1.0e-6, high: 1.0, log: true}\n")
    out = tmp_path / "out"
    out.mkdir()
    # The trials are queued, as tune queues a cut-off trial again, so that which of them cannot
    # learn (lr 1e-6: val_acc stays near chance) is known: the first one, among the five startup
    # trials, and the last one. Two workers take them in order, so the last starts once at least
    # five of the others have completed, at least four of them trials that learn (lr 0.05 to 0.5).
    study = optuna.create_study(study_name="sgd", storage=f"sqlite:///{out / 'study.db'}", direction="maximize")
    rates = [1.0e-6, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0e-6]
    for lr in rates:
        study.enqueue_trial({"optimizer.lr": lr})
    args = ["tune", "--config", str(CONFIGS / "sgd.yaml"), "--space", str(space), "--trials", "7", "--out", str(out)]
    args += ["--workers", "2"]
    result = run_cli(*args, *_short_trials(mnist_dir, epochs=3), env=THREADS)
    assert result.returncode == 0, result.stderr[-3000:]

    trials = _trained(out, "sgd")
    assert [trial.params["optimizer.lr"] for trial in trials] == rates
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 6 + [TrialState.PRUNED]
    first, pruned = trials[0], trials[6]
    assert first.value < min(trial.value for trial in trials[1:6])  # the worst, but not pruned: no trial to compare
    assert list(first.intermediate_values) == [0, 1, 2] and first.user_attrs.get(PRUNED_AT_EPOCH) is None
    # Warmup is one epoch: the last trial is judged, and pruned, after its second epoch (of three).
    assert pruned.user_attrs[PRUNED_AT_EPOCH] == 1 and pruned.user_attrs["epochs_run"] == 2
    assert list(pruned.intermediate_values) == [0, 1] and pruned.value == pruned.intermediate_values[1]
    assert "trial 6: pruned after epoch 1 (" in result.stderr
    log = (out / "trials" / "0006" / "fit.log").read_text()
    assert "lit_nnopt: trial 6 pruned after epoch 1: val_acc " in log
    (summary,) = _summaries(out / "trials" / "0006" / "fit")
    assert summary["epochs_run"] == 2
    rows = _table(out)
    assert [(row["state"], row["epochs_run"], row["pruned_at_epoch"]) for row in rows] == [
        *[("COMPLETE", "3", "")] * 6,
        ("PRUNED", "2", "1"),
    ]
    assert "- Trials: 6 complete, 1 pruned, 0 failed (of 7 asked)" in (out / "tune.md").read_text()


def _wait_for(marker: Path, process: subprocess.Popen) -> None:
    """Until ``marker`` exists: a trial's fit waits at the step that PauseForSignal names."""
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.05)


def test_a_search_stopped_by_sigterm_resumes_its_cut_off_trial_from_its_last_checkpoint(
    mnist_dir: Path, tmp_path: Path
) -> None:
    out, marker, space = tmp_path / "out", tmp_path / "paused", tmp_path / "space.yaml"
    space.write_text("optimizer.lr: {low: 0.05, high: 0.2, log: true}\n")  # rates that learn, without a spike
    args = ["tune", "--config", str(CONFIGS / "sgd.yaml"), "--space", str(space), "--trials", "3", "--out", str(out)]
    args += _short_trials(mnist_dir, epochs=3, train_batches=100)
    # Every trial's fit waits after its step 50 (of 300) until the marker is deleted: the signal arrives mid-trial.
    args += ["--trainer.callbacks+=tests.helpers.cli_callbacks.PauseForSignal"]
    args += ["--trainer.callbacks.marker", str(marker), "--trainer.callbacks.step", "50"]
    environment = {**os.environ, **THREADS, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "lit_nnopt", *args]
    search = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=environment)
    _wait_for(marker, search)
    assert not (out / "trials" / "0001").exists()  # trial 0 waits: let it go on
    marker.unlink()
    _wait_for(marker, search)
    assert (out / "trials" / "0001" / "fit.log").exists()  # trial 1 waits: stop the search there
    search.send_signal(signal.SIGTERM)
    marker.unlink()
    _, stderr = search.communicate(timeout=180)
    assert search.returncode == 143, stderr[-3000:]
    assert "Stopped; run the same command again to go on with the study." in stderr

    trials = _trials(out, "sgd")
    assert [trial.state for trial in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    cut_off, queued = trials[1], trials[2]
    assert (queued.user_attrs["retry_of"], queued.user_attrs["resume_folder"]) == (1, str(out / "trials" / "0001"))
    (checkpoint,) = (out / "trials" / "0001" / "fit").rglob("last.ckpt")
    assert f"stopped at epoch 0, step 50 and saved {checkpoint}" in (out / "trials" / "0001" / "fit.log").read_text()
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 50

    again = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=environment)
    waited = []  # the trials that reached step 50 in this run: not the resumed one, which had passed it
    while again.poll() is None:
        if marker.exists():
            waited.append(sorted(path.name for path in (out / "trials").iterdir()))
            marker.unlink()
        time.sleep(0.05)
    stderr = again.communicate(timeout=60)[1]
    assert again.returncode == 0, stderr[-3000:]
    assert waited == [["0000", "0001", "0003"]]
    assert "1 of 3 trials done" in stderr
    assert f"trial 2: optimizer.lr={cut_off.params['optimizer.lr']:.4g} (resumed)" in stderr
    assert stderr.count("(resumed)") == 1
    trials = _trials(out, "sgd")
    states = [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert [trial.state for trial in trials] == states
    assert trials[2].params == cut_off.params and trials[2].user_attrs["folder"] == str(out / "trials" / "0001")
    assert f"lit_nnopt: resuming from {checkpoint}" in (out / "trials" / "0001" / "fit.log").read_text()
    assert not (out / "trials" / "0002").exists()  # the resumed trial trained in the cut-off one's folder
    for folder in ("0000", "0001", "0003"):  # one run each: none was trained again from its first epoch
        (summary,) = _summaries(out / "trials" / folder / "fit")
        assert [row["epoch"] for row in summary["history"]] == [0, 1, 2]
    logs = {folder: (out / "trials" / folder / "fit.log").read_text() for folder in ("0000", "0003")}
    assert not any("resuming from" in log for log in logs.values())
    assert [row["state"] for row in _table(out)] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]


@pytest.mark.parametrize(
    ("config", "space", "option"),
    [
        ("sgd.yaml", "optimizer.lrr: {low: 1.0e-3, high: 0.1, log: true}\n", "lrr"),
        ("adam.yaml", "optimizer.momentum: {low: 0.5, high: 0.99}\n", "momentum"),
    ],
)
def test_an_option_the_config_cannot_take_exits_2_in_one_paragraph_before_any_trial(
    config: str, space: str, option: str, tmp_path: Path
) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(space)
    out = tmp_path / "out"
    result = run_cli("tune", "--config", str(CONFIGS / config), "--space", str(path), "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.startswith(f"lit_nnopt: error: search space {path} does not fit {CONFIGS / config}: ")
    assert f"Option '{option}' is not accepted" in result.stderr and result.stderr.count("\n") == 1
    assert f"Fix or remove that option in {path}" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("space", sorted((CONFIGS / "spaces").glob("*.yaml")), ids=lambda path: path.name)
def test_every_shipped_search_space_fits_its_config(space: Path) -> None:
    check_against_config(load_search_space(space), CONFIGS / space.name, [], space)
