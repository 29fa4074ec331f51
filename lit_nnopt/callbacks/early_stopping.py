"""Lightning's EarlyStopping plus four things from Keras: best weights, start epoch, baseline, ``mode="auto"``."""

from __future__ import annotations

import logging
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.utilities.rank_zero import rank_prefixed_message
from torch import Tensor
from typing_extensions import override

from lit_nnopt.callbacks.monitor import MonitorMixin, resolve_mode, same_on_all_ranks

log = logging.getLogger(__name__)


class EarlyStopping(MonitorMixin, LightningEarlyStopping):
    """Stop training when a monitored metric stops improving; optionally restore the best weights.

    Lightning's ``EarlyStopping`` (a subclass of it, deciding through its own
    ``_evaluate_stopping_criteria``, which a subclass may override as with Lightning's), plus
    four things from Keras: ``restore_best_weights``, ``start_from_epoch``, ``baseline`` and
    ``mode="auto"``. The metric is read in its own dtype and made the same on every DDP rank
    (kept as is when the ranks agree, their mean otherwise), so every rank counts, stops and
    restores alike.

    ``best_score`` and ``best_epoch`` follow the best check, also when that check stops
    training at ``stopping_threshold`` (Lightning leaves ``best_score`` at the previous one).
    ``stopping_reason`` and ``stopping_reason_message`` say why training stopped, as in Lightning.

    Args:
        monitor: the metric to watch.
        min_delta: an absolute change of at most ``min_delta`` is not an improvement.
        patience: checks without improvement after which training stops.
        verbose: log each improvement, the stop, and when fit ends the best check.
        mode: ``"min"``, ``"max"``, or ``"auto"``: from the metric's name (``loss``, ``error``,
            ... -> min; ``acc``, ``auc``, ``f1``, ... -> max), ``"min"`` with a warning when the
            name does not tell.
        strict: fail when ``monitor`` is not among the logged metrics.
        check_finite: stop when the metric becomes NaN or infinite.
        stopping_threshold: stop at once when the metric reaches this value.
        divergence_threshold: stop at once when the metric gets worse than this value.
        check_on_train_epoch_end: check at the end of the training epoch (``True``) or after
            validation (``False``); ``None`` picks as Lightning does.
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
        MisconfigurationException: if ``mode`` is not auto, min or max.
        ValueError: if ``start_from_epoch`` is negative.

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
    """

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
        super().__init__(
            monitor=monitor,
            min_delta=min_delta,
            patience=patience,
            verbose=verbose,
            mode=resolve_mode(monitor, mode, "EarlyStopping"),
            strict=strict,
            check_finite=check_finite,
            stopping_threshold=stopping_threshold,
            divergence_threshold=divergence_threshold,
            check_on_train_epoch_end=check_on_train_epoch_end,
            log_rank_zero_only=log_rank_zero_only,
        )
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        self.baseline = baseline
        self.best_epoch: int | None = None
        self.best_weights: dict[str, Tensor] | None = None
        self._trainer: pl.Trainer | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._trainer = trainer  # _evaluate_stopping_criteria gets no trainer, and reads the value across ranks

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = None

    @override
    def _should_skip_check(self, trainer: pl.Trainer) -> bool:
        return super()._should_skip_check(trainer) or trainer.current_epoch < self.start_from_epoch

    @override
    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        best_before = self.best_score
        super()._run_early_stopping_check(trainer)
        if self.best_score is not best_before:
            self._record_best(trainer)

    @override
    def _evaluate_stopping_criteria(self, current: Tensor) -> tuple[bool, str | None]:
        current = same_on_all_ranks(self._trainer, current)
        best_before, wait_before = self.best_score, self.wait_count
        should_stop, reason = super()._evaluate_stopping_criteria(current)
        improved = self.best_score is not best_before
        if not improved and should_stop and self._is_improvement(current, best_before):
            self.best_score = current  # Lightning tests the thresholds first; this check is still the best
        elif improved and self.baseline is not None and not self._is_improvement(current, self.baseline):
            self.wait_count = wait_before + 1
            if self.wait_count >= self.patience:
                self.stopping_reason = EarlyStoppingReason.PATIENCE_EXHAUSTED
                should_stop, reason = True, self._baseline_message()
        return should_stop, reason

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

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        restored = self.restore_best_weights and self.best_weights is not None
        if restored:
            pl_module.load_state_dict(self.best_weights)
        if self.verbose:
            self._log_info(trainer, self._summary(restored), self.log_rank_zero_only)

    def _summary(self, restored: bool) -> str:
        stopped = self.stopping_reason is not EarlyStoppingReason.NOT_STOPPED
        outcome = f"stopped at epoch {self.stopped_epoch}" if stopped else "did not stop"
        if self.best_epoch is None:
            return f"EarlyStopping: {outcome}; no check yet."
        best = f"best {self.monitor} {self.best_score.item():.6g} at epoch {self.best_epoch}"
        return f"EarlyStopping: {outcome}; {best}" + ("; restored its weights." if restored else ".")

    @staticmethod
    @override
    def _log_info(trainer: pl.Trainer, message: str, log_rank_zero_only: bool) -> None:
        rank = trainer.global_rank if trainer.world_size > 1 else None
        if rank is None or not log_rank_zero_only or rank == 0:
            log.info(rank_prefixed_message(message, rank))

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best_epoch": self.best_epoch, "best_weights": self.best_weights}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_epoch = state_dict.get("best_epoch")
        self.best_weights = state_dict.get("best_weights")
