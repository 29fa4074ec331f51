"""The benchmark's lit_nnopt rows: ``configs/adam.yaml`` through lit_nnopt's CLI, as a user runs it.

``run_lit_nnopt`` is ``python -m lit_nnopt fit --config configs/adam.yaml`` with its defaults
(progress bar, checkpoints, logging) in a temporary folder; ``run_lit_nnopt_1_step`` the same with
one batch per Lightning step.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path

EXTRA_FIGURES: dict[str, float] = {}  # what a run measures besides its epoch times, for the runner's report


def adam_config() -> Path:
    """``configs/adam.yaml`` of the repository this package runs from, or of the working directory.

    Raises:
        SystemExit: neither has it, as for a package installed from a wheel.
    """
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / "configs" / "adam.yaml").is_file():
            return root / "configs" / "adam.yaml"
    raise SystemExit(
        "lit_nnopt bench: error: the benchmark trains configs/adam.yaml, which comes with a clone of the "
        "lit_nnopt repository, not with the installed package, and there is none beside this package or in "
        f"the working directory ({Path.cwd()}). Run it from the root of a clone."
    )


def run_lit_nnopt(
    data_dir: str, epochs: int, accelerator: str = "cpu", limit_batches: int | None = None, *overrides: str
) -> list[float]:
    """``python -m lit_nnopt fit --config configs/adam.yaml`` with its defaults: progress bar, checkpoints, logging."""
    import lightning.pytorch as pl

    from lit_nnopt.app.cli import LitNNOptCLI
    from lit_nnopt.app.reports import RunSummary

    class FirstStepClock(pl.Callback):
        at = 0.0

        def on_train_batch_start(self, *args: object) -> None:
            self.at = self.at or time.time()

    clock = FirstStepClock()
    limit = ["--trainer.limit_train_batches", str(limit_batches)] if limit_batches else []
    with tempfile.TemporaryDirectory() as root:
        cli = LitNNOptCLI(
            args=[
                "fit",
                "--config",
                str(adam_config()),
                "--data.data_dir",
                data_dir,
                "--trainer.max_epochs",
                str(epochs),
                "--trainer.default_root_dir",
                root,
                "--trainer.accelerator",
                accelerator,
                "--trainer.devices",
                "1",
                *limit,
                *overrides,
            ],
            trainer_defaults={"callbacks": [clock]},
        )
        history = next(cb for cb in cli.trainer.callbacks if isinstance(cb, RunSummary)).history
    EXTRA_FIGURES["first_step_at"] = clock.at
    stamps = [0.0] + [row["elapsed_seconds"] for row in history]
    return [b - a for a, b in itertools.pairwise(stamps)]


def run_lit_nnopt_1_step(
    data_dir: str, epochs: int, accelerator: str = "cpu", limit_batches: int | None = None
) -> list[float]:
    """The same, with Lightning's own loop taking one batch per training step."""
    return run_lit_nnopt(data_dir, epochs, accelerator, limit_batches, "--trainer.callbacks.steps", "1")
