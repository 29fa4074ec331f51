"""The pictures a run leaves in its folder, with or without a W&B account.

After ``fit``: ``learning_curves.png`` (train and validation accuracy and loss per epoch,
the learning rate on its own panel). After ``test``: ``confusion_matrix.png`` and
``worst_test_images.png`` (the test images the model was most sure were something else).
Each picture is titled with the run's folder, config file and model; classes are named
(digits for MNIST, ``T-shirt/top`` ... ``Ankle boot`` for Fashion-MNIST). When the trainer
logs to W&B, the same pictures go there, with the confusion matrix as an interactive chart
and the worst examples as a table.

Figures are drawn with matplotlib's object-oriented API on the Agg canvas, imported only
when a picture is drawn: no pyplot, no global backend change, no display needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import WandbLogger
from torch.nn import functional as F

from lit_nnopt.app.reports import RunSummary

LEARNING_CURVES_FILE = "learning_curves.png"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
WORST_EXAMPLES_FILE = "worst_test_images.png"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
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


def class_names_of(trainer: pl.Trainer, num_classes: int = 10) -> list[str]:
    """The class names of the trainer's data: Fashion-MNIST's garments, else the class numbers."""
    dataset = getattr(trainer.datamodule, "dataset", None)
    if dataset == "fashion_mnist" and num_classes == len(FASHION_MNIST_CLASSES):
        return list(FASHION_MNIST_CLASSES)
    return [str(i) for i in range(num_classes)]


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


class _WorstExamples:
    """The ``count`` samples with the lowest probability of their true class seen so far."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.tensors: tuple[torch.Tensor, ...] = ()

    def update(self, images: torch.Tensor, labels: torch.Tensor, probabilities: torch.Tensor) -> None:
        label_probability = probabilities.gather(1, labels[:, None]).squeeze(1)
        batch = (label_probability, images, labels, probabilities.argmax(dim=1))
        merged = (
            tuple(torch.cat([kept, new]) for kept, new in zip(self.tensors, batch, strict=True))
            if self.tensors
            else batch
        )
        keep = merged[0].argsort()[: self.count]
        self.tensors = tuple(tensor[keep] for tensor in merged)

    def gather(self, pl_module: pl.LightningModule) -> tuple[torch.Tensor, ...]:
        """All ranks' candidates merged into the worst ``count``; call on every rank."""
        tensors = self.tensors
        if pl_module.trainer.world_size > 1:
            tensors = tuple(pl_module.all_gather(tensor).flatten(0, 1) for tensor in tensors)
            keep = tensors[0].argsort()[: self.count]
            tensors = tuple(tensor[keep] for tensor in tensors)
        return tensors


class RunPictures(pl.Callback):
    """Writes the run's pictures into ``trainer.log_dir`` and, when logging to W&B, logs them there.

    After ``fit``: ``learning_curves.png``, from the history of the ``RunSummary`` callback.
    After ``test``: ``confusion_matrix.png`` and ``worst_test_images.png``; on W&B also an
    interactive confusion matrix and a table of the worst-classified test images. Only rank
    zero writes. Each picture is titled ``<run folder> · <config> · <model>``.

    Args:
        learning_curves: draw the learning curves after ``fit``.
        confusion_matrix: draw the confusion matrix after ``test``.
        worst_count: how many worst-classified test images to show; 0 for none.
        dpi: resolution of the PNGs.
        config_name: the config named in the titles, e.g. ``adam.yaml`` (the CLI sets it
            from ``--config``); None names only the run and the model.

    Raises:
        ValueError: if ``worst_count`` is negative or ``dpi`` is not positive.
        RuntimeError: at ``fit``, if learning curves are asked for and the trainer has no
            ``RunSummary`` callback.

    Example::

        trainer:
          callbacks:
            - class_path: lit_nnopt.app.RunPictures
              init_args: {worst_count: 36}
    """

    def __init__(
        self,
        learning_curves: bool = True,
        confusion_matrix: bool = True,
        worst_count: int = 25,
        dpi: int = 100,
        config_name: str | None = None,
    ) -> None:
        if worst_count < 0:
            raise ValueError(f"`worst_count` must be >= 0 (0 shows none), got {worst_count}.")
        if dpi <= 0:
            raise ValueError(f"`dpi` must be a positive number of pixels per inch, got {dpi}.")
        self.learning_curves = learning_curves
        self.confusion_matrix = confusion_matrix
        self.worst_count = worst_count
        self.dpi = dpi
        self.config_name = config_name
        self._confusion: Any = None
        self._worst = _WorstExamples(worst_count)

    @property
    def _draws_test_pictures(self) -> bool:
        return self.confusion_matrix or self.worst_count > 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.learning_curves and _run_summary(trainer) is None:
            raise RuntimeError(
                "RunPictures draws the learning curves from the history the RunSummary callback records, and "
                "the trainer has none. Add `lit_nnopt.app.reports.RunSummary` to `trainer.callbacks`, or pass "
                "`learning_curves=False`."
            )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        summary = _run_summary(trainer)
        if not (self.learning_curves and summary and summary.history):
            return
        log_dir = _log_dir(trainer)  # a broadcast under DDP: every rank must ask
        if not trainer.is_global_zero:
            return
        title = self._title(log_dir, pl_module)
        path = plot_learning_curves(summary.history, log_dir / LEARNING_CURVES_FILE, self.dpi, title=title)
        _announce("learning curves", path)
        _log_to_wandb(trainer, lambda wandb: {"learning_curves": wandb.Image(str(path))})

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from torchmetrics.classification import MulticlassConfusionMatrix

        num_classes = int(getattr(pl_module.hparams, "num_classes", 10))
        self._confusion = MulticlassConfusionMatrix(num_classes).to(pl_module.device)
        self._worst = _WorstExamples(self.worst_count)

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._draws_test_pictures:
            return
        images, labels = batch
        # test_step returns nothing, so predict again; for MNIST this costs a fraction of a second.
        probabilities = F.softmax(pl_module(images), dim=1)
        self._confusion.update(probabilities.argmax(dim=1), labels)
        if self.worst_count:
            self._worst.update(images, labels, probabilities)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._draws_test_pictures:
            return
        matrix = self._confusion.compute().cpu()  # sums the ranks' counts under DDP: every rank calls it
        worst = self._worst.gather(pl_module) if self.worst_count and self._worst.tensors else ()
        log_dir = _log_dir(trainer)  # a broadcast under DDP: every rank must ask
        if trainer.is_global_zero:
            self._draw_test_pictures(trainer, pl_module, log_dir, matrix, worst)

    def _draw_test_pictures(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        log_dir: Path,
        matrix: torch.Tensor,
        worst: tuple[torch.Tensor, ...],
    ) -> None:
        logged: dict[str, Any] = {}
        title = self._title(log_dir, pl_module)
        names = class_names_of(trainer, matrix.shape[0])
        if self.confusion_matrix:
            path = plot_confusion_matrix(
                matrix, log_dir / CONFUSION_MATRIX_FILE, class_names=names, dpi=self.dpi, title=title
            )
            _announce("confusion matrix", path)
            logged["confusion_matrix"] = path
        if worst:
            probability, images, labels, predictions = (tensor.cpu() for tensor in worst)
            path = plot_worst_examples(
                images, labels, predictions, probability, log_dir / WORST_EXAMPLES_FILE, self.dpi, names, title
            )
            _announce("worst-classified test images", path)
            logged["worst"] = (path, images, labels, predictions, probability)
        _log_to_wandb(trainer, lambda wandb: _wandb_test_media(wandb, matrix, logged))

    def _title(self, log_dir: Path, pl_module: pl.LightningModule) -> str:
        parts = [f"run {log_dir.name}" if log_dir.name else str(log_dir), self.config_name, _describe_model(pl_module)]
        return " · ".join(part for part in parts if part)


def _describe_model(pl_module: pl.LightningModule) -> str:
    """``MLP, Adam lr=0.002`` from the module's hyperparameters (class paths and their arguments)."""
    hparams = dict(getattr(pl_module, "hparams", {}) or {})
    net = getattr(pl_module, "net", None)
    parts = (
        [type(net).__name__] if isinstance(net, torch.nn.Module) and not isinstance(hparams.get("net"), dict) else []
    )
    for key in ("net", "optimizer"):
        value = hparams.get(key)
        if isinstance(value, dict) and isinstance(value.get("class_path"), str):
            text = value["class_path"].rsplit(".", 1)[-1]
            lr = (value.get("init_args") or {}).get("lr")
            parts.append(f"{text} lr={lr:g}" if isinstance(lr, (int, float)) else text)
    return ", ".join(parts)


def _wandb_test_media(wandb: Any, matrix: torch.Tensor, logged: dict[str, Any]) -> dict[str, Any]:
    media: dict[str, Any] = {}
    if "confusion_matrix" in logged:
        size = matrix.shape[0]
        table = wandb.Table(
            columns=["Actual", "Predicted", "nPredictions"],
            data=[[str(i), str(j), int(matrix[i, j])] for i in range(size) for j in range(size)],
        )
        media["test_confusion_matrix"] = wandb.plot_table(
            "wandb/confusion_matrix/v1",
            table,
            {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
            {"title": "test confusion matrix"},
        )
        media["test_confusion_matrix_image"] = wandb.Image(str(logged["confusion_matrix"]))
    if "worst" in logged:
        path, images, labels, predictions, probability = logged["worst"]
        rows = [
            [wandb.Image(_to_uint8(image)), int(label), int(prediction), float(p)]
            for image, label, prediction, p in zip(images, labels, predictions, probability, strict=True)
        ]
        media["test_worst_digits"] = wandb.Table(columns=["image", "label", "prediction", "p_label"], data=rows)
        media["test_worst_digits_grid"] = wandb.Image(str(path))
    return media


def _to_uint8(image: torch.Tensor) -> Any:
    # Inputs may be standardized (negative values); stretch each image to the full grey range.
    pixels = image.reshape(image.shape[-2:]).float()
    pixels = (pixels - pixels.min()) / (pixels.max() - pixels.min()).clamp(min=1e-8)
    return (pixels * 255).round().to(torch.uint8).numpy()


def _run_summary(trainer: pl.Trainer) -> RunSummary | None:
    return next((callback for callback in trainer.callbacks if isinstance(callback, RunSummary)), None)


def _log_dir(trainer: pl.Trainer) -> Path:
    return Path(trainer.log_dir or trainer.default_root_dir)


def _log_to_wandb(trainer: pl.Trainer, media: Any) -> None:
    """Log ``media(wandb)`` to every W&B logger of the trainer; rank zero only."""
    loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
    if not loggers:
        return
    import wandb

    values = media(wandb)
    for logger in loggers:
        logger.experiment.log({**values, "trainer/global_step": trainer.global_step})


def _announce(what: str, path: Path) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console().print(f"[bold]{what}[/bold]: {escape(str(path))}", highlight=False, soft_wrap=True)
