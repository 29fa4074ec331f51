"""RunPictures: the pictures a run leaves in its folder, with or without a W&B account.

After ``fit``: ``learning_curves.png`` (train and validation accuracy and loss per epoch,
the learning rate on its own panel). After ``test``: ``confusion_matrix.png`` and
``worst_test_images.png`` (the test images the model was most sure were something else).
Each picture is titled with the run's folder, config file and model; classes are named
(digits for MNIST, ``T-shirt/top`` ... ``Ankle boot`` for Fashion-MNIST). When the trainer
logs to W&B, the same pictures go there, with the confusion matrix as an interactive chart
and the worst examples as a table. The drawing is in :mod:`lit_nnopt.app.figures`, the W&B
media in :mod:`lit_nnopt.app.wandb_media`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.nn import functional as F
from typing_extensions import override

from lit_nnopt.app import wandb_media
from lit_nnopt.app.figures import plot_confusion_matrix, plot_learning_curves, plot_worst_examples
from lit_nnopt.app.reports import RunSummary
from lit_nnopt.data import class_names_of

LEARNING_CURVES_FILE = "learning_curves.png"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
WORST_EXAMPLES_FILE = "worst_test_images.png"


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

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.learning_curves and _run_summary(trainer) is None:
            raise RuntimeError(
                "RunPictures draws the learning curves from the history the RunSummary callback records, and "
                "the trainer has none. Add `lit_nnopt.app.reports.RunSummary` to `trainer.callbacks`, or pass "
                "`learning_curves=False`."
            )

    @override
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
        wandb_media.log_media(trainer, [wandb_media.picture("learning_curves", path)])

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from torchmetrics.classification import MulticlassConfusionMatrix

        num_classes = int(getattr(pl_module.hparams, "num_classes", 10))
        self._confusion = MulticlassConfusionMatrix(num_classes).to(pl_module.device)
        self._worst = _WorstExamples(self.worst_count)

    @override
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

    @override
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
        media: list[wandb_media.MediaMaker] = []
        title = self._title(log_dir, pl_module)
        names = class_names_of(trainer, matrix.shape[0])
        if self.confusion_matrix:
            path = plot_confusion_matrix(
                matrix, log_dir / CONFUSION_MATRIX_FILE, class_names=names, dpi=self.dpi, title=title
            )
            _announce("confusion matrix", path)
            media.append(wandb_media.confusion_matrix(matrix, path))
        if worst:
            probability, images, labels, predictions = (tensor.cpu() for tensor in worst)
            path = plot_worst_examples(
                images, labels, predictions, probability, log_dir / WORST_EXAMPLES_FILE, self.dpi, names, title
            )
            _announce("worst-classified test images", path)
            media.append(wandb_media.worst_examples(path, images, labels, predictions, probability))
        wandb_media.log_media(trainer, media)

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


def _run_summary(trainer: pl.Trainer) -> RunSummary | None:
    return next((callback for callback in trainer.callbacks if isinstance(callback, RunSummary)), None)


def _log_dir(trainer: pl.Trainer) -> Path:
    return Path(trainer.log_dir or trainer.default_root_dir)


def _announce(what: str, path: Path) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console().print(f"[bold]{what}[/bold]: {escape(str(path))}", highlight=False, soft_wrap=True)
