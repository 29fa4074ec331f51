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

SUMMARY_FILE = "summary.json"


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


class RunSummary(pl.Callback):
    """Records each epoch's metrics and writes ``summary.json`` after ``fit`` and ``test``.

    The history holds, per epoch, every metric logged on epoch level (``train_*``, ``val_*``,
    learning rates). The summary adds the final and best values, the best epoch by the
    checkpoint's monitored metric (``val_acc`` by default), epochs run, wall time, why
    training stopped and the library versions, and whatever other callbacks add with
    :meth:`record` (``TrainingClock``'s figures). Written by rank zero into the trainer's
    ``log_dir``, and printed as a table.
    """

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []
        self.fit_seconds = 0.0
        self._fit_started = 0.0
        self.summary: dict[str, Any] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {name: _plain(value) for name, value in trainer.callback_metrics.items()}
        elapsed = round(time.perf_counter() - self._fit_started, 4)
        self.history.append({"epoch": trainer.current_epoch, "elapsed_seconds": elapsed, **metrics})

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_seconds = time.perf_counter() - self._fit_started
        self._write(trainer, "fit", Path(trainer.log_dir or trainer.default_root_dir))

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, "test", Path(trainer.log_dir or trainer.default_root_dir))

    def record(self, name: str, value: Any) -> None:
        """Adds ``name: value`` to the summary this callback writes next: how other callbacks report figures."""
        self.summary[name] = value

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))

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
                    "monitor": monitor,
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
        if isinstance(callback, EarlyStopping) and (message or callback.stopped_epoch):
            message = message or f"{callback.monitor} stopped improving"
            return f"early stopping at epoch {callback.stopped_epoch}: {message}"
        if message:
            return f"{type(callback).__name__} at epoch {trainer.current_epoch}: {message}"
    if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
        return f"max_steps ({trainer.max_steps}) reached"
    if trainer.should_stop:
        return "stopped by a callback"
    return f"max_epochs ({trainer.max_epochs}) reached"


def print_summary(summary: dict[str, Any], path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lit_nnopt results ({path})")
    table.add_column("metric")
    table.add_column("final", justify="right")
    table.add_column(f"best (epoch {summary.get('best_epoch')})" if "best" in summary else "best", justify="right")
    best = summary.get("best", {})
    for name in sorted(summary.get("final", {})):
        table.add_row(name, _fmt(summary["final"][name]), _fmt(best.get(name)))
    for key in ("epochs_run", "wall_seconds", "stop_reason"):
        if key in summary:
            table.add_row(key, _fmt(summary[key]), "")
    Console().print(table)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 else f"{value:.3e}"
    return str(value)
