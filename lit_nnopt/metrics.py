"""The epoch metrics of ``MNISTClassifier``: plain torchmetrics ``Metric`` objects, one tiny ``update`` each."""

from __future__ import annotations

import torch
from torchmetrics import Metric
from typing_extensions import override


class MeanLoss(Metric):
    """The mean of per-batch mean losses over an epoch, each weighted by its batch's samples; synchronized under DDP.

    A non-finite loss makes the epoch's mean non-finite, so a diverged epoch shows as one.
    torchmetrics' ``MeanMetric(loss, weight)`` does not do both: by default it drops NaN values
    (with a warning), and with ``nan_strategy="disable"`` it ignores the weights (torchmetrics 1.9).
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("loss_sum", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0), dist_reduce_fx="sum")

    @override
    def update(self, loss: torch.Tensor, count: int) -> None:
        """Add one batch: its mean ``loss`` over ``count`` samples (torchmetrics runs this without grad)."""
        self.loss_sum.add_(loss, alpha=count)
        self.total.add_(count)

    @override
    def compute(self) -> torch.Tensor:
        return self.loss_sum / self.total


class Accuracy(Metric):
    """The fraction of samples whose largest logit is the label's, synchronized under DDP.

    Rather than torchmetrics' ``MulticlassAccuracy``, which validates its inputs and computes
    per-class statistics on every batch: that costs more than the training step of a small network.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0), dist_reduce_fx="sum")

    @override
    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch: ``logits`` of shape (batch, classes) and the ``target`` class of each sample."""
        self.correct.add_((logits.argmax(dim=1) == target).sum())
        self.total.add_(len(target))

    @override
    def compute(self) -> torch.Tensor:
        return self.correct / self.total
