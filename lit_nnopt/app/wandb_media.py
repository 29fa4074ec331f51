"""A run's pictures as W&B media: images, an interactive confusion matrix, a table of the worst images.

Each maker below returns a function of the ``wandb`` module, so that ``wandb`` is imported
only when the trainer has a W&B logger to send the media to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import WandbLogger

MediaMaker = Callable[[Any], dict[str, Any]]


def log_media(trainer: pl.Trainer, makers: Sequence[MediaMaker]) -> None:
    """Log the media of every maker to every W&B logger of the trainer, at its global step; call on rank zero."""
    loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
    if not loggers or not makers:
        return
    import wandb

    values: dict[str, Any] = {}
    for make in makers:
        values.update(make(wandb))
    for logger in loggers:
        logger.experiment.log({**values, "trainer/global_step": trainer.global_step})


def picture(key: str, png: Path) -> MediaMaker:
    """A PNG file logged as a W&B image under ``key``."""
    return lambda wandb: {key: wandb.Image(str(png))}


def confusion_matrix(matrix: torch.Tensor, png: Path) -> MediaMaker:
    """W&B's interactive confusion-matrix chart of ``(C, C)`` counts (rows true, columns predicted), and its PNG."""

    def make(wandb: Any) -> dict[str, Any]:
        size = matrix.shape[0]
        table = wandb.Table(
            columns=["Actual", "Predicted", "nPredictions"],
            data=[[str(i), str(j), int(matrix[i, j])] for i in range(size) for j in range(size)],
        )
        chart = wandb.plot_table(
            "wandb/confusion_matrix/v1",
            table,
            {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
            {"title": "test confusion matrix"},
        )
        return {"test_confusion_matrix": chart, "test_confusion_matrix_image": wandb.Image(str(png))}

    return make


def worst_examples(
    png: Path,
    images: torch.Tensor,
    labels: torch.Tensor,
    predictions: torch.Tensor,
    label_probabilities: torch.Tensor,
) -> MediaMaker:
    """A W&B table of the worst-classified images (image, label, prediction, p of the label), and the grid PNG."""

    def make(wandb: Any) -> dict[str, Any]:
        rows = [
            [wandb.Image(_to_uint8(image)), int(label), int(prediction), float(probability)]
            for image, label, prediction, probability in zip(
                images, labels, predictions, label_probabilities, strict=True
            )
        ]
        return {
            "test_worst_digits": wandb.Table(columns=["image", "label", "prediction", "p_label"], data=rows),
            "test_worst_digits_grid": wandb.Image(str(png)),
        }

    return make


def _to_uint8(image: torch.Tensor) -> Any:
    # Inputs may be standardized (negative values); stretch each image to the full grey range.
    pixels = image.reshape(image.shape[-2:]).float()
    pixels = (pixels - pixels.min()) / (pixels.max() - pixels.min()).clamp(min=1e-8)
    return (pixels * 255).round().to(torch.uint8).numpy()
