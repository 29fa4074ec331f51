"""Keras' ReduceLROnPlateau as a Lightning callback: no ``configure_optimizers`` change, no ``monitor`` wiring."""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lit_nnopt.callbacks._shared import check_lr_schedulers, infer_mode, mean_over_ranks, scale_lr

_MODES = ("auto", "min", "max")
_MIN_DELTA_MODES = ("absolute", "relative")


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when a metric has not improved for ``patience`` checks.

    Keras' semantics and argument names. The metric is read after each validation run (at the
    end of each training epoch when there is no validation), averaged over DDP ranks so every
    rank takes the same decision, and the lr of every parameter group of every optimizer is
    reduced. Each reduction is logged (epoch, old and new lr) and kept in ``reductions``.

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
        mode: ``"min"``, ``"max"``, or ``"auto"`` to infer it from the metric's name
            (``loss``, ``error``, ... -> min; ``acc``, ``auc``, ``f1``, ... -> max).
        min_delta: the smallest change that counts as an improvement.
        min_delta_mode: ``"absolute"`` (Keras): improve on the best by more than ``min_delta``;
            ``"relative"``: by more than ``min_delta * |best|``.
        cooldown: as Keras: after a reduction, the counter of checks without improvement stays
            at 0 until ``cooldown`` checks have passed, the last of which counts again (so
            ``cooldown=1`` changes nothing; torch's scheduler skips ``cooldown`` whole checks).
        min_lr: lower bound of the lr; one float for all parameter groups or a list with one
            per group (groups of the first optimizer first). A group at its bound is left as is.
        verbose: log each reduction.

    Raises:
        ValueError: for an argument out of range, or ``mode="auto"`` with a metric name that
            does not tell the direction.
        MisconfigurationException: when fit starts, if ``min_lr`` has the wrong length or the
            optimizer has a scheduler that would undo the reductions.

    Example::

        from lit_nnopt.callbacks import ReduceLROnPlateau
        trainer = Trainer(callbacks=[ReduceLROnPlateau("val_loss", factor=0.5, patience=3)])
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        mode: Literal["auto", "min", "max"] = "auto",
        min_delta: float = 1e-4,
        min_delta_mode: Literal["absolute", "relative"] = "absolute",
        cooldown: int = 0,
        min_lr: float | list[float] = 0.0,
        verbose: bool = True,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"`mode` can be {', '.join(_MODES)}, got {mode!r}.")
        if min_delta_mode not in _MIN_DELTA_MODES:
            raise ValueError(f"`min_delta_mode` can be {', '.join(_MIN_DELTA_MODES)}, got {min_delta_mode!r}.")
        if not 0.0 < factor < 1.0:
            raise ValueError(f"`factor` must be between 0 and 1 (exclusive): new_lr = lr * factor. Got {factor}.")
        for name, value in (("patience", patience), ("cooldown", cooldown), ("min_delta", min_delta)):
            if value < 0:
                raise ValueError(f"`{name}` must be >= 0, got {value}.")
        floors = min_lr if isinstance(min_lr, list) else [min_lr]
        if any(floor < 0 for floor in floors):
            raise ValueError(f"`min_lr` must be >= 0, got {min_lr}.")
        self.monitor = monitor
        self.factor = factor
        self.patience = patience
        self.mode = infer_mode(monitor, "ReduceLROnPlateau") if mode == "auto" else mode
        self.min_delta = min_delta
        self.min_delta_mode = min_delta_mode
        self.cooldown = cooldown
        self.min_lr = min_lr
        self.verbose = verbose
        self.best: float | None = None
        self.wait = 0
        self.cooldown_counter = 0
        self.reductions: list[dict[str, Any]] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_lr_schedulers(trainer, "ReduceLROnPlateau")
        self._floors(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == TrainerFn.FITTING:
            self._check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.enable_validation:
            self._check(trainer)

    def _check(self, trainer: pl.Trainer) -> None:
        logs = trainer.callback_metrics
        if self.monitor not in logs:
            raise RuntimeError(
                f"ReduceLROnPlateau monitors `{self.monitor}`, which was not logged. Logged metrics:"
                f" {', '.join(sorted(logs)) or 'none'}. Pass one of them as `monitor`."
            )
        current = mean_over_ranks(trainer, logs[self.monitor]).item()
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._is_improvement(current):
            self.best = current
            self.wait = 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience and self._reduce(trainer):
                self.cooldown_counter = self.cooldown
                self.wait = 0

    def _is_improvement(self, current: float) -> bool:
        if not math.isfinite(current):
            return False
        if self.best is None:
            return True
        delta = self.min_delta * (abs(self.best) if self.min_delta_mode == "relative" else 1.0)
        return current < self.best - delta if self.mode == "min" else current > self.best + delta

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
        if self.verbose:
            best = "" if self.best is None else f" on {self.best:.6g}"
            rank_zero_info(
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

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "wait": self.wait,
            "cooldown_counter": self.cooldown_counter,
            "reductions": [dict(reduction) for reduction in self.reductions],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")
        self.wait = state_dict.get("wait", 0)
        self.cooldown_counter = state_dict.get("cooldown_counter", 0)
        self.reductions = [dict(reduction) for reduction in state_dict.get("reductions", [])]
