"""Early stopping on public hooks: Lightning's arguments and decisions, plus Keras' best weights and baseline."""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import Enum
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_prefixed_message
from torch import Tensor
from typing_extensions import override

from lit_nnopt._host import Callback
from lit_nnopt.callbacks.monitor import MonitorMixin, resolve_check_on_train_epoch_end, resolve_mode, state_key_of

log = logging.getLogger(__name__)

try:  # Lightning 2.6 names why its EarlyStopping stopped; use its enum, so that either class compares alike
    from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
except ImportError:  # older Lightning: the same names and values

    class EarlyStoppingReason(Enum):  # type: ignore[no-redef]
        """Why :class:`EarlyStopping` stopped training (Lightning's ``EarlyStoppingReason``, for older Lightning)."""

        NOT_STOPPED = 0
        STOPPING_THRESHOLD = 1
        DIVERGENCE_THRESHOLD = 2
        PATIENCE_EXHAUSTED = 3
        NON_FINITE_METRIC = 4


class EarlyStopping(MonitorMixin, Callback):
    """Stop training when a monitored metric stops improving; optionally restore the best weights.

    Lightning's ``EarlyStopping`` (its arguments, state, checks and messages) written on the
    public callback hooks and lit_nnopt's monitor base, plus four things from Keras:
    ``restore_best_weights``, ``start_from_epoch``, ``baseline`` and ``mode="auto"``. It is a
    separate class, not a subclass of Lightning's, so it keeps working when Lightning changes
    its private helpers. The metric is read in its own dtype and made the same on every DDP
    rank (kept as is when the ranks agree, their mean otherwise), so every rank counts, stops
    and restores alike; the stop decision is also reduced over ranks, as in Lightning.

    The helpers keep the names of Lightning's (``_should_skip_check``,
    ``_run_early_stopping_check``, ``_evaluate_stopping_criteria``, ``_log_info``) and their
    signatures, so a subclass written for Lightning's class, such as one that decides in its own
    ``_evaluate_stopping_criteria``, works with this one.

    A check at the training epoch's end runs right after the module's own ``on_train_epoch_end``,
    as Lightning's does, so it sees a metric logged there: while ``fit`` runs, that hook of the
    module is wrapped, on the instance, in one that checks after it. (Lightning runs its own
    EarlyStopping and checkpoint classes after the module's hook; other callbacks run before it.)

    ``best_score`` and ``best_epoch`` follow the best check, also when that check stops
    training at ``stopping_threshold`` (Lightning leaves ``best_score`` at the previous one).
    ``stopping_reason`` (an ``EarlyStoppingReason``: Lightning's where it has one) and
    ``stopping_reason_message`` say why training stopped, as in Lightning.

    Args:
        monitor: the metric to watch.
        min_delta: an absolute change of at most ``min_delta`` is not an improvement.
        patience: checks without improvement after which training stops.
        verbose: log each improvement, the stop, and when fit ends the best check.
        mode: ``"min"``, ``"max"``, or ``"auto"``: from the metric's name (``loss``, ``error``,
            ... -> min; ``acc``, ``auc``, ``f1``, ... -> max); a name that tells neither is
            refused, with the ``mode`` to pass.
        strict: fail when ``monitor`` is not among the logged metrics; else skip that check with
            a warning.
        check_finite: stop when the metric becomes NaN or infinite.
        stopping_threshold: stop at once when the metric reaches this value.
        divergence_threshold: stop at once when the metric gets worse than this value.
        check_on_train_epoch_end: check at the end of the training epoch (``True``) or after
            validation (``False``); ``None`` picks as Lightning does: at the epoch's end when
            validation runs once per epoch.
        log_rank_zero_only: log from rank 0 only. The default is ``True`` (Lightning's is
            ``False``): every rank decides on the same value, so the other ranks' lines say the same.
        restore_best_weights: keep a copy of the weights of the best check, on CPU, and load it
            back into the module when ``fit`` ends normally (stopped early or at its limits).
            Not when ``fit`` ends by an exception or an interrupt: the module then keeps the
            weights of that moment, which any checkpoint written on the exception saves to
            resume from. The copy is part of the callback's checkpoint state.
        start_from_epoch: the epochs before this one (0-based) are not monitored at all: they
            neither set the best score nor count towards ``patience``.
        baseline: a value the metric must beat. Checks that do not beat it count towards
            ``patience`` even when they improve on the best so far, so training stops when the
            metric has not beaten ``baseline`` within ``patience`` checks. (Keras stops only on a
            check that does not improve.)

    Raises:
        MisconfigurationException: if ``mode`` is not auto, min or max, or is auto and the
            metric's name tells no direction.
        ValueError: if ``patience`` or ``start_from_epoch`` is negative.
        RuntimeError: at a check, if ``monitor`` was not logged and ``strict`` is on.

    Example::

        >>> import lightning.pytorch as pl
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> from lit_nnopt.callbacks import EarlyStopping
        >>> class ScriptedLoss(BoringModel):
        ...     def on_validation_epoch_end(self):
        ...         self.log("val_loss", [0.9, 0.8, 0.85, 0.86, 0.7][self.current_epoch])
        >>> stopper = EarlyStopping("val_loss", patience=2, restore_best_weights=True)
        >>> trainer = pl.Trainer(max_epochs=5, callbacks=[stopper], limit_train_batches=2, limit_val_batches=1,
        ...     logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(ScriptedLoss())
        >>> stopper.stopped_epoch, stopper.best_epoch, round(stopper.best_score.item(), 2)
        (3, 1, 0.8)
        >>> stopper.stopping_reason.name
        'PATIENCE_EXHAUSTED'
    """

    order_dict = {"min": "<", "max": ">"}

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: Literal["auto", "min", "max"] = "auto",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        log_rank_zero_only: bool = True,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
        baseline: float | None = None,
    ) -> None:
        if patience < 0:
            raise ValueError(
                f"`patience` must be >= 0, got {patience}: it counts the checks without improvement to wait for."
            )
        if start_from_epoch < 0:
            raise ValueError(f"`start_from_epoch` must be >= 0, got {start_from_epoch}.")
        self.monitor = monitor
        self.mode = resolve_mode(monitor, mode, "EarlyStopping")
        self.min_delta = min_delta if self.mode == "max" else -min_delta  # signed, as Lightning and Keras
        self.patience = patience
        self.verbose = verbose
        self.strict = strict
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.log_rank_zero_only = log_rank_zero_only
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        self.baseline = baseline
        self._check_on_train_epoch_end = check_on_train_epoch_end
        self.wait_count = 0
        self.stopped_epoch = 0
        self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
        self.stopping_reason_message: str | None = None
        self.best_score = self._initial_best()
        self.best_epoch: int | None = None
        self.best_weights: dict[str, Tensor] | None = None
        self._wrapped: tuple[pl.LightningModule, Any] | None = None

    @property
    @override
    def state_key(self) -> str:
        return state_key_of(self, monitor=self.monitor, mode=self.mode)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._check_on_train_epoch_end = resolve_check_on_train_epoch_end(trainer, self._check_on_train_epoch_end)

    # -- when to check ----------------------------------------------------------------------

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stoppers = [callback for callback in trainer.callbacks if isinstance(callback, EarlyStopping)]
        if stoppers[0] is self and any(stopper._check_on_train_epoch_end for stopper in stoppers):
            self._check_after_the_modules_epoch_end(trainer, pl_module, stoppers)

    def _check_after_the_modules_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stoppers: list[EarlyStopping]
    ) -> None:
        """Wrap the module's ``on_train_epoch_end`` so that every stopper checking there checks after it.

        One wrapper for all the instances (installed by the first), so that they check in the
        callbacks' order and fit's end unwraps exactly what was wrapped.
        """
        module_hook: Callable[[], None] = pl_module.on_train_epoch_end

        def on_train_epoch_end() -> None:
            module_hook()
            for stopper in stoppers:
                if stopper._check_on_train_epoch_end and not stopper._should_skip_check(trainer):
                    stopper._run_early_stopping_check(trainer)

        self._wrapped = (pl_module, pl_module.__dict__.get("on_train_epoch_end"))
        pl_module.on_train_epoch_end = on_train_epoch_end

    def _unwrap(self) -> None:
        if self._wrapped is None:
            return
        (pl_module, previous), self._wrapped = self._wrapped, None
        if previous is None:
            del pl_module.on_train_epoch_end
        else:
            pl_module.on_train_epoch_end = previous

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._check_on_train_epoch_end or self._should_skip_check(trainer):
            return
        self._run_early_stopping_check(trainer)

    def _should_skip_check(self, trainer: pl.Trainer) -> bool:
        return (
            trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
            or trainer.current_epoch < self.start_from_epoch
        )

    # -- the check --------------------------------------------------------------------------

    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        """Decide on the monitored value, the same on every rank, and tell the trainer to stop if any rank says so."""
        if trainer.fast_dev_run:
            return
        current = self._monitored_value(trainer)
        if current is None:
            return
        best_before = self.best_score
        should_stop, reason = self._evaluate_stopping_criteria(current)
        if self.best_score is not best_before:
            self._record_best(trainer)
        should_stop = trainer.strategy.reduce_boolean_decision(should_stop, all=False)
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop:
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason_message = reason
        if reason and self.verbose:
            self._log_info(trainer, reason, self.log_rank_zero_only)

    def _evaluate_stopping_criteria(self, current: Tensor) -> tuple[bool, str | None]:
        """Lightning's order: non-finite, stopping threshold, divergence, improvement, patience (and the baseline)."""
        if self.check_finite and not torch.isfinite(current):
            return self._stop(
                EarlyStoppingReason.NON_FINITE_METRIC,
                f"Monitored metric {self.monitor} = {current} is not finite."
                f" Previous best value was {self.best_score:.3f}. Signaling Trainer to stop.",
            )
        improved = self._is_improvement(current, self.best_score)
        stop_at_once = self._threshold_reached(current)
        if stop_at_once is not None:
            if improved:  # the check that stops training is still the best so far
                self.best_score = current
            return self._stop(*stop_at_once)
        if not improved:
            return self._count_towards_patience(None, self._patience_message)
        message = self._improvement_message(current)
        self.best_score = current
        if self.baseline is not None and not self._is_improvement(current, self.baseline):
            return self._count_towards_patience(message, self._baseline_message)  # an improvement, still counted
        self.wait_count = 0
        return False, message

    def _count_towards_patience(self, message: str | None, stop_message: Callable[[], str]) -> tuple[bool, str | None]:
        self.wait_count += 1
        if self.wait_count < self.patience:
            return False, message
        return self._stop(EarlyStoppingReason.PATIENCE_EXHAUSTED, stop_message())

    def _stop(self, reason: EarlyStoppingReason, message: str) -> tuple[bool, str]:
        self.stopping_reason = reason
        return True, message

    def _threshold_reached(self, current: Tensor) -> tuple[EarlyStoppingReason, str] | None:
        order = self.order_dict[self.mode]
        if self.stopping_threshold is not None and self.monitor_op(current, self.stopping_threshold):
            return EarlyStoppingReason.STOPPING_THRESHOLD, (
                f"Stopping threshold reached: {self.monitor} = {current} {order} {self.stopping_threshold}."
                " Signaling Trainer to stop."
            )
        if self.divergence_threshold is not None and self.monitor_op(-current, -self.divergence_threshold):
            return EarlyStoppingReason.DIVERGENCE_THRESHOLD, (
                f"Divergence threshold reached: {self.monitor} = {current} {order} {self.divergence_threshold}."
                " Signaling Trainer to stop."
            )
        return None

    def _improvement_message(self, current: Tensor) -> str:
        if torch.isfinite(self.best_score):
            return (
                f"Metric {self.monitor} improved by {abs(self.best_score - current):.3f} >="
                f" min_delta = {abs(self.min_delta)}. New best score: {current:.3f}"
            )
        return f"Metric {self.monitor} improved. New best score: {current:.3f}"

    def _patience_message(self) -> str:
        return (
            f"Monitored metric {self.monitor} did not improve in the last {self.wait_count} records."
            f" Best score: {self.best_score:.3f}. Signaling Trainer to stop."
        )

    def _baseline_message(self) -> str:
        return (
            f"Monitored metric {self.monitor} did not beat the baseline {self.baseline} in the last"
            f" {self.wait_count} records. Best score: {self.best_score:.3f}. Signaling Trainer to stop."
        )

    def _record_best(self, trainer: pl.Trainer) -> None:
        self.best_epoch = trainer.current_epoch
        if self.restore_best_weights:
            state = trainer.lightning_module.state_dict()
            self.best_weights = {name: tensor.detach().to("cpu", copy=True) for name, tensor in state.items()}

    # -- the end of fit ---------------------------------------------------------------------

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._unwrap()
        restored = self.restore_best_weights and self.best_weights is not None
        if restored:
            pl_module.load_state_dict(self.best_weights)
        if self.verbose:
            self._log_info(trainer, self._summary(restored), self.log_rank_zero_only)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._unwrap()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._unwrap()

    def _summary(self, restored: bool) -> str:
        stopped = self.stopping_reason is not EarlyStoppingReason.NOT_STOPPED
        outcome = f"stopped at epoch {self.stopped_epoch}" if stopped else "did not stop"
        if self.best_epoch is None:
            return f"EarlyStopping: {outcome}; no check yet."
        best = f"best {self.monitor} {self.best_score.item():.6g} at epoch {self.best_epoch}"
        return f"EarlyStopping: {outcome}; {best}" + ("; restored its weights." if restored else ".")

    @staticmethod
    def _log_info(trainer: pl.Trainer, message: str, log_rank_zero_only: bool) -> None:
        rank = trainer.global_rank if trainer.world_size > 1 else None
        if rank is None or not log_rank_zero_only or rank == 0:
            log.info(rank_prefixed_message(message, rank))

    # -- checkpoints ------------------------------------------------------------------------

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "wait_count": self.wait_count,
            "stopped_epoch": self.stopped_epoch,
            "best_score": self.best_score,
            "patience": self.patience,
            "stopping_reason": self.stopping_reason.value,
            "stopping_reason_message": self.stopping_reason_message,
            "best_epoch": self.best_epoch,
            "best_weights": self.best_weights,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load the state of this class, of its earlier versions or of Lightning's EarlyStopping (any version)."""
        self.wait_count = state_dict["wait_count"]
        self.stopped_epoch = state_dict["stopped_epoch"]
        self.best_score = torch.as_tensor(state_dict["best_score"])
        self.patience = state_dict["patience"]  # as Lightning: the checkpoint's patience goes on
        self.stopping_reason = EarlyStoppingReason(
            state_dict.get("stopping_reason", EarlyStoppingReason.NOT_STOPPED.value)
        )
        self.stopping_reason_message = state_dict.get("stopping_reason_message")
        self.best_epoch = state_dict.get("best_epoch")
        self.best_weights = state_dict.get("best_weights")
