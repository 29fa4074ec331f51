"""The LightningModule: a small MLP classifier, its loss, its metrics and its optimizer."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy


class Classifier(pl.LightningModule):
    """Flatten, one hidden ReLU layer with dropout, one logit per class; cross-entropy loss.

    Logs ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``, ``test_loss`` and
    ``test_acc`` once per epoch; the callbacks in ``configs/default.yaml`` monitor ``val_loss``.

    Args:
        input_shape: (channels, height, width) of one image.
        hidden_size: units of the hidden layer.
        dropout: dropout rate after the hidden layer.
        num_classes: classes to tell apart.
        optimizer: builds the optimizer from the parameters. In YAML, the ``class_path`` of
            any ``torch.optim`` optimizer and its ``init_args`` (without ``params``).

    Raises:
        ValueError: ``input_shape``, ``hidden_size``, ``dropout`` or ``num_classes`` is out of range.

    Example::

        model = Classifier(hidden_size=64, optimizer=partial(torch.optim.SGD, lr=0.1))
        trainer.fit(model, datamodule=SyntheticDataModule())
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        hidden_size: int = 128,
        dropout: float = 0.2,
        num_classes: int = 10,
        optimizer: OptimizerCallable = torch.optim.Adam,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3 or min(input_shape) < 1:
            raise ValueError(
                f"`input_shape` must be three positive sizes (channels, height, width), got {input_shape}."
            )
        if hidden_size < 1:
            raise ValueError(f"`hidden_size` must be a positive number of units, got {hidden_size}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must lie in [0, 1), got {dropout}.")
        if num_classes < 2:
            raise ValueError(f"`num_classes` must be at least 2, got {num_classes}.")
        self.save_hyperparameters()
        self.optimizer = optimizer
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), hidden_size),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, num_classes),
        )
        # One metric object per split: each accumulates over its own epoch.
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        accuracy = getattr(self, f"{split}_acc")
        accuracy.update(logits, labels)
        self.log(f"{split}_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log(f"{split}_acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch[0]).argmax(dim=1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer(self.parameters())
