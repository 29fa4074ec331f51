"""A comparison's runs, and how they are shown: the table, its Markdown page and the plot."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_nnopt.app.machine import machine_line
from lit_nnopt.app.reports import OK

COLUMNS = (
    ("config", "config"),
    ("best_val_acc", "best val_acc"),
    ("final_val_acc", "final val_acc"),
    ("test_acc", "test_acc"),
    ("best_epoch", "best epoch"),
    ("epochs_run", "epochs"),
    ("stop_reason", "stop reason"),
    ("seconds_per_epoch", "s/epoch"),
)


@dataclass
class Run:
    """One config's outcome: the row of the table and the curves of the plot."""

    config: str
    path: str
    best_val_acc: float | None = None
    final_val_acc: float | None = None
    test_acc: float | None = None
    best_epoch: int | None = None
    epochs_run: int | None = None
    stop_reason: str | None = None
    seconds_per_epoch: float | None = None
    error: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    status: str | None = None  # summary.json's: ok, diverged or at_chance
    problem: str | None = None


RUNS_TABLE = "runs.csv"
_RUNS_TABLE_COLUMNS = ("study", "config", "seed", *(key for key, _ in COLUMNS[1:]), "status", "error", "path")


def write_runs_table(study: str, runs: list[tuple[int | None, Run]], path: Path) -> None:
    """One row per run, with its ``study`` (as every logger of the run has it) and seed: ``DIR/runs.csv``."""
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(_RUNS_TABLE_COLUMNS)
        for seed, run in runs:
            values = {"study": f"{study}/{run.config}", "seed": seed, **vars(run)}
            writer.writerow([values.get(column) for column in _RUNS_TABLE_COLUMNS])


def cell(run: Run, key: str) -> str:
    if key == "stop_reason" and run.error:
        return f"FAILED: {run.error}"
    if key == "stop_reason" and run.status not in (None, OK):
        return f"{run.status.upper().replace('_', ' ')}: {run.problem} (not tested)"
    value = getattr(run, key)
    if value is None:
        return ""
    if key.endswith("acc"):
        return f"{100 * value:.2f}%"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def write_markdown(runs: list[Run], path: Path, command: str) -> None:
    """The table as Markdown, with the command and the machine that produced it."""
    header = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|" + "|".join("---" if key in ("config", "stop_reason") else "--:" for key, _ in COLUMNS) + "|"
    rows = ["| " + " | ".join(cell(run, key).replace("|", "\\|") for key, _ in COLUMNS) + " |" for run in runs]
    path.write_text(
        "\n".join(
            [
                "# Comparison",
                "",
                f"Command: `{command}`  ",
                f"Machine: {machine_line()}",
                "",
                header,
                rule,
                *rows,
                "",
                (
                    "best val_acc and best epoch are those of the best checkpoint (by the checkpoint's monitor, "
                    "val_acc by default); test_acc is that checkpoint's accuracy on the test set. Epochs count "
                    "from 0, as in checkpoint names. A run that DIVERGED (a NaN or infinite loss) or stayed AT "
                    "CHANCE (val_acc under 1.5 / 10 classes) says so under stop reason and is not tested."
                ),
                "",
                "![validation accuracy and loss per epoch](comparison.png)",
                "",
            ]
        )
    )


def plot(runs: list[Run], path: Path) -> None:
    """Validation accuracy and loss per epoch, one line per config, side by side, one legend."""
    from lit_nnopt.app.figures import new_figure, save_validation_figure

    figure = new_figure(13, 4.5)
    accuracy, loss = figure.subplots(1, 2)
    for index, run in enumerate(runs):
        # Ten colours, then the same ten dashed, and so on: every run stays distinguishable.
        style = {"color": f"C{index % 10}", "linestyle": ("-", "--", "-.", ":")[index // 10 % 4]}
        for axes, metric in ((accuracy, "val_acc"), (loss, "val_loss")):
            points = [(row["epoch"], row[metric]) for row in run.history if row.get(metric) is not None]
            if points:
                axes.plot(*zip(*points, strict=True), marker="o", markersize=3, label=run.config, **style)
    save_validation_figure(figure, accuracy, loss, path)


_UNWRAPPED_WIDTH = 200


def print_table(runs: list[Run]) -> None:
    """The table on the terminal, failed configs in red."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="lit_nnopt compare")
    for key, title in COLUMNS:
        if key == "stop_reason":  # often long, an error message at times: it gets the room that is left
            table.add_column(title, ratio=1, overflow="fold")
        elif key == "config":
            table.add_column(title, overflow="fold")
        else:
            table.add_column(title.replace(" ", "\n"), justify="right", no_wrap=True)
    for run in runs:
        # Text, not markup: an error message or a path may hold "[...]".
        failed = run.error or run.status not in (None, OK)
        table.add_row(*(Text(cell(run, key)) for key, _ in COLUMNS), style="red" if failed else None)
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Rich lays out for 80 columns off a terminal (a log file, CI): a row per line reads better there.
        console = Console(width=_UNWRAPPED_WIDTH)
    console.print(table)
