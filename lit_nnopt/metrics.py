"""The epoch metrics of ``MNISTClassifier``: torchmetrics ``Metric`` objects cheap enough to update every batch."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torchmetrics import Metric
from typing_extensions import override


class BatchMetric(Metric):
    """A ``Metric`` whose ``update`` does only its own work, plus torchmetrics' two counters.

    torchmetrics wraps every ``update`` (in its private ``_wrap_update``): it resets the cached
    result and counts the update through ``nn.Module.__setattr__``, and runs the update under a
    grad-mode context. For a network as small as lit_nnopt's MLP that costs as much again as the
    update itself, on every batch. Subclasses detach their inputs, so the grad mode is moot; the
    counters are written as plain attributes, which is where ``nn.Module.__setattr__`` puts them.
    """

    full_state_update = False

    @override
    def _wrap_update(self, update: Callable[..., None]) -> Callable[..., None]:
        attributes = vars(self)

        @functools.wraps(update)
        def counted_update(*args: Any, **kwargs: Any) -> None:
            attributes["_computed"] = None
            attributes["_update_count"] += 1
            update(*args, **kwargs)

        return counted_update


class MeanLoss(BatchMetric):
    """The sample-weighted mean of per-batch mean losses over an epoch, synchronized under DDP."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("loss_sum", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0), dist_reduce_fx="sum")

    @override
    def update(self, loss: torch.Tensor, count: int) -> None:
        # In place: `self.total += n` would go through nn.Module.__setattr__ on every batch.
        self.loss_sum.add_(loss.detach(), alpha=count)
        self.total.add_(count)

    @override
    def compute(self) -> torch.Tensor:
        return self.loss_sum / self.total


class Accuracy(BatchMetric):
    """The fraction of samples whose largest logit is the label's, synchronized under DDP.

    Rather than torchmetrics' ``MulticlassAccuracy``, which validates its inputs and computes
    per-class statistics on every batch: that costs more than the training step of a small network.
    """

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0), dist_reduce_fx="sum")

    @override
    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        self.correct.add_((logits.detach().argmax(dim=1) == target).sum())
        self.total.add_(len(target))

    @override
    def compute(self) -> torch.Tensor:
        return self.correct / self.total
