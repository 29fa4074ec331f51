"""``tune --storage postgresql://...``: workers on several machines share one study in a real PostgreSQL server.

Two ``tune`` processes stand for two machines. One is killed mid-trial, as a lost machine is;
the other finishes the search, taking the dead worker's trial again once its heartbeat is
stale. The study is then read with Optuna's own API, not lit_nnopt's. The server is the
``postgres_url`` fixture's (tests/helpers/postgres.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import CONFIGS, REPO, run_cli

TRIALS = 5
STUDY = "killed-worker"
# Trials of a few seconds, most of it the fit's start; no logger, as the study is what is tested.
SHORT_TRIALS = (
    *("--trainer.max_epochs", "3", "--trainer.limit_train_batches", "60", "--trainer.limit_val_batches", "20"),
    *("--trainer.logger", "false"),
)
# How long the search may take before the test gives up on it (a search that never ends, as
# when the dead worker's trial is never handed on). On a 2-core CPU it takes about 2 minutes,
# 3 when other jobs load the CPU: each worker's start, then the trials one after the other
# (12 to 20 s each), while the dead worker's 30 s of grace run out.
SEARCH_SECONDS = 300


def test_unreachable_postgres_is_one_paragraph_naming_the_url_and_the_server_to_start() -> None:
    done = run_cli(
        "tune", "--config", str(CONFIGS / "sgd.yaml"), "--storage", "postgresql://u:pw@127.0.0.1:9/db", timeout=120
    )
    assert done.returncode == 1, done.stderr
    error = next(line for line in done.stderr.splitlines() if line.startswith("lit_nnopt: error:"))
    assert "cannot reach the study storage postgresql://u:***@127.0.0.1:9/db: " in error
    assert "u:pw@" not in done.stderr
    assert "apt-get install postgresql" in error and "service postgresql start" in error
    assert "createdb" in error and "docs/multi-machine.md" in error
    assert "Traceback" not in done.stderr


def _tune(url: str, out: Path, mnist_dir: Path, log: Path) -> subprocess.Popen:
    """A ``tune`` worker of the study in ``url``, with its own output folder, as on a machine of its own."""
    with log.open("w") as stream:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "lit_nnopt", "tune", "--config", str(CONFIGS / "sgd.yaml")),
                *("--trials", str(TRIALS), "--storage", url, "--study", STUDY, "--out", str(out)),
                *("--data.data_dir", str(mnist_dir), *SHORT_TRIALS),
            ],
            cwd=REPO,
            stdout=stream,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux's /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue  # a process that ended while it was read
    return children


def _kill_with_its_children(worker: subprocess.Popen) -> None:
    """SIGKILL a ``tune`` worker and its trial's ``fit``, as the loss of their machine would."""
    children = _children(worker.pid)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    for child in children:
        # A fit runs in a session of its own (it would outlive its worker): its DDP ranks too, if any.
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(child) == child:
                os.killpg(child, signal.SIGKILL)
            else:
                os.kill(child, signal.SIGKILL)


def _log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]


def _kill_mid_trial(worker: subprocess.Popen, out: Path, log: Path, study, deadline: float) -> int:
    """Kill ``worker`` once a trial it runs (its folder under ``out``) has reported an epoch; the trial's number."""
    from optuna.trial import TrialState

    while time.monotonic() < deadline:
        assert worker.poll() is None, f"the worker ended before it could be killed:\n{_log_tail(log)}"
        for trial in study.get_trials(states=(TrialState.RUNNING,)):
            if trial.user_attrs.get("folder", "").startswith(str(out)) and trial.intermediate_values:
                _kill_with_its_children(worker)
                return trial.number
        time.sleep(0.2)
    pytest.fail(f"no trial of the worker reported an epoch in time:\n{_log_tail(log)}")


def _finish(worker: subprocess.Popen, log: Path, deadline: float) -> None:
    try:
        worker.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        worker.terminate()  # tune stops its fit and writes what it has
        worker.wait(timeout=60)
        pytest.fail(f"the surviving worker had not finished the search in {SEARCH_SECONDS} s:\n{_log_tail(log)}")
    assert worker.returncode == 0, _log_tail(log)


@pytest.mark.slow
def test_a_killed_workers_trial_is_run_again_once_by_the_other_worker(
    postgres_url: str, mnist_dir: Path, tmp_path: Path
) -> None:
    import optuna
    from optuna.trial import TrialState

    # Optuna's own view of the storage; psycopg2 named, as SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3.
    storage = optuna.storages.RDBStorage(postgres_url.replace("postgresql://", "postgresql+psycopg2://", 1))
    deadline = time.monotonic() + SEARCH_SECONDS
    doomed_log, survivor_log = tmp_path / "doomed.log", tmp_path / "survivor.log"
    doomed = _tune(postgres_url, tmp_path / "doomed", mnist_dir, doomed_log)
    survivor = _tune(postgres_url, tmp_path / "survivor", mnist_dir, survivor_log)
    try:
        while STUDY not in [summary.study_name for summary in optuna.get_all_study_summaries(storage)]:
            assert time.monotonic() < deadline and doomed.poll() is None, _log_tail(doomed_log)
            time.sleep(0.2)
        study = optuna.load_study(study_name=STUDY, storage=storage)
        killed = _kill_mid_trial(doomed, tmp_path / "doomed", doomed_log, study, deadline)
        _finish(survivor, survivor_log, deadline)
    finally:  # after a failure: no worker, and no fit of one, outlives the test
        for worker in (doomed, survivor):
            if worker.poll() is None:
                _kill_with_its_children(worker)

    trials = {trial.number: trial for trial in study.get_trials()}
    states = {number: trial.state.name for number, trial in trials.items()}
    finished = [trial for trial in trials.values() if trial.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == TRIALS, states
    # The killed trial, and no other, failed; nothing is left running or queued.
    assert [number for number, state in states.items() if state not in ("COMPLETE", "PRUNED")] == [killed], states
    assert trials[killed].state == TrialState.FAIL
    retries = [trial for trial in trials.values() if trial.system_attrs.get("failed_trial") == killed]
    assert [retry.state.name for retry in retries] in (["COMPLETE"], ["PRUNED"]), states
    assert retries[0].params == trials[killed].params
    assert Path(retries[0].user_attrs["folder"]).parent == tmp_path / "survivor" / "trials"
    # No set of values was trained to the end twice: the retry replaced the killed trial, it did not add to it.
    values = [tuple(sorted(trial.params.items())) for trial in finished]
    assert len(set(values)) == TRIALS, values
