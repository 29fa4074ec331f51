"""The model summary every CLI run prints: the network's layers with their sizes, no metric objects."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.utilities.model_summary import ModelSummary

from lit_nnopt import MNISTClassifier
from lit_nnopt.app.model_summary import NetworkSummary


def test_the_rows_of_metric_objects_are_left_out(monkeypatch):
    shown = {}
    monkeypatch.setattr(RichModelSummary, "summarize", staticmethod(lambda data, *args, **kwargs: shown.update(data)))
    summary_data = [
        (" ", ["0", "1", "2", "3"]),
        ("Name", ["net", "net.layers", "train_loss", "train_acc"]),
        ("Type", ["MLP", "Sequential", "MeanLoss", "Accuracy"]),
        ("Params", ["101 K", "101 K", "0", "0"]),
    ]
    NetworkSummary.summarize(summary_data, 101_770, 101_770, 0.4, {"train": 4, "eval": 0})
    assert shown == {
        " ": ["0", "1"],
        "Name": ["net", "net.layers"],
        "Type": ["MLP", "Sequential"],
        "Params": ["101 K"] * 2,
    }


def test_the_classifier_gives_the_summary_an_mnist_image_for_its_sizes():
    summary = ModelSummary(MNISTClassifier(), max_depth=1)
    assert summary.in_sizes[summary.layer_names.index("net")] == [1, 1, 28, 28]
    assert summary.out_sizes[summary.layer_names.index("net")] == [1, 10]
