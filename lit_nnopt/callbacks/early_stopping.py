"""Lightning's EarlyStopping plus Keras' ``restore_best_weights``, ``start_from_epoch`` and ``baseline``."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lit_nnopt.callbacks._shared import mean_over_ranks


class EarlyStopping(LightningEarlyStopping):
    """Stop training when a monitored metric stops improving; optionally restore the best weights.

    Accepts all of Lightning's ``EarlyStopping`` arguments with the same meaning, plus three from
    Keras. The decision is taken on the metric averaged over DDP ranks (the same number when it
    is logged with ``sync_dist=True``), so every rank counts, stops and restores alike.

    When ``fit`` ends, the callback logs why it stopped (or that it did not), the best epoch and
    the best score, and keeps them in ``stop_reason_message``, ``best_epoch`` and ``best_score``.

    Args:
        monitor: the metric to watch, e.g. ``"val_loss"``.
        min_delta: an absolute change of at most ``min_delta`` is not an improvement.
        patience: checks without improvement after which training stops.
        verbose: log each improvement and the stop.
        mode: ``"min"`` (lower is better) or ``"max"``.
        strict: fail when ``monitor`` is not among the logged metrics.
        check_finite: stop when the metric becomes NaN or infinite.
        stopping_threshold: stop at once when the metric reaches this value.
        divergence_threshold: stop at once when the metric gets worse than this value.
        check_on_train_epoch_end: check at the end of the training epoch (``True``) or after
            validation (``False``); ``None`` picks as Lightning does.
        log_rank_zero_only: log from rank 0 only.
        restore_best_weights: keep a copy of the weights of the best check, on CPU, and load it
            back into the module when ``fit`` ends, for any reason (stopped early, reached
            ``max_epochs``, interrupted, failed). The copy is part of the callback's checkpoint
            state, so a resumed run restores it too.
        start_from_epoch: the epochs before this one (0-based) are not monitored at all: they
            neither set the best score nor count towards ``patience``.
        baseline: a value the metric must beat. Checks that do not beat it count towards
            ``patience`` even when they improve on the best so far, so training stops when the
            metric has not beaten ``baseline`` within ``patience`` checks. (Keras stops only on a
            check that does not improve.)

    Raises:
        MisconfigurationException: if ``mode`` is not ``"min"`` or ``"max"``.
        ValueError: if ``start_from_epoch`` is negative.

    Example::

        from lit_nnopt.callbacks import EarlyStopping
        trainer = Trainer(callbacks=[EarlyStopping("val_loss", patience=5, restore_best_weights=True)])
    """

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: Literal["min", "max"] = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        log_rank_zero_only: bool = False,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
        baseline: float | None = None,
    ) -> None:
        super().__init__(
            monitor=monitor,
            min_delta=min_delta,
            patience=patience,
            verbose=verbose,
            mode=mode,
            strict=strict,
            check_finite=check_finite,
            stopping_threshold=stopping_threshold,
            divergence_threshold=divergence_threshold,
            check_on_train_epoch_end=check_on_train_epoch_end,
            log_rank_zero_only=log_rank_zero_only,
        )
        if start_from_epoch < 0:
            raise ValueError(f"`start_from_epoch` must be >= 0, got {start_from_epoch}.")
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        self.baseline = baseline
        self.best_epoch: int | None = None
        self.best_weights: dict[str, Tensor] | None = None
        self.stop_reason_message: str | None = None

    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        logs = trainer.callback_metrics
        if trainer.fast_dev_run or trainer.current_epoch < self.start_from_epoch:
            return
        if not self._validate_condition_metric(logs):
            return
        current = mean_over_ranks(trainer, logs[self.monitor])
        improved = bool(torch.isfinite(current)) and self._beats(current, self.best_score)
        if improved:
            self._record_best(trainer, current)
        should_stop, reason = self._decide(current, improved)
        # Every rank saw the same averaged value; reducing the decision keeps that true even for
        # a subclass that decides on something rank-local.
        should_stop = trainer.strategy.reduce_boolean_decision(should_stop, all=False)
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop:
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason_message = reason
        if reason and self.verbose:
            self._log_info(trainer, reason, self.log_rank_zero_only)

    def _beats(self, current: Tensor, reference: Tensor | float) -> bool:
        # `min_delta` was given the sign of the mode in Lightning's __init__.
        return bool(self.monitor_op(current - self.min_delta, torch.as_tensor(reference, device=current.device)))

    def _record_best(self, trainer: pl.Trainer, current: Tensor) -> None:
        self.best_score = current.cpu()
        self.best_epoch = trainer.current_epoch
        if self.restore_best_weights:
            state = trainer.lightning_module.state_dict()
            self.best_weights = {name: tensor.detach().to("cpu", copy=True) for name, tensor in state.items()}

    def _decide(self, current: Tensor, improved: bool) -> tuple[bool, str | None]:
        """Whether to stop after this check, and a message saying why (or about the improvement)."""
        if self.check_finite and not torch.isfinite(current):
            return self._stop(EarlyStoppingReason.NON_FINITE_METRIC, f"{self.monitor} = {current.item()} is not finite")
        if self.stopping_threshold is not None and self.monitor_op(current, self.stopping_threshold):
            order = self.order_dict[self.mode]
            return self._stop(
                EarlyStoppingReason.STOPPING_THRESHOLD,
                f"{self.monitor} = {current.item():.6g} {order} stopping_threshold {self.stopping_threshold}",
            )
        if self.divergence_threshold is not None and self.monitor_op(-current, -self.divergence_threshold):
            order = self.order_dict["max" if self.mode == "min" else "min"]
            return self._stop(
                EarlyStoppingReason.DIVERGENCE_THRESHOLD,
                f"{self.monitor} = {current.item():.6g} {order} divergence_threshold {self.divergence_threshold}",
            )
        if improved and (self.baseline is None or self._beats(current, self.baseline)):
            self.wait_count = 0
            return False, f"{self.monitor} improved to {current.item():.6g}"
        self.wait_count += 1
        if self.wait_count < self.patience:
            return False, None
        return self._stop(EarlyStoppingReason.PATIENCE_EXHAUSTED, self._patience_message())

    def _patience_message(self) -> str:
        if self.baseline is not None and not self._beats(self.best_score, self.baseline):
            return f"{self.monitor} did not beat baseline {self.baseline} in {self.wait_count} checks"
        return f"{self.monitor} did not improve in {self.wait_count} checks (patience {self.patience})"

    def _stop(self, reason: EarlyStoppingReason, message: str) -> tuple[bool, str]:
        self.stopping_reason = reason
        return True, message

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._finish(trainer, pl_module)

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stopped = self.stopping_reason is not EarlyStoppingReason.NOT_STOPPED
        self.stop_reason_message = self.stopping_reason_message if stopped else None
        if stopped:
            outcome = f"stopped at epoch {self.stopped_epoch}: {self.stop_reason_message}"
        else:
            outcome = "fit was interrupted" if trainer.interrupted else "did not stop"
        message = f"EarlyStopping: {outcome}; " + (
            "no check yet"
            if self.best_epoch is None
            else f"best {self.monitor} {self.best_score.item():.6g} at epoch {self.best_epoch}"
        )
        if self.restore_best_weights and self.best_weights is not None:
            pl_module.load_state_dict(self.best_weights)
            message += f"; restored the weights of epoch {self.best_epoch}"
        rank_zero_info(message)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "best_epoch": self.best_epoch,
            "best_weights": self.best_weights,
            "stop_reason_message": self.stop_reason_message,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_epoch = state_dict.get("best_epoch")
        self.best_weights = state_dict.get("best_weights")
        self.stop_reason_message = state_dict.get("stop_reason_message")
