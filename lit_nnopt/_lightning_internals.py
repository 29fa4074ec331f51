"""Every use of Lightning's private API in lit_nnopt, in one place (checked against Lightning 2.6).

A Lightning upgrade that moves one of these breaks only this module; its tests
(``tests/test_resilience.py``: the bitwise resume) say so at once.

Private: the names here may change without notice.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch


def epoch_aggregates(trainer: pl.Trainer) -> dict[str, dict[str, Any]]:
    """The running aggregates of the values logged with ``self.log(..., on_epoch=True)`` in this training epoch.

    Lightning keeps them in the training epoch loop's private ``_results`` and leaves them out of
    checkpoints. Returned as CPU copies of each result's ``metric_state`` (``value``, ``cumulated_batch_size``).
    """
    return {
        key: {name: _cpu_copy(value) for name, value in result.metric_state.items()}
        for key, result in trainer.fit_loop.epoch_loop._results.items()
        if result.is_tensor and result.meta.on_epoch
    }


def merge_epoch_aggregates(trainer: pl.Trainer, saved: dict[str, dict[str, torch.Tensor]]) -> None:
    """Fold aggregates saved before a resume into those of the first batch after it.

    A mean is a running sum: ``saved + first`` is bitwise the ``sum + first`` that the
    uninterrupted run computes, since floating-point addition is commutative. Entries that the
    first batch did not log are left out, as they would be when they are created later.
    """
    results = trainer.fit_loop.epoch_loop._results
    for key, state in saved.items():
        result = results.get(key)
        if result is None:
            continue
        for name, value in state.items():
            current = getattr(result, name)
            value = value.to(current.device)
            if name == "value" and result.meta.is_max_reduction:
                setattr(result, name, torch.maximum(value, current))
            elif name == "value" and result.meta.is_min_reduction:
                setattr(result, name, torch.minimum(value, current))
            else:
                setattr(result, name, value + current)


def _cpu_copy(value: Any) -> Any:
    if isinstance(value, list):
        return [_cpu_copy(item) for item in value]
    return value.detach().cpu().clone() if isinstance(value, torch.Tensor) else value
