"""Make a resumed run go on bitwise as the uninterrupted one: random generators and the epoch's partial metrics."""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torchmetrics import Metric
from typing_extensions import override

from lit_nnopt._host import Callback


class ExactResume(Callback):
    """Put into every checkpoint what Lightning leaves out, so a run resumed mid-epoch ends as if never stopped.

    The callback's state holds torch's, CUDA's and Python's random-number generators and, when
    saved during a training epoch, the epoch's partial metrics as public APIs give them: the
    states of the module's torchmetrics ``Metric`` objects (the names declared with
    ``add_state``) and ``trainer.callback_metrics``. They are put back before the first batch
    after a resume, so dropout draws the same masks and the resumed epoch's metrics cover the
    whole epoch. With a data loader that resumes at the next batch (lit_nnopt's
    ``BatchLoader``), a single-process run resumed from a mid-epoch checkpoint ends bitwise
    equal to an uninterrupted one.

    **What the module must do** for its epoch metrics to resume exactly: log them as torchmetrics
    ``Metric`` objects, updated in each step and handed to ``self.log`` (``self.train_loss.update(loss)``,
    then ``self.log("train_loss", self.train_loss, on_epoch=True)``), as lit_nnopt's
    ``MNISTClassifier`` does. A value logged as a plain tensor with ``on_epoch=True`` is averaged by
    Lightning in its own private results, which no public API reads or writes: after a mid-epoch
    resume that epoch's value covers only the batches after the resume. The weights are bitwise
    the same either way.

    Not saved: NumPy's generator; under DDP, the epoch's metrics (each rank holds its own share,
    a checkpoint only rank 0's), so there an epoch resumed midway reports the metrics of the
    batches after the resume, as with Lightning alone.

    :class:`~lit_nnopt.callbacks.InterruptCheckpoint` is an ``ExactResume`` already; use one of
    the two.

    Raises:
        MisconfigurationException: when fit starts with two of them (each would put the saved
            state back once).

    Example::

        >>> import lightning.pytorch as pl
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> from lit_nnopt.callbacks import ExactResume
        >>> trainer = pl.Trainer(max_steps=2, callbacks=[ExactResume()], logger=False, enable_checkpointing=False,
        ...     enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
        >>> trainer.fit(BoringModel())
        >>> sorted(trainer.callbacks[0].state_dict())
        ['rng']
    """

    def __init__(self) -> None:
        self._trainer: pl.Trainer | None = None
        self._to_restore: dict[str, Any] | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        others = [c for c in trainer.callbacks if isinstance(c, ExactResume) and c is not self]
        if others:
            names = ", ".join(type(callback).__name__ for callback in [self, *others])
            raise MisconfigurationException(
                f"The callbacks hold {names}: each restores the random generators and the epoch's partial"
                " metrics, which must happen once. Keep one (InterruptCheckpoint includes ExactResume)."
            )
        self._trainer = trainer  # state_dict() takes no trainer, and needs it

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = None

    @override
    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        state: dict[str, Any] = {"rng": _rng_state()}
        if trainer is not None and trainer.training and not trainer.sanity_checking and trainer.world_size == 1:
            state["partial_epoch"] = _partial_epoch(trainer)
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state, self._to_restore = self._to_restore, None
        if not state:
            return
        _set_rng_state(state.get("rng") or {})
        partial = state.get("partial_epoch")
        if partial and partial["epoch"] == trainer.current_epoch:
            for name, metric_state in partial["metrics"].items():
                _set_metric_state(pl_module.get_submodule(name), metric_state)
            trainer.callback_metrics.update(partial["callback_metrics"])


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch.cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "torch.cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch.cuda"])


def _partial_epoch(trainer: pl.Trainer) -> dict[str, Any]:
    metrics = {
        name: {state: _cpu_copy(value) for state, value in module.metric_state.items()}
        for name, module in trainer.lightning_module.named_modules()
        if isinstance(module, Metric)
    }
    return {
        "epoch": trainer.current_epoch,
        "metrics": metrics,
        "callback_metrics": {name: _cpu_copy(value) for name, value in trainer.callback_metrics.items()},
    }


def _cpu_copy(value: Any) -> Any:
    if isinstance(value, list):
        return [_cpu_copy(item) for item in value]
    return value.detach().cpu().clone() if isinstance(value, torch.Tensor) else value


def _set_metric_state(metric: Metric, state: dict[str, Any]) -> None:
    device = metric.device
    for name, value in state.items():
        setattr(metric, name, [item.to(device) for item in value] if isinstance(value, list) else value.to(device))
