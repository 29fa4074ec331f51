"""The figures a run's pictures are made of: pure functions from numbers to PNG files.

Learning curves (accuracy, loss and learning rate per epoch), a confusion matrix coloured on a
log scale, and a grid of the worst-classified images. Each draws with matplotlib's
object-oriented API on the Agg canvas, imported only when a figure is drawn: no pyplot, no
global backend change, no display needed. ``compare`` draws its figure with the same helpers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

_LR_SUFFIXES = ("-momentum", "-weight_decay")


def new_figure(width: float, height: float) -> Any:
    """A matplotlib figure that needs no display (no pyplot, no global backend)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(figure: Any, path: Path, dpi: int, title: str | None = None) -> Path:
    """Write ``figure`` as a PNG; ``title`` also goes into the file's ``Title`` text chunk, which viewers list."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, metadata={"Title": title} if title else None)
    return path


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(row["epoch"], row[key]) for row in history if row.get(key) is not None]
    return [epoch for epoch, _ in points], [float(value) for _, value in points]


def learning_rate_keys(history: Sequence[dict[str, Any]]) -> list[str]:
    """The learning-rate columns LearningRateMonitor left in a history (``lr-Adam``, ``lr-SGD/pg1``...)."""
    keys = {key for row in history for key in row if key.startswith("lr-") and not key.endswith(_LR_SUFFIXES)}
    return sorted(keys)


def plot_learning_curves(
    history: Sequence[dict[str, Any]], path: str | Path, dpi: int = 100, title: str | None = None
) -> Path:
    """Draw accuracy, loss and learning rate per epoch, train and validation side by side.

    Args:
        history: one dict per epoch with ``epoch`` and metrics, as ``RunSummary.history``
            and ``summary.json``'s ``history`` hold them.
        path: the PNG to write.
        dpi: pixels per inch of the 15 x 4.5 inch figure.
        title: above the three panels, e.g. the run and its config.

    Raises:
        ValueError: if ``history`` holds no epoch.
    """
    if not history:
        raise ValueError("The history holds no epoch, so there is no learning curve to draw; train at least one epoch.")
    figure = new_figure(15, 4.5)
    accuracy, loss, rate = figure.subplots(1, 3)
    for axes, metric, panel_title in ((accuracy, "acc", "accuracy"), (loss, "loss", "loss")):
        for split, style in (("train", "-o"), ("val", "-s")):
            epochs, values = _series(history, f"{split}_{metric}")
            if epochs:
                axes.plot(epochs, values, style, markersize=3, label=f"{split}_{metric}")
        _decorate(axes, panel_title)
    _plot_learning_rate(rate, history)
    epochs = [row["epoch"] for row in history]
    for axes in (accuracy, loss, rate):
        axes.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)  # whole epochs on the axis, even for one epoch
    if title:
        figure.suptitle(title)
    return save_figure(figure, Path(path), dpi, title)


def _plot_learning_rate(axes: Any, history: Sequence[dict[str, Any]]) -> None:
    keys = learning_rate_keys(history)
    values: list[float] = []
    for key in keys:
        epochs, series = _series(history, key)
        axes.plot(epochs, series, "-o", markersize=3, label=key)
        values += series
    if not values:
        axes.text(
            0.5,
            0.5,
            "not recorded\n(LearningRateMonitor needs a logger)",
            ha="center",
            va="center",
            transform=axes.transAxes,
        )
    elif min(values) > 0 and max(values) / min(values) > 10:
        axes.set_yscale("log")  # schedules that decay by decades are flat lines on a linear axis
    _decorate(axes, "learning rate")


def style_epoch_axes(axes: Any, title: str) -> None:
    """Title, an ``epoch`` x axis with whole-number ticks, and a light grid."""
    axes.set_title(title)
    axes.set_xlabel("epoch")
    axes.grid(alpha=0.3)
    axes.xaxis.get_major_locator().set_params(integer=True)


def save_validation_figure(figure: Any, accuracy: Any, loss: Any, path: Path) -> None:
    """Style the validation accuracy and loss panels, put the legend of their lines beside them, and save."""
    style_epoch_axes(accuracy, "validation accuracy")
    style_epoch_axes(loss, "validation loss")
    handles, labels = accuracy.get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside right upper")
    save_figure(figure, path, dpi=110)


def _decorate(axes: Any, title: str) -> None:
    style_epoch_axes(axes, title)
    if axes.get_legend_handles_labels()[0]:
        axes.legend()


def plot_confusion_matrix(
    matrix: torch.Tensor,
    path: str | Path,
    class_names: Sequence[str] | None = None,
    dpi: int = 100,
    title: str | None = None,
) -> Path:
    """Draw a confusion matrix: counts in the cells, coloured on a log scale, empty cells white.

    On a linear scale the diagonal (about 1000 per class) takes the whole colour range and
    the errors (1 to 20 per cell) all look white; on a log scale a single error is visible.

    Args:
        matrix: ``(C, C)`` counts, rows the true class and columns the prediction.
        path: the PNG to write.
        class_names: the tick labels; ``0 .. C-1`` if None.
        dpi: pixels per inch of the 7.5 x 6.5 inch figure.
        title: a line above the accuracy, e.g. the run and its config.

    Raises:
        ValueError: if ``matrix`` is not square or ``class_names`` does not match it.
    """
    counts = torch.as_tensor(matrix).detach().cpu().to(torch.int64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(
            f"A confusion matrix must be square (true class x prediction), got shape {tuple(counts.shape)}."
        )
    size = counts.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(size)]
    if len(names) != size:
        raise ValueError(f"`class_names` has {len(names)} names for a {size} x {size} confusion matrix.")
    total = int(counts.sum())
    accuracy = counts.diagonal().sum().item() / max(total, 1)
    figure = new_figure(7.5, 6.5)
    axes = figure.subplots()
    cells, norm, colours = confusion_colour_scale(counts)
    image = axes.imshow(cells, cmap=colours, norm=norm)
    figure.colorbar(image, ax=axes, label="count (log scale)")
    for row in range(size):
        for column in range(size):
            count = int(counts[row, column])
            color = "white" if count and norm(count) > 0.6 else "black"
            axes.text(column, row, str(count) if count else "", ha="center", va="center", fontsize=8, color=color)
    long_names = max(len(name) for name in names) > 3  # Fashion-MNIST's would overlap side by side
    axes.set_xticks(range(size), names, rotation=40 if long_names else 0, ha="right" if long_names else "center")
    axes.set_yticks(range(size), names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    heading = f"test confusion matrix: accuracy {accuracy:.2%} of {total}"
    axes.set_title(f"{title}\n{heading}" if title else heading)
    return save_figure(figure, Path(path), dpi, title)


def confusion_colour_scale(counts: torch.Tensor) -> tuple[Any, Any, Any]:
    """The cells to colour (empty ones masked: white), a log scale from 1 to the largest count, the colours.

    The colours are matplotlib's ``Blues`` without its near-white quarter, so that a cell
    holding a single error is light blue, not as white as an empty one.
    """
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap, LogNorm

    cells = np.ma.masked_equal(counts.numpy().astype(float), 0)  # log(0) has no colour
    colours = ListedColormap(colormaps["Blues"](np.linspace(0.25, 1.0, 256)))
    return cells, LogNorm(vmin=1, vmax=max(float(counts.max()), 10.0)), colours


def plot_worst_examples(
    images: torch.Tensor,
    labels: torch.Tensor,
    predictions: torch.Tensor,
    label_probabilities: torch.Tensor,
    path: str | Path,
    dpi: int = 100,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Draw a grid of images, each titled ``true -> predicted`` with the probability given to the truth.

    Args:
        images: ``(N, H, W)`` or ``(N, 1, H, W)``.
        labels: ``(N,)`` true classes.
        predictions: ``(N,)`` predicted classes.
        label_probabilities: ``(N,)`` the probability the model gave the true class.
        path: the PNG to write.
        dpi: pixels per inch; each image takes 1.6 x 1.8 inches.
        class_names: names of the classes, indexed by class number; the numbers if None.
        title: a line above the grid's own heading, e.g. the run and its config.

    Raises:
        ValueError: if there is no image or the four tensors do not have the same length.
    """
    count = len(images)
    if count == 0 or not len(labels) == len(predictions) == len(label_probabilities) == count:
        raise ValueError(
            f"Need one label, prediction and probability per image, got {count} images, {len(labels)} labels, "
            f"{len(predictions)} predictions and {len(label_probabilities)} probabilities."
        )
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    figure = new_figure(1.6 * columns, 1.8 * rows)
    grid = figure.subplots(rows, columns, squeeze=False)
    pixels = images.detach().cpu().reshape(count, *images.shape[-2:]).float()

    def name(label: torch.Tensor) -> str:
        index = int(label)
        return class_names[index] if class_names is not None and index < len(class_names) else str(index)

    for index, axes in enumerate(grid.flat):
        axes.set_axis_off()
        if index < count:
            axes.imshow(pixels[index].numpy(), cmap="gray")
            axes.set_title(
                f"{name(labels[index])} → {name(predictions[index])}\np={float(label_probabilities[index]):.2g}",
                fontsize=7,
            )
    heading = "worst-classified test images: true → predicted, p = probability of the true class"
    figure.suptitle(f"{title}\n{heading}" if title else heading, fontsize=9)
    return save_figure(figure, Path(path), dpi, title)
