"""The model summary of every CLI run: the network's layers, without the metric objects."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichModelSummary
from torchmetrics import Metric
from typing_extensions import override


class NetworkSummary(RichModelSummary):
    """Lightning's ``RichModelSummary`` without the rows of torchmetrics ``Metric`` objects.

    A module that keeps one loss and one accuracy metric per split, as ``MNISTClassifier``
    does, has six such rows of no parameters, which say nothing about the network.
    """

    @staticmethod
    @override
    def summarize(summary_data: list[tuple[str, list[str]]], *args: Any, **kwargs: Any) -> None:
        metric_types = _subclass_names(Metric)
        types = dict(summary_data).get("Type", [])
        rows = [row for row, type_name in enumerate(types) if type_name not in metric_types]
        without_metrics = [(column, [values[row] for row in rows]) for column, values in summary_data]
        RichModelSummary.summarize(without_metrics, *args, **kwargs)


def _subclass_names(cls: type) -> set[str]:
    names = set()
    for subclass in cls.__subclasses__():
        names |= {subclass.__name__, *_subclass_names(subclass)}
    return names
