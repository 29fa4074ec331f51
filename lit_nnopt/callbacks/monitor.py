"""What the callbacks that watch a metric share, as Keras' ``MonitorCallback``: one improvement test, one way to read.

:class:`MonitorMixin` owns ``monitor``, ``mode`` (with ``"auto"``), the signed ``min_delta``,
``best_score``, the improvement test and the reading of the metric. :class:`EarlyStopping` and
:class:`ReduceLROnPlateau` add only what differs, so both decide alike on the same values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

MODES = ("auto", "min", "max")
# Words in a metric name that tell its direction, for ``mode="auto"``.
_LOWER_IS_BETTER = {"loss", "error", "err", "mse", "mae", "rmse", "nll", "perplexity", "ppl", "wer", "cer"}
_HIGHER_IS_BETTER = {"acc", "accuracy", "auc", "auroc", "f1", "precision", "recall", "iou", "dice", "map", "r2"}
_HIGHER_IS_BETTER |= {"top1", "top5"}


def resolve_mode(monitor: str, mode: str, owner: str) -> str:
    """``mode``, with ``"auto"`` read from the words of ``monitor`` (``val_loss`` -> min, ``val_acc`` -> max).

    Raises:
        MisconfigurationException: if ``mode`` is not one of auto, min, max; or if it is
            ``"auto"`` and the name tells neither direction (or both), as Keras refuses it: a
            guess would minimise a ``val_top3`` or a ``val_score``.
    """
    if mode not in MODES:
        raise MisconfigurationException(f"`mode` can be {', '.join(MODES)}, got {mode}.")
    if mode != "auto":
        return mode
    words = set(re.split(r"[^a-z0-9]+", monitor.lower()))
    lower, higher = bool(words & _LOWER_IS_BETTER), bool(words & _HIGHER_IS_BETTER)
    if lower != higher:
        return "min" if lower else "max"
    raise MisconfigurationException(
        f"{owner}(mode='auto') cannot tell from its name whether `{monitor}` should go down or up: it contains"
        f" {'both' if lower else 'none'} of the known words (loss, error, mse, ... for min; acc, auc, f1, ... for"
        f" max). Pass mode='min' if a lower `{monitor}` is better, or mode='max' if a higher one is."
    )


class MonitorMixin:
    """Monitor, mode, min_delta, best score and the improvement test of a callback that watches one metric.

    A class using it sets ``monitor``, ``mode`` (resolved, "min" or "max"), ``min_delta`` (signed as
    in Lightning and Keras: negative in min mode), ``strict`` and ``best_score``.
    """

    mode_dict: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"min": torch.lt, "max": torch.gt}
    monitor: str
    mode: str
    min_delta: float
    strict: bool
    best_score: Tensor

    @property
    def monitor_op(self) -> Callable[[Tensor, Tensor], Tensor]:
        return self.mode_dict[self.mode]

    def _initial_best(self) -> Tensor:
        return torch.tensor(torch.inf if self.mode == "min" else -torch.inf)

    def _delta(self, reference: Tensor) -> float | Tensor:
        """The signed margin ``current`` must beat ``reference`` by; a subclass may make it relative."""
        return self.min_delta

    def _is_improvement(self, current: Tensor, reference: Tensor | float) -> bool:
        """Whether ``current`` beats ``reference`` by more than ``|min_delta|``, in ``current``'s own dtype.

        Lightning's and Keras' test (``monitor_op(current - min_delta, reference)``), computed in
        the metric's precision: a float64 metric is never rounded to float32.
        """
        reference = torch.as_tensor(reference, device=current.device)
        if not torch.isfinite(current):
            return False
        if not torch.isfinite(reference):  # the initial best: any finite value beats it
            return bool(self.monitor_op(current, reference))
        return bool(self.monitor_op(current - self._delta(reference), reference))

    def _monitored_value(self, trainer: pl.Trainer, logs: Mapping[str, Any] | None = None) -> Tensor | None:
        """The monitored value, the same on every DDP rank; None if it was not logged and ``strict`` is off.

        Raises:
            RuntimeError: if the metric was not logged and ``strict`` is on.
        """
        logs = trainer.callback_metrics if logs is None else logs
        if self.monitor not in logs:
            message = (
                f"{type(self).__name__} monitors `{self.monitor}`, which was not logged. Logged metrics:"
                f" {', '.join(sorted(logs)) or 'none'}. Pass one of them as `monitor`, or strict=False to skip"
                " checks without it."
            )
            if self.strict:
                raise RuntimeError(message)
            rank_zero_warn(message, category=RuntimeWarning)
            return None
        return same_on_all_ranks(trainer, logs[self.monitor])


def same_on_all_ranks(trainer: pl.Trainer | None, value: Any) -> Tensor:
    """``value`` as one CPU tensor in its own dtype, equal on every DDP rank.

    A value every rank holds alike (logged with ``sync_dist=True``) is kept as it is; otherwise
    the ranks take the mean of their values, so a metric logged per rank still gives every rank
    the same counters and decisions. ``trainer`` may be None (no DDP).
    """
    tensor = torch.as_tensor(value).detach().squeeze()
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    if trainer is None or trainer.world_size <= 1:
        return tensor.cpu()
    gathered = trainer.strategy.all_gather(tensor.to(trainer.strategy.root_device))
    first = gathered[0]
    return (first if bool((gathered == first).all()) else gathered.mean(dim=0)).cpu()


def resolve_check_on_train_epoch_end(trainer: pl.Trainer, given: bool | None) -> bool:
    """Lightning's EarlyStopping rule: check at the training epoch's end if validation runs once per epoch, at its end.

    There every metric of the epoch is known, training aggregates (``on_epoch=True``) included;
    after each validation they are not yet.
    """
    if given is not None:
        return given
    return trainer.val_check_interval == 1.0 and trainer.check_val_every_n_epoch == 1


def state_key_of(callback: Any, **arguments: Any) -> str:
    """The key of ``callback``'s state in a checkpoint: its class name and the arguments that tell two apart.

    The format of Lightning's callbacks (``EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}``), so
    that checkpoints written by Lightning's class or by an earlier lit_nnopt load into this one.
    """
    return f"{type(callback).__qualname__}{arguments!r}"
