"""``python -m lit_nnopt compare``: train several configs, with one seed or several, then tabulate and plot them.

Each config is trained with ``fit`` in its own process (so one crash cannot take the others
with it), then its best checkpoint is evaluated with ``test``. ``--seeds``, ``--workers`` and
resuming are :mod:`lit_nnopt.app.compare_runs`' job; the statistics over seeds,
:mod:`lit_nnopt.app.compare_seeds`'. The results come from each
run's ``summary.json`` (see ``lit_nnopt.app.reports.RunSummary``) and go to ``DIR/comparison.md``,
``DIR/comparison.json`` and ``DIR/comparison.png``; the table is also printed.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lit_nnopt.app.compare_results import RUNS_TABLE, Run, cell, plot, print_table, write_markdown, write_runs_table
from lit_nnopt.app.compare_runs import (
    MANIFEST,
    CompareUsageError,
    Job,
    Manifest,
    RunOptions,
    Terminated,
    baseline_index,
    call_lit_nnopt,
    make_jobs,
    newest_summary,
    resume_args,
    run_jobs,
    split_run_options,
    worker_environment,
)
from lit_nnopt.app.reports import DID_NOT_LEARN_EXIT, OK, SUMMARY_FILE
from lit_nnopt.app.studies import shown_command
from lit_nnopt.app.study_membership import membership_environment

DEFAULT_OUT = "runs/comparison"
USAGE = f"""usage: python -m lit_nnopt compare CONFIG [CONFIG ...] [--out DIR] [--seeds N] [--workers K]
                                  [--baseline CONFIG] [--tune T [--trial-epochs E]]
                                  [--storage URL] [--study NAME] [OVERRIDES ...]

Trains each CONFIG with `fit`, tests its best checkpoint with `test`, and writes
DIR/comparison.md, DIR/comparison.json, DIR/runs.csv and DIR/comparison.png (validation
accuracy and loss per epoch, one line per config). DIR defaults to {DEFAULT_OUT}; each run's
logs go to DIR/<config name>/, its checkpoints and summary.json (fit and test) to a run folder
below DIR/<config name>/fit/.

The configs come first. OVERRIDES are `fit` options applied to every run, for example
`--data.data_dir /data --trainer.max_epochs 5`.

--seeds N trains every config with seeds 0 to N-1 (each in DIR/<config name>/seed-<s>/) and
adds each config's mean, standard deviation and 95% confidence interval of test and best
validation accuracy; --baseline CONFIG (one of the configs, by path or name) adds each
other config's difference from it, with its 95% interval and Welch's t-test p-value.
--workers K runs K trainings at once, each with CPUs // K torch threads. DIR/{MANIFEST}
records the finished runs: run the same command again after an interruption and only
what is missing is trained (a run cut off mid-way resumes from its last.ckpt).

--tune T first tunes each config with `tune` under the same budget of T trials (its search
space: spaces/<config name>.yaml beside it; DIR/tune/<config name>/), each trial
--trial-epochs E epochs long if given, then compares the best config of each search.

--storage URL keeps the comparison (and --tune's searches) in a database that several
machines reach, e.g. postgresql://USER:PASSWORD@HOST/DB: run the same command on each and
they share the runs, each run trained by one worker; a worker that dies leaves its run to
another. --study NAME (default: compare-<DIR's name>) tells comparisons in one storage apart.

Example: python -m lit_nnopt compare configs/sgd.yaml configs/momentum.yaml configs/adam.yaml --trainer.max_epochs 5
"""


def parse_args(argv: list[str]) -> tuple[list[Path], Path, list[str]]:
    """(configs, output folder, overrides) from the command line; see ``USAGE``."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0 if argv else 2)
    configs: list[Path] = []
    while argv and not argv[0].startswith("-"):
        configs.append(Path(argv.pop(0)))
    out, overrides = Path(DEFAULT_OUT), []
    while argv:
        arg = argv.pop(0)
        if arg == "--out" or arg.startswith("--out="):
            value = arg.partition("=")[2] or (argv.pop(0) if argv else "")
            if not value:
                raise ValueError("`--out` needs a folder, e.g. `--out runs/comparison`.")
            out = Path(value)
        else:
            overrides.append(arg)
    if not configs:
        raise ValueError(f"no CONFIG given: list the config files before any option.\n{USAGE}")
    missing = [str(path) for path in configs if not path.is_file()]
    if missing:
        raise ValueError(f"config file(s) not found: {', '.join(missing)}. Give paths such as configs/adam.yaml.")
    return configs, out, overrides


def default_study(out: Path) -> str:
    """The study of a comparison without ``--study``: its output folder's name, the same on every machine."""
    return f"compare-{out.resolve().name}"


def run_names(configs: list[Path]) -> list[str]:
    """Each config's name: its file name without ``.yaml``, numbered where two would clash."""
    names: list[str] = []
    for path in configs:
        name, count = path.stem, 2
        while name in names:
            name, count = f"{path.stem}-{count}", count + 1
        names.append(name)
    return names


def run_config(
    name: str,
    config: Path,
    overrides: list[str],
    folder: Path,
    fit_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Run:
    """Fit ``config`` and test its best checkpoint, both in one run folder under ``folder / "fit"``.

    Failures go into ``Run.error``; a run that did not learn (``status`` in its summary) is not tested.
    ``fit_args`` (a seed, ``--ckpt_path last``) go to ``fit`` only; ``env`` is both processes' environment.
    """
    run = Run(config=name, path=str(config))
    started = time.time()
    # The CLI links the logger's save_dir to default_root_dir: the run's folder, summary.json included, lands there.
    placement = ["--trainer.default_root_dir", str(folder / "fit")]
    fit = ["fit", "--config", str(config), *overrides, *fit_args, *placement]
    code, message = call_lit_nnopt(fit, folder / "fit.log", env)
    summary = newest_summary(folder / "fit", started)
    if summary is None:
        run.error = f"fit failed (exit {code}): {message} [log: {folder / 'fit.log'}]"
        return run
    _fill_from_fit(run, summary)
    if code == DID_NOT_LEARN_EXIT or run.status not in (None, OK):
        return run  # nothing to test: its checkpoint is no trained model
    if code != 0:
        run.error = f"fit failed (exit {code}) after {run.epochs_run} epochs: {message} [log: {folder / 'fit.log'}]"
        return run
    checkpoint = summary.get("best_checkpoint")
    if not checkpoint:
        run.error = "no best checkpoint to test (is checkpointing disabled, or fast_dev_run set?)"
        return run
    started = time.time()
    code, message = call_lit_nnopt(
        [
            "test",
            "--config",
            str(config),
            *overrides,
            "--ckpt_path",
            checkpoint,
            "--trainer.logger",
            "false",
        ],
        folder / "test.log",
        env,
    )
    # The test joins the checkpoint's run folder: its summary.json gains test_acc.
    tested = newest_summary(folder / "fit", started)
    run.test_acc = (tested or {}).get("final", {}).get("test_acc")
    if code != 0 or run.test_acc is None:
        run.error = f"test failed (exit {code}): {message} [log: {folder / 'test.log'}]"
    return run


def _fill_from_fit(run: Run, summary: dict[str, Any]) -> None:
    run.history = summary.get("history", [])
    run.best_val_acc = summary.get("best", {}).get("val_acc")
    run.final_val_acc = next((row["val_acc"] for row in reversed(run.history) if row.get("val_acc") is not None), None)
    run.best_epoch = summary.get("best_epoch")
    run.epochs_run = summary.get("epochs_run")
    run.stop_reason = summary.get("stop_reason")
    run.seconds_per_epoch = summary.get("seconds_per_epoch")
    run.status = summary.get("status")
    run.problem = summary.get("problem")


def main(argv: list[str]) -> None:
    """``python -m lit_nnopt compare``; see ``USAGE``.

    Raises:
        ValueError: if no config is given, a config file is missing or ``--out`` has no value.
        SystemExit: 2 for a bad ``--seeds``, ``--workers`` or ``--baseline`` (nothing written), 143 after SIGTERM.
    """
    from rich.console import Console

    options, configs, out, overrides, baseline = _parse_or_exit(argv)
    names = run_names(configs)
    command = shown_command(["python -m lit_nnopt compare", *argv])  # no password of --storage in the files
    out.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True, highlight=False)
    study = options.study or default_study(out)
    try:
        if options.tune:
            from lit_nnopt.app.tune import tune_each

            configs = tune_each(configs, names, options, study, out, overrides, console)
        jobs = make_jobs(configs, names, options.seeds)
        environment = worker_environment(options.workers)
        results: dict[Job, Run] = {}

        def train(job: Job, fit_args: list[str]) -> Run:
            prefix = f"[{jobs.index(job) + 1}/{len(jobs)}] {job.label()}:"
            resumed = " from its last.ckpt" if "--ckpt_path" in fit_args else ""
            console.print(
                f"{prefix} training {job.config}{resumed} (log: {job.folder(out) / 'fit.log'})",
                markup=False,
                soft_wrap=True,
            )
            if not resumed and (job.folder(out) / "fit").exists():
                shutil.rmtree(job.folder(out) / "fit")  # a run cut off without a checkpoint starts again
            # The W&B group, and the `study` of every logger: this comparison's runs of this config.
            member = membership_environment(environment, f"{study}/{job.name}", job.label())
            seeded = [*job.seed_args(), *fit_args]
            return run_config(job.name, job.config, overrides, job.folder(out), seeded, member)

        def finished(job: Job, run: Run, seconds: float) -> None:
            results[job] = run
            failed = run.error or run.status not in (None, OK)
            outcome_text = run.error or (cell(run, "stop_reason") if failed else f"test_acc {cell(run, 'test_acc')}")
            prefix = f"[{jobs.index(job) + 1}/{len(jobs)}] {job.label()}:"
            console.print(f"{prefix} {outcome_text} ({seconds:.0f} s)", markup=False, style="red" if failed else None)
            # After every run: an interrupted comparison keeps what it did.
            _write_results(jobs, results, baseline, study, out, command)

        if options.storage:
            from lit_nnopt.app.compare_queue import run_on_storage

            trained = run_on_storage(jobs, options, study, overrides, train, finished, results, console)
        else:
            trained = _run_here(jobs, options, out, overrides, train, finished, results, console)
    except KeyboardInterrupt as stop:
        if isinstance(stop, Terminated):
            raise SystemExit(128 + signal.SIGTERM) from None
        raise
    _write_results(jobs, results, baseline, study, out, command)  # also where every run was done before
    if options.seeds == 1:
        print_table([results[job] for job in jobs if job in results])
    else:
        console.print("\n".join(_statistics_lines(jobs, results, baseline)), markup=False, soft_wrap=True)
    failures = sum(1 for job in jobs if job not in results or results[job].error)
    # A shared study retries a failed run once by itself; a local comparison on the next command.
    again = "they were tried twice" if options.storage else "run the same command again to retry them"
    retry = f" {failures} failed: {again}." if failures else ""
    console.print(f"Trained {trained} of {len(jobs)} runs here.{retry}")
    extra = f", {out / 'statistics.json'}" if options.seeds > 1 else ""
    written = (
        f"{out / 'comparison.md'}, {out / 'comparison.json'}{extra}, {out / RUNS_TABLE} and {out / 'comparison.png'}"
    )
    console.print(f"Wrote {written}.", soft_wrap=True)


def _run_here(
    jobs: list[Job],
    options: RunOptions,
    out: Path,
    overrides: list[str],
    train: Callable[[Job, list[str]], Run],
    finished: Callable[[Job, Run, float], None],
    results: dict[Job, Run],
    console: Any,
) -> int:
    """Train the jobs that ``DIR/compare-state.json`` does not call done, on this machine; how many were trained."""
    manifest = Manifest(out / MANIFEST)
    results.update({job: Run(**run) for job in jobs if (run := manifest.finished(job.key(overrides))) is not None})
    left = [job for job in jobs if job not in results]
    if results:
        console.print(
            f"{len(results)} of {len(jobs)} runs already done ({manifest.path}); training {len(left)}.",
            markup=False,
            soft_wrap=True,
        )
    fit_args = {job: resume_args(job, out, manifest, overrides) for job in left}

    def timed(job: Job) -> tuple[Run, float]:
        started = time.perf_counter()
        return train(job, fit_args[job]), time.perf_counter() - started

    def recorded(job: Job, outcome: tuple[Run, float]) -> None:
        run, seconds = outcome
        summaries = list((job.folder(out) / "fit").rglob(SUMMARY_FILE))
        newest = max(summaries, key=lambda path: path.stat().st_mtime, default=None)
        manifest.record(job.key(overrides), asdict(run), newest)
        finished(job, run, seconds)

    try:
        run_jobs(left, options.workers, timed, recorded)
    except KeyboardInterrupt:
        done = sum(1 for run in results.values() if not run.error)
        console.print(f"Stopped; {done} of {len(jobs)} runs are done. Run the same command again to go on.")
        raise
    return len(left)


def _parse_or_exit(argv: list[str]) -> tuple[RunOptions, list[Path], Path, list[str], str | None]:
    """(run options, configs, output folder, overrides, baseline name); a bad run option exits with status 2."""
    try:
        options, rest = split_run_options(argv)
        configs, out, overrides = parse_args(rest)
        names = run_names(configs)
        baseline = names[baseline_index(options.baseline, configs, names, options.seeds)] if options.baseline else None
    except CompareUsageError as error:
        sys.stderr.write(f"lit_nnopt: error: {error}\n")
        raise SystemExit(2) from None
    return options, configs, out, overrides, baseline


def _write_results(
    jobs: list[Job], results: dict[Job, Run], baseline: str | None, study: str, out: Path, command: str
) -> None:
    """The files of the runs finished so far, in the order of the jobs."""
    write_runs_table(study, [(job.seed, results[job]) for job in jobs if job in results], out / RUNS_TABLE)
    if all(job.seed is None for job in jobs):
        _write([results[job] for job in jobs if job in results], out, command)
        return
    from lit_nnopt.app.compare_seeds import write_seed_files

    write_seed_files(_groups(jobs, results), baseline, out, command)


def _groups(jobs: list[Job], results: dict[Job, Run]) -> dict[str, list[tuple[int, Run]]]:
    groups: dict[str, list[tuple[int, Run]]] = {}
    for job in jobs:
        if job in results:
            groups.setdefault(job.name, []).append((job.seed, results[job]))
    return groups


def _statistics_lines(jobs: list[Job], results: dict[Job, Run], baseline: str | None) -> list[str]:
    from lit_nnopt.app.compare_seeds import config_statistics, statistics_table

    by_config = {name: [run for _, run in runs] for name, runs in _groups(jobs, results).items()}
    return statistics_table(config_statistics(by_config, baseline), baseline)


def _write(runs: list[Run], out: Path, command: str) -> None:
    write_markdown(runs, out / "comparison.md", command)
    (out / "comparison.json").write_text(json.dumps([asdict(run) for run in runs], indent=2))
    plot(runs, out / "comparison.png")
