"""``compare --storage/--study/--tune``: the options, the runs queued in an Optuna study, and real comparisons.

The fast tests drive :class:`SharedRuns` on a SQLite study in ``tmp_path`` with made-up jobs and
a ``train`` that trains nothing. The slow ones run ``compare`` on the real MNIST: two processes
sharing one study as two machines would, and ``--tune`` followed by the seeds, run twice.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest
import yaml
from rich.console import Console

from lit_nnopt.app import compare_queue, studies
from lit_nnopt.app.compare import default_study
from lit_nnopt.app.compare_queue import MAX_ATTEMPTS, JobStopped, SharedRuns, run_shared
from lit_nnopt.app.compare_results import Run
from lit_nnopt.app.compare_runs import CompareUsageError, Job, RunOptions, split_run_options
from lit_nnopt.app.studies import open_storage
from tests.helpers import CONFIGS, REPO, run_cli

STUDY = "shared"

# -- options ----------------------------------------------------------------------------------


def test_storage_study_tune_and_trial_epochs_come_out_of_the_command_line() -> None:
    argv = [
        "a.yaml",
        "--storage",
        "sqlite:////tmp/s.db",
        "--study=optimizers",
        "--tune",
        "20",
        "--trial-epochs=3",
        "--trainer.max_epochs",
        "5",
    ]
    options, rest = split_run_options(argv)
    assert options == RunOptions(storage="sqlite:////tmp/s.db", study="optimizers", tune=20, trial_epochs=3)
    assert rest == ["a.yaml", "--trainer.max_epochs", "5"]
    assert split_run_options(["a.yaml", "--tune=4"])[0] == RunOptions(tune=4)
    assert split_run_options(["a.yaml"])[0] == RunOptions(storage=None, study=None, tune=None, trial_epochs=None)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tune", "0"], r"`--tune 0`: --tune takes a whole number of 1 or more, e\.g\. `--tune 20`\. Without --tune"),
        (["--tune=many"], r"`--tune many`: --tune takes a whole number"),
        (["--tune", "2", "--trial-epochs", "0"], r"`--trial-epochs 0`: --trial-epochs takes a whole number of 1"),
        (["--trial-epochs", "2"], r"`--trial-epochs` sets the length of --tune's trials: add `--tune T` or drop it\."),
        (["--tune"], r"`--tune` needs a value, e\.g\. `--tune 20`\."),
        (["--storage"], r"`--storage` needs a value, e\.g\. `--storage postgresql://USER:PASSWORD@HOST/DB`\."),
        (["--storage", "--study", "x"], r"`--storage` needs a value"),
        (["--study", "--seeds", "2"], r"`--study` needs a value, e\.g\. `--study optimizers`\."),
        (["--trial-epochs="], r"`--trial-epochs` needs a value, e\.g\. `--trial-epochs 5`\."),
    ],
)
def test_bad_storage_study_and_tune_options_are_explained(argv: list[str], message: str) -> None:
    with pytest.raises(CompareUsageError, match=message):
        split_run_options(["a.yaml", *argv])


def test_the_default_study_is_named_after_the_output_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_study(tmp_path / "runs" / "optimizers") == "compare-optimizers"
    monkeypatch.chdir(tmp_path)
    assert default_study(Path(".")) == f"compare-{tmp_path.name}"  # the folder's name, not "."
    assert default_study(Path("a/../b/")) == "compare-b"


# -- the runs queued in a study -----------------------------------------------------------------


def _jobs(*names: str, seeds: int = 2) -> list[Job]:
    """Jobs of configs ``names`` in the working folder (the ``url`` fixture's): a study fingerprints their content."""
    for name in names:
        Path(f"{name}.yaml").write_text(f"# {name}\n")
    return [Job(name, Path(f"{name}.yaml"), seed) for name in names for seed in range(seeds)]


def _shared(url: str, jobs: list[Job], study: str = STUDY) -> SharedRuns:
    return SharedRuns(url, study, jobs, Console(file=io.StringIO()))


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    # A worker that finds the last jobs running elsewhere waits this long before it looks again.
    monkeypatch.setattr(compare_queue, "HEARTBEAT_SECONDS", 0.05)
    monkeypatch.chdir(tmp_path)
    return f"sqlite:///{tmp_path / 's.db'}"


def _trained(run_of: dict[str, str | None] | None = None):
    """A ``train`` that trains nothing: the calls it had, and a Run with the error ``run_of`` gives a job's label."""
    calls: list[tuple[str, list[str]]] = []
    lock = threading.Lock()

    def train(job: Job, fit_args: list[str]) -> Run:
        with lock:
            calls.append((job.label(), fit_args))
        error = (run_of or {}).get(job.label())
        return Run(job.name, str(job.config), test_acc=None if error else 0.9 + (job.seed or 0) / 100, error=error)

    return train, calls


def _trials(url: str, study: str = STUDY) -> list[tuple[str, str, int]]:
    """(job, state, attempt) of each trial of the study, read with Optuna's own API, in trial order."""
    loaded = optuna.load_study(study_name=study, storage=url)
    return [
        (trial.user_attrs.get("job", ""), trial.state.name, trial.user_attrs.get("attempt", 0))
        for trial in loaded.get_trials(deepcopy=False)
    ]


def test_workers_that_open_a_new_sqlite_study_at_once_all_open_it(url: str) -> None:
    start = threading.Barrier(4)
    errors: list[str] = []

    def open_it() -> None:
        start.wait()
        try:
            studies.open_storage(url)
        except studies.StorageError as error:  # "table studies already exists": another made it meanwhile
            errors.append(str(error))

    workers = [threading.Thread(target=open_it) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert errors == []
    optuna.create_study(study_name=STUDY, storage=studies.open_storage(url))  # the tables are whole


def test_two_workers_on_a_sqlite_study_never_take_the_same_waiting_trial(url: str) -> None:
    study = optuna.create_study(study_name=STUDY, storage=studies.open_storage(url))
    for number in range(20):
        study.enqueue_trial({}, user_attrs={"job": f"job#{number}"})
    taken: list[str] = []

    def take() -> None:
        mine = optuna.load_study(study_name=STUDY, storage=studies.open_storage(url))
        while job := mine.ask().user_attrs.get("job"):  # a trial of no job: the queue is empty
            taken.append(job)

    workers = [threading.Thread(target=take) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert sorted(taken) == sorted(f"job#{number}" for number in range(20))


def test_two_workers_take_every_job_exactly_once(url: str) -> None:
    jobs = _jobs("sgd", "adam", "momentum")
    shared = _shared(url, jobs)
    train, calls = _trained()
    finished: list[str] = []
    run_shared(shared, 2, train, lambda job, run, seconds: finished.append(job.label()))
    assert sorted(label for label, _ in calls) == sorted(job.label() for job in jobs)
    assert all(fit_args == [] for _, fit_args in calls)
    assert sorted(finished) == sorted(job.label() for job in jobs)
    assert {job: run.test_acc for job, run in shared.results().items()} == {
        job: pytest.approx(0.9 + job.seed / 100) for job in jobs
    }
    complete = [trial for trial in _trials(url) if trial[1] == "COMPLETE"]
    assert sorted(complete) == sorted((f"{job.name}#{job.seed}", "COMPLETE", 1) for job in jobs)


def test_two_machines_on_one_study_share_the_jobs_and_both_see_every_result(url: str) -> None:
    jobs = _jobs("sgd", "adam", seeds=3)
    first, second = _shared(url, jobs), _shared(url, jobs)  # the second loads the study the first created
    train, calls = _trained()
    other = threading.Thread(target=run_shared, args=(second, 1, train, lambda *_: None))
    other.start()
    run_shared(first, 1, train, lambda *_: None)
    other.join(timeout=30)
    assert sorted(label for label, _ in calls) == sorted(job.label() for job in jobs)
    assert set(first.results()) == set(second.results()) == set(jobs)


def test_a_study_of_another_comparison_is_refused(url: str) -> None:
    _shared(url, _jobs("sgd", "adam"))
    with pytest.raises(CompareUsageError) as refused:
        _shared(url, _jobs("sgd", "momentum"))
    assert str(refused.value) == (
        f"study `{STUDY}` in {url} holds another comparison's runs: adam#0, adam#1, momentum#0, momentum#1 differ "
        "(a config, a seed or an override that changes training is not the same). Run the same configs, --seeds "
        "and overrides on every machine, or give this comparison its own `--study NAME`."
    )
    with pytest.raises(CompareUsageError, match="holds another comparison's runs: adam#2, sgd#2 differ"):
        _shared(url, _jobs("sgd", "adam", seeds=3))  # more seeds: other jobs too
    Path("adam.yaml").write_text("# adam, edited\n")
    with pytest.raises(CompareUsageError, match="runs: adam#0, adam#1 differ"):
        _shared(url, _jobs("sgd") + [Job("adam", Path("adam.yaml"), seed) for seed in range(2)])  # a config edited
    with pytest.raises(CompareUsageError, match="runs: adam#0, adam#1, sgd#0, sgd#1 differ"):
        SharedRuns(url, STUDY, _jobs("sgd", "adam"), Console(file=io.StringIO()), ["--trainer.max_epochs", "5"])
    where = ["--data.data_dir", "/elsewhere/mnist", "--trainer.default_root_dir=/scratch"]
    _shared_with = SharedRuns(url, STUDY, _jobs("sgd", "adam"), Console(file=io.StringIO()), where)
    assert len(_shared_with.jobs) == 4  # where a machine keeps MNIST and its runs is no difference
    assert len(_trials(url)) == 4  # nothing of the refused comparisons was queued


def test_a_study_whose_creator_stopped_while_queueing_is_refused(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    optuna.create_study(study_name=STUDY, storage=url)  # created, its jobs never queued
    waits: list[float] = []
    monkeypatch.setattr(compare_queue.time, "sleep", waits.append)
    with pytest.raises(CompareUsageError, match=r"has no queued runs after a minute: .* another `--study NAME`\."):
        _shared(url, _jobs("sgd"))
    assert waits == [1] * 60


def test_a_failed_run_is_queued_once_more_then_recorded_with_its_error(url: str) -> None:
    jobs = _jobs("sgd", seeds=1) + _jobs("broken", seeds=1)
    shared = _shared(url, jobs)
    train, calls = _trained({"broken seed 0": "fit failed (exit 1): boom"})
    finished: list[tuple[str, str | None]] = []
    run_shared(shared, 1, train, lambda job, run, seconds: finished.append((job.label(), run.error)))
    assert [label for label, _ in calls].count("broken seed 0") == MAX_ATTEMPTS == 2
    assert finished.count(("broken seed 0", "fit failed (exit 1): boom")) == 2
    assert _trials(url) == [
        ("sgd#0", "COMPLETE", 1),
        ("broken#0", "FAIL", 1),
        ("broken#0", "COMPLETE", 2),
    ]
    results = shared.results()
    assert results[jobs[1]].error == "fit failed (exit 1): boom" and results[jobs[0]].error is None


def test_a_run_that_fails_once_then_succeeds_is_recorded_as_a_success(url: str) -> None:
    (job,) = _jobs("flaky", seeds=1)
    shared = _shared(url, [job])
    errors = iter(["fit failed (exit -9): killed", None])

    def train(job: Job, fit_args: list[str]) -> Run:
        return Run(job.name, str(job.config), test_acc=0.95, error=next(errors))

    run_shared(shared, 1, train, lambda *_: None)
    assert _trials(url) == [("flaky#0", "FAIL", 1), ("flaky#0", "COMPLETE", 2)]
    assert shared.results()[job].error is None and shared.results()[job].test_acc == 0.95


def test_results_hold_only_the_runs_of_complete_trials(url: str) -> None:
    jobs = _jobs("sgd", seeds=1) + _jobs("broken", seeds=1)
    shared = _shared(url, jobs)
    assert shared.results() == {}  # queued, none run
    train, _ = _trained({"broken seed 0": "fit failed (exit 1): boom"})
    seen: list[set[str]] = []

    def finished(job: Job, run: Run, seconds: float) -> None:
        # The run is stored in its trial, still running now: not a result yet.
        seen.append({job.label() for job in shared.results()})

    run_shared(shared, 1, train, finished)
    assert seen == [set(), {"sgd seed 0"}, {"sgd seed 0"}]  # the first failed attempt (FAIL) never counts
    assert set(shared.results()) == set(jobs)


def test_a_stopped_run_is_queued_again_and_resumes_on_this_host(url: str) -> None:
    jobs = _jobs("sgd", seeds=1)
    shared = _shared(url, jobs)
    calls: list[list[str]] = []

    def train(job: Job, fit_args: list[str]) -> Run:
        calls.append(fit_args)
        if len(calls) == 1:
            shared.stopping.set()  # Ctrl-C while it trains: its process saved a last.ckpt and ended
        return Run(job.name, str(job.config), test_acc=0.9)

    with pytest.raises(JobStopped):
        shared.work(train, lambda *_: None)
    waiting = optuna.load_study(study_name=STUDY, storage=url).get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [trial.user_attrs for trial in waiting] == [
        {"job": "sgd#0", "attempt": 1, "resume_on": socket.gethostname()}
    ]
    shared.stopping.clear()
    shared.work(train, lambda *_: None)
    assert calls == [[], ["--ckpt_path", "last"]]
    assert [state for _, state, _ in _trials(url)] == ["FAIL", "COMPLETE"]


def test_a_killed_workers_job_is_queued_again_once_its_heartbeat_is_stale(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(studies, "GRACE_SECONDS", 1)
    jobs = _jobs("sgd", seeds=1)
    shared = _shared(url, jobs)
    storage = studies.open_storage(url)
    # A worker takes the job, beats once, and dies.
    taken = shared.study.ask()
    storage.record_heartbeat(
        storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(STUDY), taken.number)
    )
    train, calls = _trained()
    shared.work(train, lambda *_: None)  # waits for the running job, takes it again once its heartbeat is stale
    assert calls == [("sgd seed 0", [])]
    assert _trials(url) == [("sgd#0", "FAIL", 1), ("sgd#0", "COMPLETE", 1)]


# -- real comparisons -----------------------------------------------------------------------------

# Short runs on the real MNIST: a minute's work per comparison on a busy two-core machine.
SHORT = (
    *("--trainer.limit_train_batches", "40", "--trainer.limit_val_batches", "10"),
    *("--trainer.limit_test_batches", "10", "--trainer.logger.mode", "disabled"),
)
ONE_EPOCH = ("--trainer.max_epochs", "1")
TRAINED = re.compile(r"Trained (\d+) of (\d+) runs here\.")


def _lit_nnopt(*args: str) -> subprocess.Popen:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "lit_nnopt", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )


@pytest.mark.slow  # two comparisons at once, eight command-line runs between them
@pytest.mark.parametrize("server", [False, True], ids=["sqlite", "postgresql"])
def test_two_processes_on_one_study_train_each_run_once_and_both_write_the_whole_table(
    mnist_dir: Path, tmp_path: Path, server: bool, request: pytest.FixtureRequest
) -> None:
    # The second: a real PostgreSQL server over the loopback, as several machines would share it.
    url = request.getfixturevalue("postgres_url") if server else f"sqlite:///{tmp_path / 's.db'}"
    outs = [tmp_path / "one", tmp_path / "two"]
    configs = (str(CONFIGS / "sgd.yaml"), str(CONFIGS / "momentum.yaml"))
    common = ("--seeds", "2", "--storage", url, "--study", "machines", "--workers", "1")
    machines = [
        _lit_nnopt(
            "compare", *configs, *common, "--out", str(out), "--data.data_dir", str(mnist_dir), *ONE_EPOCH, *SHORT
        )
        for out in outs
    ]
    errors = [machine.communicate(timeout=600)[1] for machine in machines]
    for machine, stderr in zip(machines, errors, strict=True):
        assert machine.returncode == 0, stderr[-3000:]
    trained = [TRAINED.search(stderr).groups() for stderr in errors]
    assert [total for _, total in trained] == ["4", "4"]
    here = [int(count) for count, _ in trained]
    assert sum(here) == 4 and min(here) >= 1, errors  # both machines took runs, and no run was taken twice
    assert [stderr.count(": training ") for stderr in errors] == here
    logs = [sorted(str(log.relative_to(out)) for log in out.rglob("fit.log")) for out in outs]
    assert [len(found) for found in logs] == here
    assert sorted(logs[0] + logs[1]) == [
        f"{name}/seed-{seed}/fit.log" for name in ("momentum", "sgd") for seed in (0, 1)
    ]

    study = optuna.load_study(study_name="machines", storage=open_storage(url, heartbeat=False))
    complete = [trial.user_attrs["job"] for trial in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))]
    assert sorted(complete) == ["momentum#0", "momentum#1", "sgd#0", "sgd#1"]
    tables = [(out / "comparison.json").read_text() for out in outs]
    assert tables[0] == tables[1]  # both from the study: each machine's runs and the other's
    runs = json.loads(tables[0])
    assert [(run["config"], run["seed"]) for run in runs] == [("sgd", 0), ("sgd", 1), ("momentum", 0), ("momentum", 1)]
    assert all(run["error"] is None and run["test_acc"] is not None for run in runs)
    for out in outs:
        table = (out / "comparison.md").read_text()
        assert "| sgd | 2/2 | " in table and "| momentum | 2/2 | " in table
        with (out / "runs.csv").open(newline="") as stream:
            rows = list(csv.DictReader(stream))
        assert [(row["study"], row["seed"]) for row in rows] == [
            ("machines/sgd", "0"),
            ("machines/sgd", "1"),
            ("machines/momentum", "0"),
            ("machines/momentum", "1"),
        ]


def _tuned_comparison(mnist_dir: Path, out: Path) -> subprocess.CompletedProcess:
    return run_cli(
        "compare",
        str(CONFIGS / "sgd.yaml"),
        str(CONFIGS / "momentum.yaml"),
        *("--tune", "3", "--trial-epochs", "1", "--seeds", "2", "--workers", "2"),
        *("--baseline", str(CONFIGS / "sgd.yaml"), "--out", str(out), "--data.data_dir", str(mnist_dir)),
        *("--trainer.max_epochs", "2", *SHORT),
        env={"OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow  # six trials, four seeds trained and tested; then the same command, which trains nothing
def test_a_tuned_comparison_trains_each_best_config_over_seeds_and_a_rerun_trains_nothing(
    mnist_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = _tuned_comparison(mnist_dir, out)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("sgd", "momentum"):
        with (out / "tune" / name / "trials.csv").open(newline="") as stream:
            trials = list(csv.DictReader(stream))
        assert len(trials) == 3 and {trial["study"] for trial in trials} == {f"compare-out-tune-{name}"}
        complete = [trial for trial in trials if trial["state"] == "COMPLETE"]
        assert complete and all(trial["epochs_run"] == "1" for trial in complete)  # --trial-epochs 1
        best = max(complete, key=lambda trial: float(trial["val_acc"]))
        config = yaml.safe_load((out / "tune" / name / "best.yaml").read_text())
        assert config["optimizer"]["init_args"]["lr"] == pytest.approx(float(best["optimizer.lr"]))
    assert "Trained 4 of 4 runs here." in result.stderr
    runs = json.loads((out / "comparison.json").read_text())
    assert [(run["config"], run["seed"], run["path"]) for run in runs] == [
        (name, seed, str(out / "tune" / name / "best.yaml")) for name in ("sgd", "momentum") for seed in (0, 1)
    ]
    assert all(run["error"] is None and run["epochs_run"] == 2 for run in runs)  # the seeds: the overrides' epochs
    statistics = json.loads((out / "statistics.json").read_text())
    assert statistics["baseline"] == "sgd"
    assert 0.0 <= statistics["configs"][1]["test_acc_vs_baseline"]["p_value"] <= 1.0
    assert "Welch's t-test p (test_acc)" in (out / "comparison.md").read_text()
    with (out / "runs.csv").open(newline="") as stream:
        studies_of_runs = [row["study"] for row in csv.DictReader(stream)]
    assert studies_of_runs == ["compare-out/sgd", "compare-out/sgd", "compare-out/momentum", "compare-out/momentum"]

    again = _tuned_comparison(mnist_dir, out)
    assert again.returncode == 0, again.stderr[-3000:]
    for name in ("sgd", "momentum"):
        assert f"Study `compare-out-tune-{name}` in " in again.stderr
        assert f"tune-{name}` in sqlite:///{(out / 'tune' / name / 'study.db').resolve()}: 3 of 3 trials done" in (
            again.stderr
        )
    assert not re.search(r"^trial \d+: ", again.stderr, re.MULTILINE)  # no trial started
    assert "4 of 4 runs already done" in again.stderr and "Trained 0 of 4 runs here." in again.stderr
    assert ": training " not in again.stderr
    assert json.loads((out / "comparison.json").read_text()) == runs
