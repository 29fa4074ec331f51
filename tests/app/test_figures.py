"""The figures: learning curves, confusion matrix and worst-classified images, drawn from plain numbers."""

import struct
from pathlib import Path

import pytest
import torch

from lit_nnopt.app import figures
from lit_nnopt.app.figures import (
    confusion_colour_scale,
    learning_rate_keys,
    new_figure,
    plot_confusion_matrix,
    plot_learning_curves,
    plot_worst_examples,
)
from tests.helpers import PNG_SIGNATURE, png_size


def _history(epochs: int = 4) -> list[dict]:
    return [
        {
            "epoch": epoch,
            "train_loss": 1.0 / (epoch + 1),
            "train_acc": 0.8 + 0.04 * epoch,
            "val_loss": 1.1 / (epoch + 1),
            "val_acc": 0.78 + 0.04 * epoch,
            "lr-Adam": 1e-2 * 0.1**epoch,
            "lr-Adam-momentum": 0.9,
            "lr-Adam-weight_decay": 0.0,
        }
        for epoch in range(epochs)
    ]


def test_learning_curves_are_a_png_of_three_panels(tmp_path):
    path = plot_learning_curves(_history(), tmp_path / "curves.png")
    assert png_size(path) == (1500, 450)  # 15 x 4.5 inches at 100 dpi
    assert path.stat().st_size > 20_000  # three panels of lines and text, not a blank canvas


def test_learning_curves_follow_dpi(tmp_path):
    assert png_size(plot_learning_curves(_history(), tmp_path / "curves.png", dpi=50)) == (750, 225)


def test_learning_curves_draw_one_epoch_and_missing_values(tmp_path):
    history = [{"epoch": 0, "train_loss": 0.5, "train_acc": None, "val_loss": 0.4, "val_acc": 0.9}]
    assert png_size(plot_learning_curves(history, tmp_path / "one.png")) == (1500, 450)


def test_learning_rate_keys_leave_out_momentum_and_weight_decay():
    history = _history() + [{"epoch": 4, "lr-SGD/pg1": 0.1, "lr-SGD/pg1-momentum": 0.9}]
    assert learning_rate_keys(history) == ["lr-Adam", "lr-SGD/pg1"]


def _png_text(path: Path) -> dict[str, str]:
    """The ``tEXt`` chunks of a PNG (keyword: text), where matplotlib writes ``savefig``'s ``metadata``."""
    content = path.read_bytes()
    assert content[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    chunks, offset = {}, 8
    while offset < len(content):
        (length,) = struct.unpack(">I", content[offset : offset + 4])
        kind, data = content[offset + 4 : offset + 8], content[offset + 8 : offset + 8 + length]
        if kind == b"tEXt":
            keyword, _, text = data.partition(b"\0")
            chunks[keyword.decode("latin-1")] = text.decode("latin-1")
        offset += 12 + length
    return chunks


def test_learning_curves_are_titled_with_the_run_not_a_panel(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(figures, "new_figure", lambda *size: drawn.append(new_figure(*size)) or drawn[-1])
    path = plot_learning_curves(_history(), tmp_path / "curves.png", title="run abc123 · sgd.yaml · MLP, SGD lr=0.05")
    assert _png_text(path)["Title"] == "run abc123 · sgd.yaml · MLP, SGD lr=0.05"
    (figure,) = drawn
    panels = [axes.get_title() for axes in figure.axes]
    assert panels == ["accuracy", "loss", "learning rate"]


def test_the_confusion_matrix_carries_the_run_title(tmp_path):
    matrix = torch.eye(10, dtype=torch.int64) * 100
    path = plot_confusion_matrix(matrix, tmp_path / "cm.png", title="run abc123 · adam.yaml")
    assert _png_text(path)["Title"] == "run abc123 · adam.yaml"


def test_learning_curves_need_an_epoch(tmp_path):
    with pytest.raises(ValueError, match="no epoch"):
        plot_learning_curves([], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_confusion_matrix_png(tmp_path):
    matrix = torch.eye(10, dtype=torch.int64) * 90 + 1
    assert png_size(plot_confusion_matrix(matrix, tmp_path / "cm.png")) == (750, 650)


@pytest.mark.parametrize(
    "matrix, names, message",
    [
        (torch.ones(3, 4), None, "must be square"),
        (torch.ones(3, 3), ["a", "b"], "2 names for a 3 x 3"),
    ],
)
def test_confusion_matrix_checks_its_input(tmp_path, matrix, names, message):
    with pytest.raises(ValueError, match=message):
        plot_confusion_matrix(matrix, tmp_path / "cm.png", class_names=names)


def test_worst_examples_grid_is_square_ish(tmp_path):
    count = 10  # 4 columns x 3 rows of 1.6 x 1.8 inches
    path = plot_worst_examples(
        torch.rand(count, 1, 28, 28),
        torch.arange(count),
        torch.arange(count).flip(0),
        torch.rand(count),
        tmp_path / "worst.png",
    )
    assert png_size(path) == (640, 540)


def test_worst_examples_need_matching_lengths(tmp_path):
    with pytest.raises(ValueError, match="one label, prediction and probability per image"):
        plot_worst_examples(torch.rand(3, 28, 28), torch.arange(2), torch.arange(3), torch.rand(3), tmp_path / "w.png")


# -- readable pictures (issue 18) -----------------------------------------------------------


def test_a_single_error_is_coloured_and_an_empty_cell_is_not():
    counts = torch.tensor([[1000, 1, 0], [0, 980, 20], [3, 0, 997]])
    cells, norm, colour_map = confusion_colour_scale(counts)
    colours = colour_map(norm(cells))
    one_error = colours[0, 1]
    assert cells.mask[0, 2] and not cells.mask[0, 1]  # masked: drawn white
    assert sum(1 - channel for channel in one_error[:3]) > 0.1  # visibly blue, not near-white
    assert norm(1) < norm(20) < norm(1000)
