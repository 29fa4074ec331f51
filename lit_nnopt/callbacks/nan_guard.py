"""Survive a non-finite training loss: roll back and go on, or stop with a checkpoint of the last good state."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from lit_nnopt._host import Callback
from lit_nnopt.callbacks._shared import check_lr_schedulers, scale_lr

_ACTIONS = ("rollback", "stop")
CHECKPOINT_NAME = "nan_guard_last_good.ckpt"

log = logging.getLogger(__name__)


class NaNGuard(Callback):
    """On a non-finite training loss, roll back to the last good state and go on, or stop.

    Every ``snapshot_every_n_steps`` optimizer steps whose loss is finite, the callback copies
    the weights and the optimizer states (on their device, into the same buffers each time)
    before the step's update: the last good state is the last such copy. The copy is part of
    the callback's checkpoint state, so a run resumed from a checkpoint rolls back to the same
    state as the uninterrupted run would. When a loss is NaN or infinite (on any DDP
    rank: the decision is reduced, so all ranks act alike), the step is skipped (its gradients
    are dropped, so the optimizer changes nothing) and then:

    - ``action="rollback"``: the weights and optimizer states go back to the last good state,
      the lr of every parameter group is multiplied by ``lr_factor``, and training goes on with
      the next batch. After ``max_retries`` rollbacks in a row (no finite loss in between) it
      stops as below.
    - ``action="stop"``: the weights and optimizer states go back to the last good state, which
      is saved to ``<dirpath>/nan_guard_last_good.ckpt``, and the Trainer stops (after
      ``min_epochs``/``min_steps``, as with any callback stop).

    Under gradient accumulation, a non-finite loss in any micro-batch skips the whole
    accumulated step. When one training step runs a group of batches
    (:class:`~lit_nnopt.callbacks.StepsPerExecution`), the callback acts at the end of the group: the
    group's remaining batches are skipped as well, and count as the same skipped step. Its place in
    the callbacks list does not matter: :class:`~lit_nnopt.callbacks.GradientClipping` clips after
    every ``on_before_optimizer_step`` hook, so it never sees the dropped step. The snapshot costs
    one copy of the weights and optimizer state in device memory (and in checkpoints), refreshed at
    each snapshot; the check costs one host sync of the loss per micro-batch (and, under DDP, an
    all-reduce of one flag). The lr scaling follows the same rules for LR schedulers as
    :class:`~lit_nnopt.callbacks.ReduceLROnPlateau`.

    Counters: ``skipped_steps``, ``rollbacks``; after a stop, ``stopping_reason_message`` (the
    name Lightning's EarlyStopping uses) and ``last_good_checkpoint_path``.

    Args:
        action: ``"rollback"`` or ``"stop"``.
        max_retries: rollbacks in a row before stopping instead.
        lr_factor: multiply the lr by this at each rollback, in (0, 1]; 1 keeps it.
        snapshot_every_n_steps: take the snapshot every this many optimizer steps; a rollback
            goes back to the last one, at most this many steps (plus the bad one). 1 rolls back
            a single step at the cost of one copy per step.
        dirpath: where the stop checkpoint goes; defaults to the ModelCheckpoint's directory,
            else ``<log_dir>/checkpoints``.

    Raises:
        ValueError: for an argument out of range.
        MisconfigurationException: when fit starts with ``lr_factor < 1`` and an LR scheduler
            that would undo the lr change.

    Example::

        >>> import lightning.pytorch as pl
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> from lit_nnopt.callbacks import NaNGuard
        >>> class NaNAtStep2(BoringModel):
        ...     def training_step(self, batch, batch_idx):
        ...         loss = super().training_step(batch, batch_idx)["loss"]
        ...         return loss * float("nan") if self.global_step == 2 else loss
        >>> guard = NaNGuard(action="rollback", lr_factor=0.5, snapshot_every_n_steps=1)
        >>> trainer = pl.Trainer(max_steps=4, callbacks=[guard], limit_val_batches=0,
        ...     logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(NaNAtStep2())
        >>> guard.skipped_steps, guard.rollbacks, trainer.optimizers[0].param_groups[0]["lr"]
        (1, 1, 0.05)
    """

    def __init__(
        self,
        action: Literal["rollback", "stop"] = "rollback",
        max_retries: int = 3,
        lr_factor: float = 1.0,
        snapshot_every_n_steps: int = 100,
        dirpath: str | None = None,
    ) -> None:
        if action not in _ACTIONS:
            raise ValueError(f"`action` can be {', '.join(_ACTIONS)}, got {action!r}.")
        if max_retries < 0:
            raise ValueError(f"`max_retries` must be >= 0, got {max_retries}.")
        if not 0.0 < lr_factor <= 1.0:
            raise ValueError(f"`lr_factor` must be in (0, 1] (1 keeps the lr), got {lr_factor}.")
        if snapshot_every_n_steps < 1:
            raise ValueError(f"`snapshot_every_n_steps` must be >= 1, got {snapshot_every_n_steps}.")
        self.action = action
        self.max_retries = max_retries
        self.lr_factor = lr_factor
        self.snapshot_every_n_steps = snapshot_every_n_steps
        self.dirpath = dirpath
        self.skipped_steps = 0
        self.rollbacks = 0
        self.retries_in_a_row = 0
        self.stopping_reason_message: str | None = None
        self.last_good_checkpoint_path: str | None = None
        self._bad = False
        self._skipped = False
        self._bad_step = 0
        self._snapshot: dict[str, Any] | None = None
        self._snapshot_loaded = False

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.lr_factor < 1.0:
            check_lr_schedulers(trainer, f"NaNGuard(lr_factor={self.lr_factor})")
        if not self._snapshot_loaded:  # a snapshot of an earlier fit of this instance is not this run's
            self._snapshot = None
        self._snapshot_loaded = False
        self._bad = self._skipped = False

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        bad = trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(loss.detach()).all()), all=False)
        if bad and not self._bad:
            self._bad_step = trainer.global_step
        self._bad = self._bad or bad
        if self._bad:
            return
        self.retries_in_a_row = 0
        due = trainer.global_step % self.snapshot_every_n_steps == 0
        if due and (self._snapshot is None or self._snapshot["step"] != trainer.global_step):
            current = {
                "step": trainer.global_step,
                "module": pl_module.state_dict(),
                "optimizers": [optimizer.state_dict()["state"] for optimizer in trainer.optimizers],
            }
            self._snapshot = _copy_into(self._snapshot, current)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        if not self._bad:
            return
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = None
        self._skipped = True

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._skipped:
            return
        self._bad = self._skipped = False
        self.skipped_steps += 1
        self.retries_in_a_row += 1
        where = f"step {self._bad_step} (epoch {trainer.current_epoch}, batch {batch_idx})"
        if self.action == "stop" or self.retries_in_a_row > self.max_retries:
            self._stop(trainer, pl_module, where)
        else:
            self._rollback(trainer, pl_module, where)

    def _restore(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        """Load the last good state back; say which state that is."""
        if self._snapshot is None:
            return "no finite loss yet, nothing to roll back to"
        with torch.no_grad():
            for name, tensor in pl_module.state_dict().items():
                tensor.copy_(self._snapshot["module"][name])
        for optimizer, state in zip(trainer.optimizers, self._snapshot["optimizers"], strict=True):
            current = optimizer.state_dict()
            # Keep the current param_groups (lr set by schedulers since the snapshot); only the
            # per-parameter state goes back. Cloned again so later steps do not write into the snapshot.
            optimizer.load_state_dict({**current, "state": _clone(state)})
        return f"rolled back to the weights and optimizer state before step {self._snapshot['step']}"

    def _rollback(self, trainer: pl.Trainer, pl_module: pl.LightningModule, where: str) -> None:
        restored = self._restore(trainer, pl_module)
        if self.lr_factor < 1.0:
            for optimizer in trainer.optimizers:
                for index, group in enumerate(optimizer.param_groups):
                    scale_lr(trainer, optimizer, index, float(group["lr"]) * self.lr_factor)
        self.rollbacks += 1
        lr_note = f", lr x{self.lr_factor}" if self.lr_factor < 1.0 else ""
        _rank_zero_warning(
            f"NaNGuard: non-finite loss at {where}: skipped the step, {restored}{lr_note}"
            f" (rollback {self.retries_in_a_row} of at most {self.max_retries} in a row)."
        )

    def _stop(self, trainer: pl.Trainer, pl_module: pl.LightningModule, where: str) -> None:
        restored = self._restore(trainer, pl_module)
        if self._snapshot is not None:
            path = self._checkpoint_dir(trainer) / CHECKPOINT_NAME
            trainer.save_checkpoint(path)
            self.last_good_checkpoint_path = str(path)
            restored += f", saved to {path}"
        retries = f" after {self.retries_in_a_row - 1} rollbacks in a row" if self.action == "rollback" else ""
        self.stopping_reason_message = f"non-finite loss at {where}{retries}; {restored}"
        trainer.should_stop = True
        _rank_zero_warning(f"NaNGuard: stopping: {self.stopping_reason_message}.")

    def _checkpoint_dir(self, trainer: pl.Trainer) -> Path:
        if self.dirpath:
            return Path(self.dirpath)
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and checkpoint.dirpath:
            return Path(checkpoint.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "skipped_steps": self.skipped_steps,
            "rollbacks": self.rollbacks,
            "retries_in_a_row": self.retries_in_a_row,
            "stopping_reason_message": self.stopping_reason_message,
            "last_good_checkpoint_path": self.last_good_checkpoint_path,
            "snapshot": self._snapshot,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = state_dict.get("skipped_steps", 0)
        self.rollbacks = state_dict.get("rollbacks", 0)
        self.retries_in_a_row = state_dict.get("retries_in_a_row", 0)
        self.stopping_reason_message = state_dict.get("stopping_reason_message", state_dict.get("stop_reason_message"))
        self.last_good_checkpoint_path = state_dict.get("last_good_checkpoint_path")
        self._snapshot = state_dict.get("snapshot")
        self._snapshot_loaded = self._snapshot is not None


def _rank_zero_warning(message: str) -> None:
    if rank_zero_only.rank == 0:
        log.warning(message)


def _copy_into(target: Any, value: Any) -> Any:
    """A copy of nested dicts/lists of tensors, written into ``target``'s tensors where they fit.

    Optimizer state dicts share their tensors with the optimizer, so they are copied; reusing
    the buffers of the previous snapshot spares an allocation per tensor at each snapshot.
    """
    if isinstance(value, Tensor):
        fits = isinstance(target, Tensor) and (target.shape, target.dtype, target.device) == (
            value.shape,
            value.dtype,
            value.device,
        )
        return target.copy_(value) if fits else value.detach().clone()
    if isinstance(value, dict):
        target = target if isinstance(target, dict) else {}
        return {key: _copy_into(target.get(key), item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        target = target if isinstance(target, (list, tuple)) and len(target) == len(value) else [None] * len(value)
        return type(value)(_copy_into(old, item) for old, item in zip(target, value, strict=True))
    return value


def _clone(value: Any) -> Any:
    """A copy of nested dicts/lists of tensors with every tensor cloned (optimizer state dicts share theirs)."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {key: _clone(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(item) for item in value)
    return value
