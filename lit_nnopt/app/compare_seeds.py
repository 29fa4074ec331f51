"""What ``compare --seeds N`` (N > 1) writes: each config's statistics over its seeds, a table and a plot with bands.

``DIR/comparison.md`` gets one row per config (mean, standard deviation and 95% Student-t
interval of test accuracy and of best validation accuracy; against ``--baseline``, the
difference of means with its 95% interval and Welch's t-test p-value), then one row per run.
``DIR/statistics.json`` holds the same numbers unrounded; ``DIR/comparison.png`` draws each
config's mean validation curves with a band from the lowest to the highest seed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lit_nnopt.app.compare_results import COLUMNS, Run, cell
from lit_nnopt.app.machine import machine_line
from lit_nnopt.app.statistics import CONFIDENCE, describe, welch_test

STATISTICS_FILE = "statistics.json"
METRICS = (("test_acc", "test_acc"), ("best_val_acc", "best val_acc"))
PERCENT = 100.0


def config_statistics(groups: dict[str, list[Run]], baseline: str | None) -> list[dict[str, Any]]:
    """Per config, per metric: the description over its seeds and, against ``baseline``, Welch's test.

    Args:
        groups: each config's runs, by config name, in the table's order.
        baseline: the name of the config the others are compared with, or None.
    """
    rows = []
    for name, runs in groups.items():
        row: dict[str, Any] = {"config": name, "runs": len(runs)}
        for metric, _ in METRICS:
            values = _values(runs, metric)
            row[metric] = asdict(describe(values)) if values else None
            reference = _values(groups.get(baseline, []), metric) if baseline else []
            if baseline and name != baseline and len(values) >= 2 and len(reference) >= 2:
                row[f"{metric}_vs_baseline"] = asdict(welch_test(values, reference))
        rows.append(row)
    return rows


def _values(runs: Sequence[Run], metric: str) -> list[float]:
    """The metric of the runs that have it: a failed or untested run has no test_acc."""
    return [getattr(run, metric) for run in runs if getattr(run, metric) is not None and not run.error]


def _mean_sd(description: dict[str, Any] | None) -> str:
    if description is None:
        return ""
    if description["sd"] is None:
        return f"{PERCENT * description['mean']:.2f}%"
    return f"{PERCENT * description['mean']:.2f}% ± {PERCENT * description['sd']:.2f}"


def _interval(description: dict[str, Any] | None) -> str:
    if description is None or description["low"] is None:
        return ""
    return f"[{PERCENT * description['low']:.2f}%, {PERCENT * description['high']:.2f}%]"


def _difference(test: dict[str, Any] | None, is_baseline: bool) -> tuple[str, str]:
    if is_baseline:
        return "baseline", ""
    if test is None:
        return "", ""
    difference = f"{PERCENT * test['difference']:+.2f}"
    if test["low"] is None:
        return difference, "n/a (no spread)"
    return f"{difference} [{PERCENT * test['low']:+.2f}, {PERCENT * test['high']:+.2f}]", f"{test['p_value']:.3g}"


def statistics_table(statistics: list[dict[str, Any]], baseline: str | None) -> list[str]:
    """The per-config table as Markdown lines."""
    percent = f"{round(100 * CONFIDENCE)}%"
    header = ["config", "runs"]
    for _, title in METRICS:
        header += [f"{title} mean ± sd", f"{title} {percent} CI"]
    if baseline:
        for _, title in METRICS:
            header += [f"{title} − {baseline} (pp) [{percent} CI]", f"Welch's t-test p ({title})"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "--:|" * (len(header) - 1)]
    for row in statistics:
        cells = [row["config"], f"{row[METRICS[0][0]]['n'] if row[METRICS[0][0]] else 0}/{row['runs']}"]
        for metric, _ in METRICS:
            cells += [_mean_sd(row[metric]), _interval(row[metric])]
        if baseline:
            for metric, _ in METRICS:
                cells += list(_difference(row.get(f"{metric}_vs_baseline"), row["config"] == baseline))
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return lines


def runs_table(runs: Sequence[tuple[int, Run]]) -> list[str]:
    """One row per (seed, run), the columns of the single-seed table with the seed after the config."""
    header = ["config", "seed", *(title for key, title in COLUMNS[1:])]
    rule = "|---|--:|" + "|".join("---" if key == "stop_reason" else "--:" for key, _ in COLUMNS[1:]) + "|"
    rows = [
        "| "
        + " | ".join([run.config, str(seed), *(cell(run, key).replace("|", "\\|") for key, _ in COLUMNS[1:])])
        + " |"
        for seed, run in runs
    ]
    return ["| " + " | ".join(header) + " |", rule, *rows]


def write_seed_files(
    groups: dict[str, list[tuple[int, Run]]], baseline: str | None, out: Path, command: str
) -> list[dict[str, Any]]:
    """``comparison.md``, ``comparison.json``, ``statistics.json`` and ``comparison.png`` for several seeds."""
    by_config = {name: [run for _, run in runs] for name, runs in groups.items()}
    statistics = config_statistics(by_config, baseline)
    percent = f"{round(100 * CONFIDENCE)}%"
    note = (
        f"Means over each config's seeds (runs: those with a result / those trained); sd is the sample standard "
        f"deviation (n - 1); the {percent} CI of a mean is Student's t interval. "
    )
    if baseline:
        note += (
            f"Against the baseline {baseline}: the difference of means in percentage points with its {percent} "
            "interval, and the two-sided p-value of Welch's t-test (unequal variances, Welch-Satterthwaite degrees "
            "of freedom), as R's t.test gives them. "
        )
    note += "best val_acc is that of each run's best checkpoint, test_acc that checkpoint's accuracy on the test set."
    every_run = [pair for runs in groups.values() for pair in runs]
    (out / "comparison.md").write_text(
        "\n".join(
            [
                "# Comparison over seeds",
                "",
                f"Command: `{command}`  ",
                f"Machine: {machine_line()}",
                "",
                *statistics_table(statistics, baseline),
                "",
                note,
                "",
                "![mean validation accuracy and loss per epoch over seeds](comparison.png)",
                "",
                "## Each run",
                "",
                *runs_table(every_run),
                "",
            ]
        )
    )
    (out / "comparison.json").write_text(
        json.dumps([asdict(run) | {"seed": seed} for seed, run in every_run], indent=2)
    )
    (out / STATISTICS_FILE).write_text(json.dumps({"baseline": baseline, "configs": statistics}, indent=2))
    plot_bands(by_config, out / "comparison.png")
    return statistics


def _per_epoch(runs: Sequence[Run], metric: str) -> list[tuple[int, float, float, float]]:
    """(epoch, mean, lowest, highest) of ``metric`` over the runs that reached each epoch."""
    values: dict[int, list[float]] = {}
    for run in runs:
        for row in run.history:
            if row.get(metric) is not None:
                values.setdefault(row["epoch"], []).append(row[metric])
    return [(epoch, sum(v) / len(v), min(v), max(v)) for epoch, v in sorted(values.items())]


def plot_bands(groups: dict[str, list[Run]], path: Path) -> None:
    """Each config's mean validation accuracy and loss per epoch, with a min-max band over its seeds."""
    from lit_nnopt.app.figures import new_figure, save_validation_figure

    figure = new_figure(13, 4.5)
    accuracy, loss = figure.subplots(1, 2)
    for index, (name, runs) in enumerate(groups.items()):
        style = {"color": f"C{index % 10}", "linestyle": ("-", "--", "-.", ":")[index // 10 % 4]}
        label = f"{name}: mean of {len(runs)} seeds, band min–max"
        for axes, metric in ((accuracy, "val_acc"), (loss, "val_loss")):
            points = _per_epoch(runs, metric)
            if points:
                epochs, means, lows, highs = zip(*points, strict=True)
                axes.plot(epochs, means, marker="o", markersize=3, label=label, **style)
                axes.fill_between(epochs, lows, highs, color=style["color"], alpha=0.2, linewidth=0)
    save_validation_figure(figure, accuracy, loss, path)
