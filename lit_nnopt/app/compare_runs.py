"""How ``compare`` schedules its trainings: seeds, parallel workers, and a manifest to resume from.

Each (config, seed) pair is a :class:`Job` with its own folder. ``--workers K`` runs K jobs at
once, each a ``python -m lit_nnopt`` subprocess given ``OMP_NUM_THREADS`` = CPUs // K, so
that K workers share the CPUs instead of each taking them all (``lit_nnopt.app.environment``'s
automatic thread count leaves a count the environment sets alone).

``DIR/compare-state.json`` records each finished job under a key made of its config (path and
content), seed and overrides. Run again with the same arguments, ``compare`` skips the jobs the
manifest calls done whose ``summary.json`` is still there, resumes any other job from its
``last.ckpt`` (``--ckpt_path last``), and starts again, in an emptied folder, the jobs that
have none, so that no run is counted twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lit_nnopt.app.environment import available_cpus
from lit_nnopt.app.reports import SUMMARY_FILE

MANIFEST = "compare-state.json"
_MANIFEST_VERSION = 1
_THREAD_SETTINGS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_DONE, _FAILED = "done", "failed"
# How long a worker told to stop (SIGTERM) may take to save its checkpoint before it is killed.
_STOP_GRACE_SECONDS = 60.0


class CompareUsageError(ValueError):
    """A ``compare`` option with a value it cannot take: exit status 2, as for other command lines."""


@dataclass(frozen=True)
class RunOptions:
    """The options of ``compare`` besides its configs, ``--out`` and the overrides, as given."""

    seeds: int = 1
    workers: int = 1
    baseline: str | None = None
    storage: str | None = None
    study: str | None = None
    tune: int | None = None
    trial_epochs: int | None = None


_DEFAULT_MEANS = {
    "--seeds": "With --seeds 1 (the default) each config is trained once.",
    "--workers": "With --workers 1 (the default) the runs go one after another.",
    "--tune": "Without --tune each config is trained with its own hyperparameters.",
    "--trial-epochs": "Without it each trial runs as many epochs as its config says.",
}
_EXAMPLES = {
    "--seeds": "--seeds 5",
    "--workers": "--workers 2",
    "--baseline": "--baseline configs/sgd.yaml",
    "--storage": "--storage postgresql://USER:PASSWORD@HOST/DB",
    "--study": "--study optimizers",
    "--tune": "--tune 20",
    "--trial-epochs": "--trial-epochs 5",
}


def whole_number(option: str, value: str, example: str, default_means: str = "") -> int:
    """``value`` of ``option`` as a whole number of 1 or more.

    Raises:
        CompareUsageError: naming the option, an ``example`` and what the default means.
    """
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise CompareUsageError(
            f"`{option} {value}`: {option} takes a whole number of 1 or more, e.g. `{example}`. {default_means}".strip()
        )
    return number


# Options that say where this machine keeps things, not how a run trains: two machines may differ in them.
_PLACE_OPTIONS = ("--data.data_dir", "--trainer.default_root_dir")


def comparable_overrides(overrides: Sequence[str]) -> list[str]:
    """``overrides`` without the options that only place files (``--data.data_dir X``, ``--data.data_dir=X``)."""
    kept: list[str] = []
    skip_value = False
    for arg in overrides:
        if skip_value:
            skip_value = False
            continue
        option, equals, _ = arg.partition("=")
        if option in _PLACE_OPTIONS:
            skip_value = not equals
            continue
        kept.append(arg)
    return kept


def take_options(argv: Sequence[str], examples: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The values of the options that ``examples`` names (``--name value`` or ``--name=value``); the rest as it was.

    Raises:
        CompareUsageError: for one of those options without a value, with its example.
    """
    values: dict[str, str] = {}
    rest: list[str] = []
    arguments = list(argv)
    while arguments:
        arg = arguments.pop(0)
        option, equals, value = arg.partition("=")
        if option not in examples:
            rest.append(arg)
            continue
        if not equals:
            value = arguments.pop(0) if arguments and not arguments[0].startswith("--") else ""
        if not value:
            raise CompareUsageError(f"`{option}` needs a value, e.g. `{examples[option]}`.")
        values[option] = value
    return values, rest


def split_run_options(argv: Sequence[str]) -> tuple[RunOptions, list[str]]:
    """The options of :class:`RunOptions` out of ``argv``; the rest as it was.

    Raises:
        CompareUsageError: if a count (``--seeds``, ``--workers``, ``--tune``, ``--trial-epochs``) is
            not a whole number of 1 or more, or an option has no value.
    """
    values, rest = take_options(argv, _EXAMPLES)
    counts = {
        option: whole_number(option, values[option], _EXAMPLES[option], _DEFAULT_MEANS[option])
        for option in ("--seeds", "--workers", "--tune", "--trial-epochs")
        if option in values
    }
    if "--trial-epochs" in counts and "--tune" not in counts:
        raise CompareUsageError("`--trial-epochs` sets the length of --tune's trials: add `--tune T` or drop it.")
    return RunOptions(
        seeds=counts.get("--seeds", 1),
        workers=counts.get("--workers", 1),
        baseline=values.get("--baseline"),
        storage=values.get("--storage"),
        study=values.get("--study"),
        tune=counts.get("--tune"),
        trial_epochs=counts.get("--trial-epochs"),
    ), rest


def baseline_index(baseline: str, configs: Sequence[Path], names: Sequence[str], seeds: int) -> int:
    """The position among ``configs`` of the ``--baseline`` config, named by its path or its run name.

    Raises:
        CompareUsageError: if it is none of them, or there are fewer than two seeds to test with.
    """
    if seeds < 2:
        raise CompareUsageError(
            f"`--baseline {baseline}` compares the configs' means over seeds, and one seed gives no spread to "
            "judge a difference by: add `--seeds N` with N of 2 or more (5 or more for a useful interval)."
        )
    for index, (config, name) in enumerate(zip(configs, names, strict=True)):
        if baseline == name or Path(baseline).resolve() == config.resolve():
            return index
    raise CompareUsageError(
        f"`--baseline {baseline}` is not among the configs compared ({', '.join(map(str, configs))}): the baseline "
        f"is one of them, given by its path or its name, e.g. `--baseline {configs[0]}` or `--baseline {names[0]}`."
    )


@dataclass(frozen=True)
class Job:
    """One training of a comparison: a config, under its run name, with one seed.

    ``seed`` None is the config's own ``seed_everything`` (``--seeds 1``), trained in
    ``DIR/<name>/`` as before seeds existed; seed s goes to ``DIR/<name>/seed-<s>/``.
    """

    name: str
    config: Path
    seed: int | None

    def folder(self, out: Path) -> Path:
        """Where this job's logs and run folder go."""
        return out / self.name if self.seed is None else out / self.name / f"seed-{self.seed}"

    def label(self) -> str:
        """The job as the progress lines name it."""
        return self.name if self.seed is None else f"{self.name} seed {self.seed}"

    def key(self, overrides: Sequence[str]) -> str:
        """What makes two jobs the same training: the config (its path and its content), the seed, the overrides."""
        content = hashlib.sha256(self.config.read_bytes()).hexdigest()[:16]
        return json.dumps([str(self.config), content, self.seed, list(overrides)])

    def seed_args(self) -> list[str]:
        """The ``fit`` options that set this job's seed."""
        return [] if self.seed is None else ["--seed_everything", str(self.seed)]


def make_jobs(configs: Sequence[Path], names: Sequence[str], seeds: int) -> list[Job]:
    """Every config's jobs, config by config: seeds 0 to ``seeds`` - 1, or the config's own seed for one."""
    chosen: list[int | None] = [None] if seeds == 1 else list(range(seeds))
    return [Job(name, config, seed) for config, name in zip(configs, names, strict=True) for seed in chosen]


class Manifest:
    """``DIR/compare-state.json``: each finished job's outcome, by :meth:`Job.key`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        if path.is_file():
            self.entries = json.loads(path.read_text()).get("runs", {})

    def record(self, key: str, run: dict[str, Any], summary: Path | None) -> None:
        """Remember a finished job: done where it has no error, failed otherwise; written at once."""
        self.entries[key] = {
            "outcome": _FAILED if run.get("error") else _DONE,
            "summary": str(summary) if summary else None,
            "run": run,
        }
        written = self.path.with_suffix(".tmp")
        written.write_text(json.dumps({"version": _MANIFEST_VERSION, "runs": self.entries}, indent=2))
        os.replace(written, self.path)  # a reader never sees half a file, even after a kill

    def finished(self, key: str) -> dict[str, Any] | None:
        """The recorded run of a done job whose ``summary.json`` is still there, else None."""
        entry = self.entries.get(key)
        if entry is None or entry["outcome"] != _DONE or not entry["summary"] or not Path(entry["summary"]).is_file():
            return None
        return entry["run"]

    def was_done(self, key: str) -> bool:
        """Whether the manifest calls the job done (its results may have been deleted since)."""
        return self.entries.get(key, {}).get("outcome") == _DONE


def jobs_left(jobs: Sequence[Job], manifest: Manifest, overrides: Sequence[str]) -> list[Job]:
    """The jobs to train: all but those the manifest calls done whose summary is still on disk."""
    return [job for job in jobs if manifest.finished(job.key(overrides)) is None]


def resume_args(job: Job, out: Path, manifest: Manifest, overrides: Sequence[str]) -> list[str]:
    """Prepare a job's folder: ``--ckpt_path last`` where a cut-off run left a ``last.ckpt``, else an empty folder.

    A done job whose results were deleted starts again too: its checkpoints end a finished run.
    """
    folder = job.folder(out)
    fit = folder / "fit"
    if not manifest.was_done(job.key(overrides)) and any(fit.rglob("last*.ckpt")):
        return ["--ckpt_path", "last"]
    if fit.exists():
        shutil.rmtree(fit)
    return []


def worker_environment(
    workers: int, environ: Mapping[str, str] | None = None, cpus: int | None = None
) -> dict[str, str]:
    """The environment of each worker: ``OMP_NUM_THREADS`` = CPUs // ``workers`` (at least 1).

    One worker, or a thread count the user set, leaves the environment as it is.
    """
    environ = dict(os.environ if environ is None else environ)
    if workers == 1 or any(environ.get(name) for name in _THREAD_SETTINGS):
        return environ
    environ["OMP_NUM_THREADS"] = str(max(1, (available_cpus() if cpus is None else cpus) // workers))
    return environ


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt so that the comparison cleans up."""


class Stopped(Exception):
    """Raised in a worker thread that would start a process after the comparison was told to stop."""


class ChildProcesses:
    """The ``lit_nnopt`` processes the workers started, to stop them all when the comparison stops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self._stopping = False

    def open(self) -> None:
        """Accept processes again: a new comparison starts."""
        with self._lock:
            self._stopping = False

    def call(self, args: Sequence[str], stdout: Any, env: Mapping[str, str] | None = None) -> int:
        """``subprocess.call``, remembered while it runs; refused once :meth:`stop` was called."""
        with self._lock:
            if self._stopping:
                raise Stopped
            # A session of its own: Ctrl-C reaches this process only, which then stops each child once, by SIGTERM.
            process = subprocess.Popen(
                list(args), stdout=stdout, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            self._running.add(process)
        try:
            return process.wait()
        finally:
            with self._lock:
                self._running.discard(process)

    def stop(self) -> None:
        """SIGTERM to every running process (each saves its checkpoint), then SIGKILL to those still up."""
        with self._lock:
            self._stopping = True
            running = list(self._running)
        for process in running:
            process.terminate()
        for process in running:
            try:
                process.wait(timeout=_STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()


CHILDREN = ChildProcesses()


def call_lit_nnopt(args: list[str], log: Path, env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Run ``python -m lit_nnopt ARGS`` with its output in ``log``; (exit code, last error line)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as stream:
        code = CHILDREN.call([sys.executable, "-m", "lit_nnopt", *args], stdout=stream, env=env)
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    # lit_nnopt and jsonargparse print "...error: why" then a hint; a traceback ends with its error.
    errors = [line for line in lines if line.startswith(("lit_nnopt: error:", "error:"))]
    return code, (errors or lines or ["no output"])[-1]


def newest_summary(folder: Path, since: float) -> dict[str, Any] | None:
    """The newest ``summary.json`` below ``folder`` written at ``since`` or later, read; None if there is none."""
    found = [path for path in folder.rglob(SUMMARY_FILE) if path.stat().st_mtime >= since]
    if not found:
        return None
    return json.loads(max(found, key=lambda path: path.stat().st_mtime).read_text())


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` in the main thread while the comparison runs, so that it cleans up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_workers(count: int, work: Callable[[], None], stopping: threading.Event) -> None:
    """``work`` on ``count`` threads until each returns; on Ctrl-C, SIGTERM or a worker's error, stop them all.

    ``stopping`` is set and every running process stopped (:meth:`ChildProcesses.stop`), then
    the exception goes on up (SIGTERM as :class:`Terminated`) once the threads have ended.
    """
    CHILDREN.open()
    with sigterm_as_interrupt(), ThreadPoolExecutor(max_workers=count, thread_name_prefix="worker") as pool:
        running = [pool.submit(work) for _ in range(count)]
        try:
            for worker in as_completed(running):
                worker.result()
        except BaseException:
            stopping.set()
            CHILDREN.stop()
            raise


def run_jobs(
    jobs: Sequence[Job], workers: int, train: Callable[[Job], Any], finished: Callable[[Job, Any], None]
) -> None:
    """``train`` each job on ``workers`` threads; ``finished(job, result)`` in this thread as each ends.

    On Ctrl-C or SIGTERM the running trainings are stopped (:meth:`ChildProcesses.stop`), the
    queued ones dropped, and KeyboardInterrupt goes on up; what was finished is recorded.
    """
    CHILDREN.open()
    with sigterm_as_interrupt(), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="compare") as pool:
        pending: dict[Future, Job] = {pool.submit(train, job): job for job in jobs}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    job = pending.pop(future)
                    finished(job, future.result())
        except BaseException:
            for future in pending:
                future.cancel()
            CHILDREN.stop()
            raise
