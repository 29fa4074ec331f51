"""``compare --storage URL``: one comparison's runs shared by the workers of several machines through an Optuna study.

The first ``compare`` to reach the storage creates the study and queues every (config, seed)
job in it as a waiting trial, named ``<config name>#<seed>``. Each worker, on any machine that
runs the same command against the same storage, takes a waiting trial (the database hands each
to one worker only), trains its job in this machine's output folder, and stores the run's
results in the trial, so that every machine can write the whole table from the study. A worker
writes a heartbeat while it trains; when it stops for ``GRACE_SECONDS`` (the worker or its
machine died) the trial fails and a copy is queued, to be taken again. A run that fails is
queued once more; a run stopped by Ctrl-C or SIGTERM is queued again and resumes from its
``last.ckpt`` when this machine takes it.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from lit_nnopt.app.compare_results import Run
from lit_nnopt.app.compare_runs import CompareUsageError, Job, RunOptions, Stopped, comparable_overrides, run_workers
from lit_nnopt.app.studies import GRACE_SECONDS, HEARTBEAT_SECONDS, open_storage, shown
from lit_nnopt.app.study_trials import TrialGivenUp, run_trial

# Runs of a job that failed (not those stopped or lost with their worker) before it is given up.
MAX_ATTEMPTS = 2
_ALL_QUEUED = "all_jobs_queued"


def job_fingerprint(job: Job, overrides: Sequence[str]) -> str:
    """The config's content, the seed and the training overrides of ``job``, as one short digest."""
    content = hashlib.sha256(job.config.read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps([content, job.seed, comparable_overrides(overrides)]).encode()).hexdigest()[:16]


def job_id(job: Job) -> str:
    """How the study names a job: the same on every machine that runs the same command."""
    return f"{job.name}#{job.seed}"


class JobFailed(TrialGivenUp):
    """A job's run failed: its trial fails, and the job is queued once more."""


class JobStopped(Exception):
    """A job's run was stopped (Ctrl-C, SIGTERM): its trial fails and the job is queued again."""


class SharedRuns:
    """The jobs of one comparison in a study of ``url``, and this machine's workers on them."""

    def __init__(
        self, url: str, study_name: str, jobs: Sequence[Job], console: Any, overrides: Sequence[str] = ()
    ) -> None:
        import optuna

        self.url = url
        self.jobs = {job_id(job): job for job in jobs}
        # What makes two machines' jobs the same runs: each config's content, seed and the overrides that
        # change training (not where each machine keeps MNIST).
        self.fingerprints = {job_id(job): job_fingerprint(job, overrides) for job in jobs}
        self.console = console
        self.stopping = threading.Event()
        self._finished_lock = threading.Lock()
        self.storage = open_storage(url)
        try:
            self.study = optuna.create_study(study_name=study_name, storage=self.storage, direction="maximize")
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            self.study = optuna.load_study(study_name=study_name, storage=self.storage)
            created = False
        if created:
            for name in self.jobs:
                self.study.enqueue_trial({}, user_attrs={"job": name, "attempt": 1})
            self.study.set_user_attr(_ALL_QUEUED, self.fingerprints)
        self._check_same_jobs(study_name)

    def _check_same_jobs(self, study_name: str) -> None:
        """Wait until the study's creator has queued its jobs; refuse a study of another comparison."""
        for _ in range(60):
            queued = self.study.user_attrs.get(_ALL_QUEUED)
            if queued is not None:
                break
            time.sleep(1)
        else:
            raise CompareUsageError(
                f"study `{study_name}` in {shown(self.url)} has no queued runs after a minute: the `compare` that "
                "created it stopped while queueing them. Give this comparison another `--study NAME`."
            )
        if queued != self.fingerprints:
            names = sorted(set(queued) | set(self.fingerprints))
            differ = ", ".join(name for name in names if queued.get(name) != self.fingerprints.get(name))
            raise CompareUsageError(
                f"study `{study_name}` in {shown(self.url)} holds another comparison's runs: {differ} differ (a "
                "config, a seed or an override that changes training is not the same). Run the same configs, "
                "--seeds and overrides on every machine, or give this comparison its own `--study NAME`."
            )

    def results(self) -> dict[Job, Run]:
        """The run of each job that has a complete trial."""
        done: dict[Job, Run] = {}
        for trial in self.study.get_trials(deepcopy=False):
            job = self.jobs.get(trial.user_attrs.get("job", ""))
            if job is not None and trial.state.name == "COMPLETE" and "run" in trial.user_attrs:
                done[job] = Run(**trial.user_attrs["run"])
        return done

    def work(self, train: Callable[[Job, list[str]], Run], finished: Callable[[Job, Run, float], None]) -> None:
        """One worker: take waiting jobs until none is waiting or running anywhere."""
        import optuna

        def objective(trial: Any) -> float:
            return self._run(trial, train, finished)

        while not self.stopping.is_set():
            optuna.storages.fail_stale_trials(self.study)  # a dead worker's job is queued again
            states = [trial.state.name for trial in self.study.get_trials(deepcopy=False)]
            if "WAITING" in states:
                trial = self.study.ask()
                if trial.user_attrs.get("job") not in self.jobs:  # another worker took the last waiting job first
                    trial.set_user_attr("no_job_left", True)
                    self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                elif run_trial(self.study, self.storage, objective, trial) == "TAKEN OVER":
                    self.console.print(
                        f"{self.jobs[trial.user_attrs['job']].label()}: the study gave its run here up (no heartbeat "
                        f"for {GRACE_SECONDS} s) and queued it again; its result here is dropped.",
                        markup=False,
                        soft_wrap=True,
                    )
            elif "RUNNING" in states:  # running elsewhere: if that worker dies, its job comes back as waiting
                time.sleep(HEARTBEAT_SECONDS)
            else:
                return

    def _run(
        self, trial: Any, train: Callable[[Job, list[str]], Run], finished: Callable[[Job, Run, float], None]
    ) -> float:
        job = self.jobs[trial.user_attrs["job"]]
        resume_here = trial.user_attrs.get("resume_on") == socket.gethostname()
        started = time.perf_counter()
        try:
            run = train(job, ["--ckpt_path", "last"] if resume_here else [])
        except Stopped:  # the comparison was stopped before this run started
            self._queue_again(trial, job, resume=resume_here)
            raise JobStopped(job.label()) from None
        if self.stopping.is_set():  # its process was stopped with the comparison: it saved a last.ckpt
            self._queue_again(trial, job, resume=True)
            raise JobStopped(job.label())
        trial.set_user_attr("run", asdict(run))
        trial.set_user_attr("host", socket.gethostname())
        with self._finished_lock:  # one run's files at a time: each rewrites the comparison's table
            finished(job, run, time.perf_counter() - started)
        if run.error and trial.user_attrs.get("attempt", 1) < MAX_ATTEMPTS:
            self._queue_again(trial, job, resume=False, attempt=trial.user_attrs.get("attempt", 1) + 1)
            raise JobFailed(run.error)
        return run.test_acc if run.test_acc is not None else 0.0

    def _queue_again(self, trial: Any, job: Job, resume: bool, attempt: int | None = None) -> None:
        user_attrs = {"job": job_id(job), "attempt": attempt or trial.user_attrs.get("attempt", 1)}
        if resume:
            user_attrs["resume_on"] = socket.gethostname()
        self.study.enqueue_trial({}, user_attrs=user_attrs)


def run_shared(
    shared: SharedRuns,
    workers: int,
    train: Callable[[Job, list[str]], Run],
    finished: Callable[[Job, Run, float], None],
) -> None:
    """``workers`` threads of :meth:`SharedRuns.work`; on Ctrl-C or SIGTERM, stop the runs and queue them again."""
    run_workers(workers, lambda: shared.work(train, finished), shared.stopping)


def run_on_storage(
    jobs: list[Job],
    options: RunOptions,
    study: str,
    overrides: list[str],
    train: Callable[[Job, list[str]], Run],
    finished: Callable[[Job, Run, float], None],
    results: dict[Job, Run],
    console: Any,
) -> int:
    """Train jobs of the study in ``--storage`` until none is left; ``results`` gets every machine's; how many here."""
    shared = SharedRuns(options.storage, study, jobs, console, overrides)
    results.update(shared.results())
    console.print(
        f"Study `{study}` in {shown(options.storage)}: {len(results)} of {len(jobs)} runs done; "
        f"{options.workers} worker{'s' if options.workers > 1 else ''} on this machine.",
        markup=False,
        soft_wrap=True,
    )
    trained_here: set[Job] = set()

    def counted(job: Job, run: Run, seconds: float) -> None:
        trained_here.add(job)
        finished(job, run, seconds)

    try:
        run_shared(shared, options.workers, train, counted)
    except KeyboardInterrupt:
        console.print(
            "Stopped; the runs cut off are queued again in the study. Run the same command again to go on.",
            markup=False,
        )
        raise
    finally:
        results.update(shared.results())
    return len(trained_here)
