"""A synthetic image-classification DataModule: learnable, offline and instant.

{% if cookiecutter.example == "mnist" -%}
``configs/default.yaml`` trains on MNIST through ``lit_nnopt.MNISTDataModule``; the tests
train on this module instead, so they need neither the dataset nor a network. Your own
data goes in a DataModule of the same shape: ``setup`` builds the splits, one loader each.
{%- else -%}
``configs/default.yaml`` trains on it until you have data of your own: write a DataModule
of the same shape next to it, whose ``setup`` reads your files into one (images, labels)
``TensorDataset`` per split, and name it in the config's ``data.class_path``. The tests
keep training on this module, so they need neither a dataset nor a network.
{%- endif %}
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

SPLITS = ("train", "val", "test")


class SyntheticDataModule(pl.LightningDataModule):
    """Random images around one fixed pattern per class, so a classifier can learn them.

    Each class gets a pattern of standard-normal pixels; an image is its class' pattern plus
    Gaussian noise of standard deviation ``noise``. The same ``seed`` gives the same data.

    Args:
        train_size: images in the training split.
        val_size: images in the validation split.
        test_size: images in the test split.
        image_shape: (channels, height, width) of one image.
        num_classes: classes, drawn uniformly.
        noise: standard deviation of the noise around each pattern; larger is harder.
        batch_size: images per batch.
        seed: seed of the patterns, the labels and the noise.

    Raises:
        ValueError: a size, the shape, ``num_classes``, ``noise`` or ``batch_size`` is out of range.

    Example::

        data = SyntheticDataModule(train_size=256, batch_size=32)
        trainer.fit(model, datamodule=data)
    """

    def __init__(
        self,
        train_size: int = 2048,
        val_size: int = 512,
        test_size: int = 512,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        noise: float = 1.0,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__()
        sizes = {"train_size": train_size, "val_size": val_size, "test_size": test_size, "batch_size": batch_size}
        for name, value in sizes.items():
            if value < 1:
                raise ValueError(f"`{name}` must be a positive number of images, got {value}.")
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(
                f"`image_shape` must be three positive sizes (channels, height, width), got {image_shape}."
            )
        if num_classes < 2:
            raise ValueError(f"`num_classes` must be at least 2, got {num_classes}.")
        if noise < 0:
            raise ValueError(f"`noise` must be >= 0, got {noise}.")
        self.save_hyperparameters()
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        self.noise = noise
        self.batch_size = batch_size
        self.seed = seed
        self.datasets: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        generator = torch.Generator().manual_seed(self.seed)
        patterns = torch.randn(self.num_classes, *self.image_shape, generator=generator)
        for split in SPLITS:
            self.datasets[split] = TensorDataset(*self._make_split(patterns, self.sizes[split], generator))

    def _make_split(
        self, patterns: torch.Tensor, size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(self.num_classes, (size,), generator=generator)
        images = patterns[labels] + self.noise * torch.randn(size, *self.image_shape, generator=generator)
        return images, labels

    def _loader(self, split: str) -> DataLoader:
        return DataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=split == "train")

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
