"""``python -m lit_nnopt tune``: search a config's hyperparameters with Optuna, offline, resumable, shareable.

Each trial is ``fit --config CONFIG`` with the options a search-space file names set to the
values Optuna's TPE sampler picks, in its own process and folder (``DIR/trials/<number>/``).
The trial's :class:`~lit_nnopt.app.trial_report.TrialReport` writes its validation score
per epoch into the study and ends it early where the median pruner calls it hopeless. A
trial's value is its best ``--monitor`` (validation accuracy): the test set is never looked at.

The study is kept in ``DIR/study.db`` (SQLite) unless ``--storage`` names a database server;
the same command, run again or on other machines against the same storage, goes on with the
same study until it has ``--trials`` finished (complete or pruned) trials. At the end
``DIR/best.yaml`` is the best trial's whole config, which ``fit`` takes as it is;
``DIR/trials.csv``, ``DIR/tune.md``, ``DIR/history.png`` and ``DIR/importance.png`` describe the search.
"""

from __future__ import annotations

import hashlib
import json
import math
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_nnopt.app.compare_runs import (
    CompareUsageError,
    RunOptions,
    Stopped,
    Terminated,
    call_lit_nnopt,
    comparable_overrides,
    newest_summary,
    run_workers,
    take_options,
    whole_number,
    worker_environment,
)
from lit_nnopt.app.reports import DID_NOT_LEARN_EXIT
from lit_nnopt.app.search_space import Dimension, check_against_config, load_search_space, option_args
from lit_nnopt.app.studies import GRACE_SECONDS, HEARTBEAT_SECONDS, open_storage, shown, shown_command, storage_url
from lit_nnopt.app.study_membership import membership_environment
from lit_nnopt.app.study_trials import TrialGivenUp, run_trial, trial_id
from lit_nnopt.app.trial_report import PRUNED_AT_EPOCH, TrialReport

DEFAULT_TRIALS = 20
# Trials of random search before TPE models the results, and before the pruner compares trials.
STARTUP_TRIALS = 5
# A run of failures (not prunings: crashes) this long stops a worker: something is wrong with every trial.
MAX_FAILURES_IN_A_ROW = 3
_INTERRUPTED_EXITS = (130, 143)
USAGE = f"""usage: python -m lit_nnopt tune --config CONFIG [--space FILE] [--trials T] [--out DIR]
                               [--storage URL] [--study NAME] [--workers K] [--monitor METRIC] [OVERRIDES ...]

Searches the hyperparameters that the search-space FILE names (default: spaces/<config name>.yaml
beside CONFIG, e.g. configs/spaces/adam.yaml) with Optuna: each trial is `fit --config CONFIG`
with the options set to the trial's values, pruned after an epoch where its validation score
is below the median of the earlier trials at that epoch. The search ends when the study has T
(default {DEFAULT_TRIALS}) finished trials.

DIR (default runs/tune/<config name>) gets best.yaml (the best trial's whole config: train it
with `python -m lit_nnopt fit --config DIR/best.yaml`), trials.csv, tune.md, history.png and
importance.png; each trial's logs and run folder go to DIR/trials/<number>/.

The study is DIR/study.db, so the same command run again after an interruption goes on where it
stopped (a trial cut off by Ctrl-C or SIGTERM resumes from its last.ckpt). --storage URL keeps it
in a database server instead (e.g. postgresql://USER:PASSWORD@HOST/DB): run the same command on
several machines and they share the search, each trial taken by one worker. --study NAME
(default: the config's name) tells several searches in one storage apart. --workers K runs K
trials at once on this machine, each with CPUs // K torch threads. --monitor METRIC (default
val_acc) is the validation metric maximized.

OVERRIDES are `fit` options for every trial, e.g. `--trainer.max_epochs 5` for shorter trials;
best.yaml leaves them out.

Example: python -m lit_nnopt tune --config configs/adam.yaml --trials 20 --trainer.max_epochs 5
"""
_EXAMPLES = {
    "--config": "--config configs/adam.yaml",
    "--space": "--space configs/spaces/adam.yaml",
    "--trials": "--trials 20",
    "--out": "--out runs/tune/adam",
    "--storage": "--storage postgresql://USER:PASSWORD@HOST/DB",
    "--study": "--study adam-lr",
    "--workers": "--workers 2",
    "--monitor": "--monitor val_acc",
}


@dataclass
class TuneOptions:
    """The command line of ``tune``, parsed."""

    config: Path
    space: Path
    trials: int = DEFAULT_TRIALS
    out: Path | None = None
    storage: str | None = None
    study: str | None = None
    workers: int = 1
    monitor: str = "val_acc"
    overrides: list[str] = field(default_factory=list)


def parse_args(argv: Sequence[str]) -> TuneOptions:
    """``tune``'s options; see ``USAGE``.

    Raises:
        CompareUsageError: for a missing config or space file, a value missing, or a count below 1.
    """
    values, overrides = take_options(argv, _EXAMPLES)
    if "--config" not in values:
        raise CompareUsageError(
            "tune needs `--config CONFIG`, e.g. `python -m lit_nnopt tune --config configs/sgd.yaml`."
        )
    config = Path(values["--config"])
    if not config.is_file():
        raise CompareUsageError(f"config file {config} not found: give a path such as configs/adam.yaml.")
    space = Path(values.get("--space") or config.parent / "spaces" / f"{config.stem}.yaml")
    if "--space" not in values and not space.is_file():
        raise CompareUsageError(
            f"no search space for {config}: {space} does not exist. Write one (see configs/spaces/ for examples) "
            "or give `--space FILE`."
        )
    return TuneOptions(
        config=config,
        space=space,
        trials=whole_number("--trials", values.get("--trials", str(DEFAULT_TRIALS)), _EXAMPLES["--trials"]),
        out=Path(values["--out"]) if "--out" in values else Path("runs/tune") / config.stem,
        storage=values.get("--storage"),
        study=values.get("--study") or config.stem,
        workers=whole_number("--workers", values.get("--workers", "1"), _EXAMPLES["--workers"]),
        monitor=values.get("--monitor", "val_acc"),
        overrides=overrides,
    )


class TrialFailed(TrialGivenUp):
    """A trial's ``fit`` crashed: the trial fails (it does not count towards ``--trials``) and the search goes on."""


class TrialInterrupted(Exception):
    """A trial's ``fit`` was stopped by Ctrl-C or SIGTERM: it is queued again, to resume from its ``last.ckpt``."""


class Search:
    """One ``tune`` command's study and the workers that run its trials."""

    def __init__(self, options: TuneOptions, dimensions: list[Dimension], console: Any) -> None:
        import optuna

        self.options = options
        self.dimensions = dimensions
        self.console = console
        self.out = options.out
        self.url = storage_url(options.storage, self.out)
        self.storage = open_storage(self.url)
        sampler = optuna.samplers.TPESampler(n_startup_trials=STARTUP_TRIALS, multivariate=True, constant_liar=True)
        self.study = optuna.create_study(
            study_name=options.study, storage=self.storage, direction="maximize", sampler=sampler, load_if_exists=True
        )
        self._check_same_search()
        self.environment = worker_environment(options.workers)
        self.stopping = threading.Event()
        self._failures_in_row = 0
        self._lock = threading.Lock()

    def _check_same_search(self) -> None:
        """Mark a new study with its config and space; refuse to go on with a study of another search."""
        identity = {
            "config": _digest(self.options.config),
            "space": _digest(self.options.space),
            "overrides": comparable_overrides(self.options.overrides),
            "monitor": self.options.monitor,
        }
        recorded = self.study.user_attrs.get("search")
        if recorded is None:
            self.study.set_user_attr("search", identity)
            self.study.set_user_attr("config_path", str(self.options.config))
        elif recorded != identity:
            changed = ", ".join(key for key in identity if identity[key] != recorded.get(key))
            raise CompareUsageError(
                f"study `{self.options.study}` in {shown(self.url)} was started with another {changed}: its trials "
                "would not be comparable with this search's. Give the new search its own `--study NAME` (or `--out "
                "DIR`), or run the command with the study's own config, space, overrides and monitor to go on with it."
            )

    def work(self) -> None:
        """One worker: run trials until the study has ``--trials`` finished ones, leaving none behind."""
        import optuna

        while not self.stopping.is_set():
            optuna.storages.fail_stale_trials(self.study)  # a dead worker's trial is queued again
            if self.trials_taken(math.inf) >= self.options.trials:
                if self.trials_taken() >= self.options.trials:
                    return
                time.sleep(HEARTBEAT_SECONDS)  # the last trials run elsewhere: if their worker dies, one comes back
                continue
            trial = self.study.ask()  # a queued trial (stopped, or a dead worker's) first
            if self.trials_taken(trial.number) >= self.options.trials:
                # Another worker took the last trial of the budget between our count and our ask.
                trial.set_user_attr("over_budget", True)
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            outcome = run_trial(self.study, self.storage, self.objective, trial)
            if outcome == "TAKEN OVER":
                self.console.print(
                    f"trial {trial.number}: the study gave it up while it ran here (no heartbeat for "
                    f"{GRACE_SECONDS} s) and queued it again; its result here is dropped.",
                    markup=False,
                    soft_wrap=True,
                )
            with self._lock:
                if self._failures_in_row >= MAX_FAILURES_IN_A_ROW:
                    raise TrialFailed(
                        f"{self._failures_in_row} trials in a row failed; the last one's log says why "
                        f"(logs: {self.out / 'trials'}/<number>/fit.log). Fix the config or the search space, then "
                        "run the same command again: finished trials are kept."
                    )

    def trials_taken(self, running_below: float = 0) -> int:
        """The study's complete and pruned trials, and its running ones numbered below ``running_below``."""
        return sum(
            1
            for trial in self.study.get_trials(deepcopy=False)
            if trial.state.name in ("COMPLETE", "PRUNED")
            or (trial.state.name == "RUNNING" and trial.number < running_below)
        )

    def objective(self, trial: Any) -> float:
        """Train one trial; its best ``--monitor``, or ``TrialPruned``."""
        import optuna

        params = {dimension.option: dimension.suggest(trial) for dimension in self.dimensions}
        here = trial.user_attrs.get("resume_on") == socket.gethostname()
        resume_folder = trial.user_attrs.get("resume_folder") if here else None
        folder = Path(resume_folder) if resume_folder else self.out / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("folder", str(folder))
        trial.set_user_attr(PRUNED_AT_EPOCH, None)  # a queued copy inherits the attributes of the trial it repeats
        resuming = resume_folder is not None and any((folder / "fit").rglob("last*.ckpt"))
        fit = ["fit", "--config", str(self.options.config), *self.options.overrides, *option_args(params)]
        placement = ["--trainer.default_root_dir", str(folder / "fit")]
        label = f"trial {trial.number}"
        shown_params = ", ".join(f"{name}={_short(value)}" for name, value in params.items())
        self.console.print(f"{label}: {shown_params}{' (resumed)' if resuming else ''}", markup=False, soft_wrap=True)
        report = TrialReport(self.url, self.options.study, trial.number, self.options.monitor, STARTUP_TRIALS)
        environment = {**membership_environment(self.environment, self.options.study, label), **report.environment()}
        started = time.time()
        try:
            code, message = call_lit_nnopt(
                [*fit, *(["--ckpt_path", "last"] if resuming else []), *placement], folder / "fit.log", environment
            )
        except Stopped:  # the search was stopped before this trial's fit started
            self._requeue(trial, resume_folder and Path(resume_folder))
            raise TrialInterrupted(label) from None
        if self.stopping.is_set():
            self._requeue(trial, folder)
            raise TrialInterrupted(label)
        if code in _INTERRUPTED_EXITS:
            self._failed(f"{label}: its fit was stopped from outside (exit {code}) [log: {folder / 'fit.log'}]")
        summary = newest_summary(folder / "fit", started)
        score = (summary or {}).get("best", {}).get(self.options.monitor)
        if summary is None or code not in (0, DID_NOT_LEARN_EXIT):
            self._failed(f"{label} failed (exit {code}): {message} [log: {folder / 'fit.log'}]")
        trial.set_user_attr("epochs_run", summary.get("epochs_run"))
        pruned_at = self._pruned_at(trial.number)
        if pruned_at is not None or score is None:
            reason = f"pruned after epoch {pruned_at}" if pruned_at is not None else "diverged before validating"
            self._said(f"{label}: {reason} ({time.time() - started:.0f} s)")
            raise optuna.TrialPruned(reason)
        self._said(f"{label}: {self.options.monitor} {score:.4f} ({time.time() - started:.0f} s)")
        return float(score)

    def _said(self, line: str) -> None:
        with self._lock:
            self._failures_in_row = 0
        self.console.print(line, markup=False, soft_wrap=True)

    def _failed(self, why: str) -> None:
        with self._lock:
            self._failures_in_row += 1
        self.console.print(why, markup=False, style="red", soft_wrap=True)
        raise TrialFailed(why)

    def _pruned_at(self, number: int) -> int | None:
        """The epoch after which the trial's ``fit`` was pruned, as its :class:`TrialReport` wrote it."""
        return self.storage.get_trial(trial_id(self.storage, self.options.study, number)).user_attrs.get(
            PRUNED_AT_EPOCH
        )

    def _requeue(self, trial: Any, folder: Path | None) -> None:
        """Queue the trial's parameters again; on this machine it resumes from ``folder``'s last.ckpt, if any."""
        resume = {"resume_folder": str(folder), "resume_on": socket.gethostname()} if folder else {}
        self.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, **resume})


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value) if not isinstance(value, str) else value


def main(argv: list[str]) -> None:
    """``python -m lit_nnopt tune``; see ``USAGE``.

    Raises:
        SystemExit: 2 for a bad command line or search space (nothing trained), 143 after SIGTERM.
    """
    from rich.console import Console

    from lit_nnopt.app.search_space import SearchSpaceError

    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0 if argv else 2)
    console = Console(stderr=True, highlight=False)
    try:
        options = parse_args(argv)
    except (CompareUsageError, SearchSpaceError) as error:
        sys.stderr.write(f"lit_nnopt: error: {error}\n")
        raise SystemExit(2) from None
    try:
        run_search(options, console, shown_command(["python -m lit_nnopt tune", *argv]))
    except Terminated:
        raise SystemExit(128 + signal.SIGTERM) from None


def run_search(options: TuneOptions, console: Any, command: str) -> Search:
    """Check the search space, then run ``options.workers`` workers until the study is done; write its files.

    Raises:
        SystemExit: 2 for a search space the config cannot take (nothing trained).
        Terminated: after SIGTERM (KeyboardInterrupt after Ctrl-C), once the running trials are queued again.
    """
    from lit_nnopt.app.search_space import SearchSpaceError
    from lit_nnopt.app.tune_results import write_results

    try:
        dimensions = load_search_space(options.space)
        check_against_config(dimensions, options.config, options.overrides, options.space)
        search = Search(options, dimensions, console)
    except (CompareUsageError, SearchSpaceError) as error:
        sys.stderr.write(f"lit_nnopt: error: {error}\n")
        raise SystemExit(2) from None
    done = search.trials_taken()
    console.print(
        f"Study `{options.study}` in {shown(search.url)}: {done} of {options.trials} trials done; "
        f"{options.workers} worker{'s' if options.workers > 1 else ''} on this machine.",
        markup=False,
        soft_wrap=True,
    )
    try:
        run_workers(options.workers, search.work, search.stopping)
    except KeyboardInterrupt:
        console.print("Stopped; run the same command again to go on with the study.", markup=False)
        raise
    finally:
        write_results(search, command)  # also after a stop or a failure: the study's finished trials so far
    return search


def tune_each(
    configs: list[Path],
    names: list[str],
    options: RunOptions,
    study: str,
    out: Path,
    overrides: list[str],
    console: Any,
) -> list[Path]:
    """``compare --tune T``: tune each config with T trials in ``DIR/tune/<name>/``; the best configs, in order.

    Every search space is checked against its config before any search starts.

    Raises:
        SystemExit: 2 for a config without a search space, or one it cannot take (nothing trained).
    """
    from lit_nnopt.app.search_space import SearchSpaceError
    from lit_nnopt.app.tune_results import BEST_CONFIG

    trial_length = ["--trainer.max_epochs", str(options.trial_epochs)] if options.trial_epochs else []
    searches = [
        TuneOptions(
            config=config,
            space=config.parent / "spaces" / f"{config.stem}.yaml",
            trials=options.tune,
            out=out / "tune" / name,
            storage=options.storage,
            study=f"{study}-tune-{name}",
            workers=options.workers,
            overrides=[*overrides, *trial_length],
        )
        for config, name in zip(configs, names, strict=True)
    ]
    try:
        for search in searches:
            check_against_config(load_search_space(search.space), search.config, search.overrides, search.space)
    except SearchSpaceError as error:
        sys.stderr.write(f"lit_nnopt: error: {error} (compare --tune tunes each config over spaces/<name>.yaml.)\n")
        raise SystemExit(2) from None
    for search, name in zip(searches, names, strict=True):
        console.rule(f"tune {name}: {search.trials} trials", style="dim")
        run_search(search, console, f"(compare --tune) tune --config {search.config} --trials {search.trials}")
        if not (search.out / BEST_CONFIG).is_file():
            raise RuntimeError(f"tuning {search.config} gave no complete trial: see {search.out / 'tune.md'}")
    return [search.out / BEST_CONFIG for search in searches]
