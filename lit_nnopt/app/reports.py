"""What a run leaves behind for people: ``summary.json`` and a Rich table of the results."""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from lit_nnopt.callbacks import EarlyStopping as LitEarlyStopping

SUMMARY_FILE = "summary.json"
# A run "stayed at chance" when its best validation accuracy stays below this multiple of
# 1 / num_classes. A model that predicts one class scores 1 / num_classes on balanced data
# (MNIST's most frequent digit, 1, is about 11% of its images); a model that learnt anything
# at all, even in a handful of steps, is far above 1.5 times that (0.15 for ten classes).
CHANCE_MARGIN = 1.5
# Fewer optimizer steps than this (a smoke run: `fast_dev_run`, a few `limit_train_batches`)
# are too few to expect learning: such a run is not judged on its accuracy.
MIN_STEPS_TO_JUDGE = 50
# What `status` in summary.json says, and what the CLI's exit status 3 means.
OK, DIVERGED, AT_CHANCE = "ok", "diverged", "at_chance"
# The exit status of a `fit` that ran to its end without learning: scripts can tell it from a success (0)
# and from an error (1, 2) or an interrupt (130, 143).
DID_NOT_LEARN_EXIT = 3


def library_versions() -> dict[str, str]:
    import lightning
    import torchmetrics

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "torchmetrics": torchmetrics.__version__,
    }


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _non_finite_losses(metrics: dict[str, Any]) -> list[str]:
    names = []
    for name, value in metrics.items():
        number = value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
        if "loss" in name and isinstance(number, float) and not math.isfinite(number):
            names.append(name)
    return sorted(names)


def run_health(history: list[dict[str, Any]], num_classes: int = 10, steps: int | None = None) -> dict[str, Any]:
    """Whether a fit learnt anything: ``status`` ok, diverged or at_chance, and in words why.

    ``diverged``: a loss logged on epoch level was NaN or infinite at the end of some epoch
    (``problem_epoch``, the first). ``at_chance``: no validation accuracy (``val_acc``)
    reached :data:`CHANCE_MARGIN` / ``num_classes``. A history without ``val_acc``, or a fit of
    fewer than :data:`MIN_STEPS_TO_JUDGE` optimizer steps, is not judged on accuracy.

    Args:
        history: one dict per epoch, as :class:`RunSummary` records it (``non_finite`` names
            the losses that were not finite; their values are stored as None).
        num_classes: the classes of the task; chance accuracy is ``1 / num_classes``.
        steps: the optimizer steps the fit took; None if unknown (judged as a long fit).
    """
    for row in history:
        if row.get("non_finite"):
            names = ", ".join(row["non_finite"])
            return {
                "status": DIVERGED,
                "problem_epoch": row["epoch"],
                "problem": f"{names} became NaN or infinite in epoch {row['epoch']}",
            }
    accuracies = [row["val_acc"] for row in history if row.get("val_acc") is not None]
    threshold = CHANCE_MARGIN / num_classes
    long_enough = steps is None or steps >= MIN_STEPS_TO_JUDGE
    if accuracies and long_enough and max(accuracies) < threshold:
        return {
            "status": AT_CHANCE,
            "problem_epoch": None,
            "problem": (
                f"val_acc stayed at chance: at most {max(accuracies):.4f} in {len(accuracies)} validation(s), "
                f"under {threshold:.2f} ({CHANCE_MARGIN} / {num_classes} classes)"
            ),
        }
    return {"status": OK, "problem_epoch": None, "problem": None}


def did_not_learn_message(
    summary: dict[str, Any], lr: float | None = None, num_classes: int = 10, suggest_nan_guard: bool = True
) -> str:
    """The paragraph that ends a ``fit`` whose ``summary.json`` says it diverged or stayed at chance.

    For a run at chance the advice follows its last ``train_loss``: above 1.5 times that of a
    uniform guess (``ln(num_classes)``, 2.30 for ten classes) the steps overshoot, so the
    learning rate is too high; near it the network has not moved from a guess yet.

    Args:
        summary: the fit's summary, with ``status``, ``problem`` and ``history``.
        lr: the optimizer's learning rate, named in the advice.
        num_classes: the classes of the task.
        suggest_nan_guard: name ``NaNGuard`` as a remedy (not where the run had one).
    """
    this_lr = f" (this run's: {lr:g})" if isinstance(lr, (int, float)) else ""
    if summary.get("status") == DIVERGED:
        verdict = f"this run diverged: {summary.get('problem')}"
        advice = f"Lower the learning rate{this_lr}."
        if suggest_nan_guard:
            advice = (
                f"Lower the learning rate{this_lr}, or add NaNGuard, which goes back to the last good weights and "
                "cuts the lr when the loss is not finite: "
                "`--trainer.callbacks+=lit_nnopt.callbacks.NaNGuard --trainer.callbacks.lr_factor 0.1`."
            )
    else:
        losses = [row["train_loss"] for row in summary.get("history", []) if row.get("train_loss") is not None]
        guess = math.log(num_classes)
        last = f"train_loss {losses[-1]:.4g} at the end, " if losses else ""
        verdict = f"this run did not learn: {summary.get('problem')}"
        if losses and losses[-1] > CHANCE_MARGIN * guess:
            advice = f"Its {last}far above a uniform guess's {guess:.2f}, says the learning rate{this_lr} is too high."
        else:
            advice = (
                f"Its {last}near a uniform guess's {guess:.2f}, says the network has not moved from a guess: "
                f"train for more steps, or raise a learning rate{this_lr} too low to move it."
            )
    return (
        f"lit_nnopt: {verdict}. Its checkpoints hold no trained model: none is offered for testing, and "
        f"`--ckpt_path best` passes this run over. {advice} (Exit status {DID_NOT_LEARN_EXIT}.)"
    )


class RunSummary(pl.Callback):
    """Records each epoch's metrics and writes ``summary.json`` after ``fit`` and ``test``.

    The history holds, per epoch, every metric logged on epoch level (``train_*``, ``val_*``,
    learning rates), the seconds since ``fit`` started (``elapsed_seconds``) and, where a
    loss was NaN or infinite, its name under ``non_finite``. The summary adds the final and
    best values, the best epoch by the checkpoint's monitored metric (``val_acc`` by default),
    epochs run, wall time, why training stopped, whether the run learnt (``status``: ok,
    diverged or at_chance, see :func:`run_health`) and the library versions, and whatever
    other callbacks add with :meth:`record` (``TrainingClock``'s figures). Written by rank zero
    into the trainer's ``log_dir``, and printed as a table.

    The history and the seconds already trained are kept in checkpoints: after a resume,
    ``elapsed_seconds`` and ``wall_seconds`` go on from where the interrupted run stopped.

    Args:
        num_classes: the classes of the task, for the at-chance verdict (MNIST and
            Fashion-MNIST: 10).
    """

    def __init__(self, num_classes: int = 10) -> None:
        if num_classes < 2:
            raise ValueError(f"`num_classes` must be at least 2, got {num_classes}.")
        self.num_classes = num_classes
        self.history: list[dict[str, Any]] = []
        self.fit_seconds = 0.0
        self._seconds_before = 0.0  # trained before this process, by the run it resumes
        self._fit_started = 0.0
        self.summary: dict[str, Any] = {}

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_started = time.perf_counter()

    def _elapsed(self) -> float:
        """Seconds of ``fit`` so far, the resumed run's included."""
        running = time.perf_counter() - self._fit_started if self._fit_started else 0.0
        return self._seconds_before + running

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {name: _plain(value) for name, value in trainer.callback_metrics.items()}
        row = {"epoch": trainer.current_epoch, "elapsed_seconds": round(self._elapsed(), 4), **metrics}
        non_finite = _non_finite_losses(dict(trainer.callback_metrics))
        if non_finite:
            row["non_finite"] = non_finite
        self.history.append(row)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_seconds = self._elapsed()
        self._write(trainer, "fit", Path(trainer.log_dir or trainer.default_root_dir))

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, "test", Path(trainer.log_dir or trainer.default_root_dir))

    def record(self, name: str, value: Any) -> None:
        """Adds ``name: value`` to the summary this callback writes next: how other callbacks report figures."""
        self.summary[name] = value

    @override
    def state_dict(self) -> dict[str, Any]:
        # Read while a checkpoint is saved: the seconds trained up to that moment.
        return {"history": self.history, "elapsed_seconds": self._elapsed()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        # Checkpoints written before the seconds were saved: the last epoch's figure is the best estimate.
        last = self.history[-1].get("elapsed_seconds") if self.history else None
        self._seconds_before = float(state_dict.get("elapsed_seconds", last or 0.0))

    def build(self, trainer: pl.Trainer, stage: str) -> dict[str, Any]:
        checkpoint = trainer.checkpoint_callback if isinstance(trainer.checkpoint_callback, ModelCheckpoint) else None
        monitor = (checkpoint.monitor if checkpoint else None) or "val_acc"
        mode = checkpoint.mode if checkpoint else "max"
        final = {name: _plain(value) for name, value in trainer.callback_metrics.items()}
        summary: dict[str, Any] = dict(self.summary)
        summary.update({"stage": stage, "final": {**summary.get("final", {}), **final}, "versions": library_versions()})
        if stage == "fit":
            scored = [row for row in self.history if row.get(monitor) is not None]
            best_row = (max if mode == "max" else min)(scored, key=lambda row: row[monitor], default=None)
            summary.update(
                {
                    **run_health(self.history, self.num_classes, 0 if trainer.fast_dev_run else trainer.global_step),
                    "monitor": monitor,
                    "mode": mode,
                    "best_epoch": best_row["epoch"] if best_row else None,
                    "best": {k: v for k, v in (best_row or {}).items() if k != "epoch"},
                    "epochs_run": len(self.history),
                    "wall_seconds": round(self.fit_seconds, 3),
                    "seconds_per_epoch": round(self.fit_seconds / max(len(self.history), 1), 3),
                    "stop_reason": stop_reason(trainer),
                    "best_checkpoint": checkpoint.best_model_path if checkpoint else None,
                    "history": self.history,
                }
            )
        return summary

    @rank_zero_only
    def _write(self, trainer: pl.Trainer, stage: str, log_dir: Path) -> None:
        # log_dir is resolved by the caller on every rank: `trainer.log_dir` is a collective under DDP.
        self.summary = self.build(trainer, stage)
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / SUMMARY_FILE
        previous = _read_json(path)
        if stage == "test" and previous.get("stage") == "fit":
            previous["final"].update(self.summary["final"])
            self.summary = previous
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.summary, indent=2))
        tmp.replace(path)
        print_summary(self.summary, path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def stop_reason(trainer: pl.Trainer) -> str:
    """Why ``fit`` ended, in words."""
    if trainer.interrupted:
        return "interrupted"
    for callback in trainer.callbacks:
        message = getattr(callback, "stopping_reason_message", None)
        # lit_nnopt's EarlyStopping is a class of its own, not a subclass of Lightning's.
        if isinstance(callback, (EarlyStopping, LitEarlyStopping)) and (message or callback.stopped_epoch):
            message = message or f"{callback.monitor} stopped improving"
            return f"early stopping at epoch {callback.stopped_epoch}: {message}"
        if message:
            return f"{type(callback).__name__} at epoch {trainer.current_epoch}: {message}"
    if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
        return f"max_steps ({trainer.max_steps}) reached"
    if trainer.should_stop:
        return "stopped by a callback"
    return f"max_epochs ({trainer.max_epochs}) reached"


_OPTIMIZER_SETTINGS = ("-momentum", "-weight_decay")


def print_summary(summary: dict[str, Any], path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lit_nnopt results ({path})")
    table.add_column("metric")
    table.add_column("final", justify="right")
    table.add_column(f"best (epoch {summary.get('best_epoch')})" if "best" in summary else "best", justify="right")
    best = summary.get("best", {})
    for name in sorted(summary.get("final", {})):
        if name.startswith("lr-") and name.endswith(_OPTIMIZER_SETTINGS):
            continue  # LearningRateMonitor's momentum and weight decay: settings, not results (summary.json keeps them)
        table.add_row(name, _fmt(summary["final"][name]), _fmt(best.get(name)))
    for key in ("epochs_run", "wall_seconds", "stop_reason", "status"):
        if key in summary:
            table.add_row(key, _fmt(summary[key]), "")
    Console().print(table)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 else f"{value:.3e}"
    return str(value)
