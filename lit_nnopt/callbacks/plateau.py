"""Keras' ReduceLROnPlateau as a Lightning callback: no ``configure_optimizers`` change, no ``monitor`` wiring."""

from __future__ import annotations

import logging
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from typing_extensions import override

from lit_nnopt._host import Callback
from lit_nnopt.callbacks._shared import check_lr_schedulers, scale_lr
from lit_nnopt.callbacks.monitor import MonitorMixin, resolve_check_on_train_epoch_end, resolve_mode, state_key_of

log = logging.getLogger(__name__)

_MIN_DELTA_MODES = ("absolute", "relative")


class ReduceLROnPlateau(MonitorMixin, Callback):
    """Multiply the learning rate by ``factor`` when a metric has not improved for ``patience`` checks.

    Keras' semantics and argument names, with the improvement test, ``mode="auto"`` and the
    defaults of :class:`~lit_nnopt.callbacks.EarlyStopping`. The metric is read where Lightning's
    EarlyStopping reads it (see ``check_on_train_epoch_end``), in its own dtype and the same on
    every DDP rank, and the lr of every parameter group of every optimizer is reduced. Each
    reduction is kept in ``reductions`` (and logged with ``verbose``).

    With an LR scheduler on the same optimizer, a reduction scales the schedule: the scheduler's
    ``base_lrs`` are multiplied by the same ratio as the group's lr, so StepLR, MultiStepLR,
    ExponentialLR, LambdaLR, MultiplicativeLR, ConstantLR, LinearLR, PolynomialLR and cosine
    annealing go on with their schedule ``factor`` times lower (cosine annealing with
    ``eta_min > 0`` keeps annealing towards its ``eta_min``). Schedulers that set the lr from
    their own fields (OneCycleLR, CyclicLR, SequentialLR, ChainedScheduler, torch's
    ReduceLROnPlateau) would undo the reduction; the callback refuses them when fit starts.

    Args:
        monitor: the metric to watch.
        factor: ``new_lr = lr * factor``, in (0, 1).
        patience: checks without improvement after which the lr is reduced.
        mode: ``"min"``, ``"max"``, or ``"auto"``: from the metric's name (``loss``, ``error``,
            ... -> min; ``acc``, ``auc``, ``f1``, ... -> max); a name that tells neither is
            refused, with the ``mode`` to pass.
        min_delta: a change of at most this is not an improvement (Keras' default is 1e-4).
        min_delta_mode: ``"absolute"`` (Keras): improve on the best by more than ``min_delta``;
            ``"relative"``: by more than ``min_delta * |best|``.
        cooldown: as Keras: after a reduction, the counter of checks without improvement stays
            at 0 until ``cooldown`` checks have passed, the last of which counts again (so
            ``cooldown=1`` changes nothing; torch's scheduler skips ``cooldown`` whole checks).
        min_lr: lower bound of the lr; one float for all parameter groups or a list with one
            per group (groups of the first optimizer first). A group at its bound is left as is.
        verbose: log each reduction.
        strict: fail when ``monitor`` is not among the logged metrics; else skip that check.
        check_on_train_epoch_end: check at the end of the training epoch (``True``), when the
            epoch's training aggregates are known, or after each validation (``False``).
            ``None`` picks as Lightning's EarlyStopping: at the epoch's end when validation runs
            once per epoch; always at the epoch's end without validation.

    Raises:
        ValueError: for an argument out of range.
        MisconfigurationException: for an unknown ``mode``, or ``"auto"`` with a name that tells no
            direction; when fit starts, if ``min_lr`` has the wrong length or the optimizer has a
            scheduler that would undo the reductions.

    Example::

        >>> import lightning.pytorch as pl
        >>> import torch
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> from lit_nnopt.callbacks import ReduceLROnPlateau
        >>> class ScriptedLoss(BoringModel):
        ...     def on_validation_epoch_end(self):
        ...         self.log("val_loss", [0.9, 0.8, 0.85, 0.86][self.current_epoch])
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> plateau = ReduceLROnPlateau("val_loss", factor=0.5, patience=2)
        >>> trainer = pl.Trainer(max_epochs=4, callbacks=[plateau], limit_train_batches=2, limit_val_batches=1,
        ...     logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(ScriptedLoss())
        >>> [(r["epoch"], r["old_lr"], r["new_lr"]) for r in plateau.reductions]
        [(3, 0.1, 0.05)]
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        mode: Literal["auto", "min", "max"] = "auto",
        min_delta: float = 0.0,
        min_delta_mode: Literal["absolute", "relative"] = "absolute",
        cooldown: int = 0,
        min_lr: float | list[float] = 0.0,
        verbose: bool = False,
        strict: bool = True,
        check_on_train_epoch_end: bool | None = None,
    ) -> None:
        if min_delta_mode not in _MIN_DELTA_MODES:
            raise ValueError(f"`min_delta_mode` can be {', '.join(_MIN_DELTA_MODES)}, got {min_delta_mode!r}.")
        if not 0.0 < factor < 1.0:
            raise ValueError(f"`factor` must be between 0 and 1 (exclusive): new_lr = lr * factor. Got {factor}.")
        if patience < 0:
            raise ValueError(
                f"`patience` must be >= 0, got {patience}: it counts the checks without improvement to wait for."
            )
        for name, value in (("cooldown", cooldown), ("min_delta", min_delta)):
            if value < 0:
                raise ValueError(f"`{name}` must be >= 0, got {value}.")
        floors = min_lr if isinstance(min_lr, list) else [min_lr]
        if any(floor < 0 for floor in floors):
            raise ValueError(f"`min_lr` must be >= 0, got {min_lr}.")
        self.monitor = monitor
        self.mode = resolve_mode(monitor, mode, "ReduceLROnPlateau")
        self.min_delta = min_delta if self.mode == "max" else -min_delta  # signed, as Lightning and Keras
        self.factor = factor
        self.patience = patience
        self.min_delta_mode = min_delta_mode
        self.cooldown = cooldown
        self.min_lr = min_lr
        self.verbose = verbose
        self.strict = strict
        self._check_on_train_epoch_end = check_on_train_epoch_end
        self.best_score = self._initial_best()
        self.wait = 0
        self.cooldown_counter = 0
        self.reductions: list[dict[str, Any]] = []

    @property
    @override
    def state_key(self) -> str:
        return state_key_of(self, monitor=self.monitor, mode=self.mode)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._check_on_train_epoch_end = resolve_check_on_train_epoch_end(trainer, self._check_on_train_epoch_end)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_lr_schedulers(trainer, "ReduceLROnPlateau")
        self._floors(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (self._check_on_train_epoch_end or not trainer.enable_validation) and not self._skip(trainer):
            self._check(trainer)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._check_on_train_epoch_end and not self._skip(trainer):
            self._check(trainer)

    @staticmethod
    def _skip(trainer: pl.Trainer) -> bool:
        return trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking

    def _check(self, trainer: pl.Trainer) -> None:
        current = self._monitored_value(trainer)
        if current is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._is_improvement(current, self.best_score):
            self.best_score = current
            self.wait = 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience and self._reduce(trainer):
                self.cooldown_counter = self.cooldown
                self.wait = 0

    @override
    def _delta(self, reference: Tensor) -> float | Tensor:
        return self.min_delta * reference.abs() if self.min_delta_mode == "relative" else self.min_delta

    def _reduce(self, trainer: pl.Trainer) -> bool:
        """Reduce every group's lr not yet at its floor; whether any was reduced."""
        floors = iter(self._floors(trainer))
        reduced = False
        for opt_index, optimizer in enumerate(trainer.optimizers):
            for group_index, group in enumerate(optimizer.param_groups):
                floor = next(floors)
                if float(group["lr"]) <= floor:
                    continue
                old_lr = scale_lr(trainer, optimizer, group_index, max(float(group["lr"]) * self.factor, floor))
                self._record(trainer, opt_index, group_index, old_lr, float(group["lr"]))
                reduced = True
        return reduced

    def _record(self, trainer: pl.Trainer, opt_index: int, group_index: int, old_lr: float, new_lr: float) -> None:
        epoch = trainer.current_epoch
        self.reductions.append(
            {"epoch": epoch, "optimizer": opt_index, "group": group_index, "old_lr": old_lr, "new_lr": new_lr}
        )
        if self.verbose and rank_zero_only.rank == 0:
            best = f" on {self.best_score.item():.6g}" if torch.isfinite(self.best_score) else ""
            log.info(
                f"Epoch {epoch}: ReduceLROnPlateau reduced the lr of optimizer {opt_index} group {group_index}"
                f" from {old_lr:.6g} to {new_lr:.6g}: {self.monitor} did not improve{best} in {self.wait} checks."
            )

    def _floors(self, trainer: pl.Trainer) -> list[float]:
        count = sum(len(optimizer.param_groups) for optimizer in trainer.optimizers)
        if not isinstance(self.min_lr, list):
            return [float(self.min_lr)] * count
        if len(self.min_lr) != count:
            raise MisconfigurationException(
                f"ReduceLROnPlateau got {len(self.min_lr)} values of `min_lr`, but the optimizers have {count}"
                " parameter groups. Pass one value per group (groups of the first optimizer first), or a single"
                " float for all."
            )
        return [float(floor) for floor in self.min_lr]

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "best_score": self.best_score,
            "wait": self.wait,
            "cooldown_counter": self.cooldown_counter,
            "reductions": [dict(reduction) for reduction in self.reductions],
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        best = state_dict.get("best_score", state_dict.get("best"))  # "best", a float or None, in older checkpoints
        self.best_score = self._initial_best() if best is None else torch.as_tensor(best)
        self.wait = state_dict.get("wait", 0)
        self.cooldown_counter = state_dict.get("cooldown_counter", 0)
        self.reductions = [dict(reduction) for reduction in state_dict.get("reductions", [])]
