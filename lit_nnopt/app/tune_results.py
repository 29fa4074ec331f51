"""What ``tune`` writes from its study: the best config, the trials' table and the search's plots.

Written after every ``tune`` (finished, stopped or failed), from the study alone, so that a
machine that ran none of the trials writes the same files as one that ran them all.
"""

from __future__ import annotations

import csv
import datetime
from pathlib import Path
from typing import Any

from lit_nnopt.app.machine import machine_line
from lit_nnopt.app.search_space import resolved_config
from lit_nnopt.app.trial_report import PRUNED_AT_EPOCH

BEST_CONFIG = "best.yaml"
TRIALS_TABLE = "trials.csv"
REPORT = "tune.md"
HISTORY_PLOT = "history.png"
IMPORTANCE_PLOT = "importance.png"
_TOP_TRIALS = 10


def write_results(search: Any, command: str) -> None:
    """``trials.csv``, ``best.yaml``, ``tune.md`` and the plots of ``search``'s study, in its output folder."""
    import optuna

    study, out = search.study, search.out
    trials = study.get_trials(deepcopy=False)
    _write_trials_table(search, trials, out / TRIALS_TABLE)
    complete = [trial for trial in trials if trial.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda trial: trial.value, default=None)
    if best is not None:
        _write_best_config(search, best, out / BEST_CONFIG)
    plots = _write_plots(study, complete, out, f"best {search.options.monitor}")
    _write_report(search, trials, best, plots, command, out / REPORT)
    lines = [f"{len(complete)} complete trials, {_count(trials, 'PRUNED')} pruned, {_count(trials, 'FAIL')} failed."]
    if best is not None:
        lines += [
            f"Best: trial {best.number}, {search.options.monitor} {best.value:.4f}, {_params_text(search, best)}.",
            f"Train it: python -m lit_nnopt fit --config {out / BEST_CONFIG}",
        ]
    lines.append(f"Wrote {out / TRIALS_TABLE}, {out / REPORT}{''.join(f', {out / plot}' for plot in plots)}.")
    search.console.print("\n".join(lines), markup=False, soft_wrap=True)


def _count(trials: list[Any], state: str) -> int:
    return sum(1 for trial in trials if trial.state.name == state)


def _params(search: Any, trial: Any) -> dict[str, Any]:
    """A trial's parameters as ``fit`` takes them (lists decoded), in the search space's order."""
    return {
        dimension.option: dimension.decode(trial.params[dimension.option])
        for dimension in search.dimensions
        if dimension.option in trial.params
    }


def _params_text(search: Any, trial: Any) -> str:
    return ", ".join(f"{option}={value}" for option, value in _params(search, trial).items())


def _write_trials_table(search: Any, trials: list[Any], path: Path) -> None:
    options = [dimension.option for dimension in search.dimensions]
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(
            ["study", "trial", "state", search.options.monitor, *options]
            + ["epochs_run", PRUNED_AT_EPOCH, "seconds", "folder"]
        )
        for trial in trials:
            params = _params(search, trial)
            seconds = trial.duration.total_seconds() if trial.duration else None
            writer.writerow(
                [
                    search.options.study,
                    trial.number,
                    trial.state.name,
                    trial.value,
                    *(params.get(option) for option in options),
                    trial.user_attrs.get("epochs_run"),
                    trial.user_attrs.get(PRUNED_AT_EPOCH),
                    f"{seconds:.1f}" if seconds is not None else None,
                    trial.user_attrs.get("folder"),
                ]
            )


def _write_best_config(search: Any, best: Any, path: Path) -> None:
    """The best trial's whole config, as ``fit --print_config`` resolves it, with a header saying where it came from."""
    resolved = resolved_config(search.options.config, [], _params(search, best))
    if resolved.returncode != 0:
        search.console.print(f"Could not write {path}: {resolved.stderr.strip()}", markup=False, style="red")
        return
    header = (
        f"# The best of `tune` study `{search.options.study}` on {search.options.config}: trial {best.number}, "
        f"{search.options.monitor} {best.value:.4f}\n# with {_params_text(search, best)}.\n"
        "# Train it with: python -m lit_nnopt fit --config " + str(path) + "\n"
    )
    written = path.with_suffix(".tmp")
    written.write_text(header + resolved.stdout)
    written.replace(path)


def _write_plots(study: Any, complete: list[Any], out: Path, value_name: str) -> list[str]:
    """The search history and, with two or more complete trials, each parameter's importance; the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    written = []
    if not complete:
        return written
    axes = plot_optimization_history(study, target_name=value_name)
    axes.figure.savefig(out / HISTORY_PLOT, dpi=110, bbox_inches="tight")
    plt.close(axes.figure)
    written.append(HISTORY_PLOT)
    if len(complete) >= 2 and len({tuple(sorted(trial.params.items())) for trial in complete}) >= 2:
        axes = plot_param_importances(study, target_name=value_name)
        axes.figure.savefig(out / IMPORTANCE_PLOT, dpi=110, bbox_inches="tight")
        plt.close(axes.figure)
        written.append(IMPORTANCE_PLOT)
    return written


def _write_report(search: Any, trials: list[Any], best: Any | None, plots: list[str], command: str, path: Path) -> None:
    monitor = search.options.monitor
    lines = [
        f"# tune: study `{search.options.study}` on {search.options.config}",
        "",
        f"- Command: `{command}`",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {machine_line()}",
        f"- Trials: {_count(trials, 'COMPLETE')} complete, {_count(trials, 'PRUNED')} pruned, "
        f"{_count(trials, 'FAIL')} failed (of {search.options.trials} asked)",
    ]
    if best is not None:
        lines.append(f"- Best: trial {best.number}, {monitor} {best.value:.4f}: {_params_text(search, best)}")
        lines.append(f"- Best config: `{BEST_CONFIG}`")
    lines += ["", *(f"![{plot}]({plot})" for plot in plots), ""]
    ranked = sorted((trial for trial in trials if trial.state.name == "COMPLETE"), key=lambda trial: -trial.value)
    options = [dimension.option for dimension in search.dimensions]
    lines += [f"## The {min(_TOP_TRIALS, len(ranked))} best complete trials", ""]
    lines += [f"| trial | {monitor} | " + " | ".join(options) + " |", "|---|---|" + "---|" * len(options)]
    for trial in ranked[:_TOP_TRIALS]:
        params = _params(search, trial)
        cells = [str(trial.number), f"{trial.value:.4f}", *(str(params.get(option)) for option in options)]
        lines.append("| " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")
