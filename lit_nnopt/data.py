"""MNIST and Fashion-MNIST as a LightningDataModule that serves batches from memory.

Each split is decoded once and converted once into float network inputs (MNIST's 60,000 +
10,000 images take 220 MB); a batch is one index into them. There is no per-sample Dataset,
PIL image or worker process: that path costs about ten times the time of the training step
itself for a network this small.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import torch
from typing_extensions import override

from lit_nnopt.idx import DATASETS, DataError, IDXFile, VerificationCache, load_verified

DATA_DIR_ENV = "LIT_NNOPT_DATA_DIR"
# The one data folder a download may create: a mistyped `data_dir` must not become a new folder.
DEFAULT_DATA_DIR = "./data"


def default_data_dir() -> str:
    return os.environ.get(DATA_DIR_ENV, DEFAULT_DATA_DIR)


# The names of each dataset's classes, indexed by label.
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(str(digit) for digit in range(10)),
    "fashion_mnist": (
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
    ),
}


def class_names_of(trainer: pl.Trainer, num_classes: int = 10) -> list[str]:
    """The class names of the trainer's data (Fashion-MNIST's garments, MNIST's digits); else the class numbers."""
    dataset = getattr(trainer.datamodule, "dataset", None)
    names = CLASS_NAMES.get(dataset, ()) if isinstance(dataset, str) else ()
    return list(names) if len(names) == num_classes else [str(label) for label in range(num_classes)]


def _pixel_mean_and_std(images: torch.Tensor) -> tuple[float, float]:
    """The mean and standard deviation of ``images / 255``; the float copy is freed before the inputs are made."""
    pixels = images.float().div_(255)
    return pixels.mean().item(), pixels.std().item()


class BatchLoader:
    """Shuffled mini-batches of in-memory tensors, sharded for DDP and resumable mid-epoch.

    Serves ``(inputs[index], targets[index])`` for each batch's sample indices, on the
    tensors' device. Each epoch's order is a permutation drawn from ``(seed, epoch)`` alone, so
    it is the same on every rank and after a resume. Under DDP the permutation is padded by
    wrapping around to a multiple of ``world_size`` (as ``DistributedSampler`` does: every rank
    must run the same number of steps) and rank ``r`` takes every ``world_size``-th index from
    ``r``: the shards are disjoint and together cover the split.

    Args:
        inputs: the network inputs, one sample per row (MNIST: float ``(N, 1, 28, 28)``).
        targets: one target per sample (MNIST: int64 labels ``(N,)``).
        batch_size: samples per batch on this rank.
        shuffle: draw a new permutation each epoch; otherwise serve in order.
        seed: seed of the permutations.
        rank: this process' place among the DDP processes.
        world_size: the number of DDP processes.
        current_epoch: the trainer's epoch counter. When given, an epoch starts from that
            epoch's first batch unless the loader was restored mid-way through that very epoch
            (an epoch cut short by ``limit_train_batches`` is not resumed in the next one).
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        current_epoch: Callable[[], int] | None = None,
    ) -> None:
        if len(inputs) != len(targets):
            raise ValueError(
                f"`inputs` has {len(inputs)} samples and `targets` {len(targets)}: give one target per sample."
            )
        self.inputs = inputs
        self.targets = targets
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.current_epoch = current_epoch
        self._next_epoch = 0
        self._resume_batch = 0
        self._served = (0, 0)  # (epoch, batches served in it)

    @property
    def shard_size(self) -> int:
        return math.ceil(len(self.targets) / self.world_size)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.shard_size / self.batch_size)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def indices(self, epoch: int) -> torch.Tensor:
        """The sample indices this rank serves in ``epoch``, in order."""
        count = len(self.targets)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(count, generator=generator)
        else:
            order = torch.arange(count)
        padding = self.shard_size * self.world_size - count
        if padding:
            order = torch.cat([order, order[:padding]])
        return order[self.rank :: self.world_size].to(self.targets.device)

    def __iter__(self):
        if self.current_epoch is not None and self.current_epoch() != self._next_epoch:
            self._next_epoch, self._resume_batch = self.current_epoch(), 0
        epoch, first = self._next_epoch, self._resume_batch
        self._next_epoch, self._resume_batch = epoch + 1, 0
        if self.shuffle:
            order = self.indices(epoch)
        else:  # evaluation: views into the shard, no copy
            inputs, targets = self._unshuffled_shard
        for batch in range(first, self.batches_per_epoch):
            rows = slice(batch * self.batch_size, (batch + 1) * self.batch_size)
            self._served = (epoch, batch + 1)
            if self.shuffle:  # index_select: half the time of `inputs[index]` for a batch of rows
                index = order[rows]
                yield self.inputs.index_select(0, index), self.targets.index_select(0, index)
            else:
                yield inputs[rows], targets[rows]

    @functools.cached_property
    def _unshuffled_shard(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's samples in order, the same every epoch: the tensors themselves on one process."""
        if self.world_size == 1:
            return self.inputs, self.targets
        order = self.indices(0)
        return self.inputs.index_select(0, order), self.targets.index_select(0, order)

    def state_dict(self) -> dict[str, int]:
        epoch, served = self._served
        if served >= self.batches_per_epoch:
            epoch, served = epoch + 1, 0
        return {"epoch": epoch, "batches_served": served, "seed": self.seed, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._next_epoch = state["epoch"]
        self._resume_batch = state["batches_served"]
        self._served = (self._next_epoch, self._resume_batch)


class MNISTDataModule(pl.LightningDataModule):
    """MNIST or Fashion-MNIST, read from IDX files into memory and checked against their MD5.

    Args:
        data_dir: a torchvision root (``<data_dir>/MNIST/raw/``) or a folder holding the four
            IDX files directly, each raw or ``.gz``. Defaults to ``$LIT_NNOPT_DATA_DIR``, else
            ``./data``. A folder that does not exist is refused, not created, unless it is
            ``./data`` and the files are downloaded.
        batch_size: training samples per batch and per device.
        eval_batch_size: validation, test and prediction samples per batch and per device.
            Larger batches only evaluate faster: the metrics are the same.
        val_split: fraction of the 60,000 training images held out for validation.
        val_split_mode: ``random`` (a seeded random subset) or ``last`` (the last fraction of
            the training set, as Keras' ``validation_split`` takes it).
        download: download missing files through torchvision.
        seed: seed of the validation split and of the per-epoch shuffling.
        dataset: ``mnist`` or ``fashion_mnist``.
        standardize: subtract the training mean and divide by its standard deviation after
            scaling pixels to [0, 1]; off, inputs are ``pixel / 255`` as in Keras tutorials.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 1000,
        val_split: float = 0.2,
        val_split_mode: Literal["random", "last"] = "random",
        download: bool = True,
        seed: int = 42,
        dataset: Literal["mnist", "fashion_mnist"] = "mnist",
        standardize: bool = False,
    ) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"`dataset` can be {', '.join(DATASETS)}, got {dataset!r}.")
        if val_split_mode not in ("random", "last"):
            raise ValueError(f"`val_split_mode` can be random, last, got {val_split_mode!r}.")
        if not 0.0 < val_split < 1.0:
            raise ValueError(f"`val_split` must lie strictly between 0 and 1, got {val_split}.")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value <= 0:
                raise ValueError(f"`{name}` must be a positive number of samples, got {value}.")
        self.data_dir = Path(data_dir if data_dir is not None else default_data_dir())
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_split = val_split
        self.val_split_mode = val_split_mode
        self.download = download
        self.seed = seed
        self.dataset = dataset
        self.standardize = standardize
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._loaders: dict[str, BatchLoader] = {}

    # -- finding and reading the files -------------------------------------------------

    @property
    def _files(self) -> tuple[IDXFile, ...]:
        return DATASETS[self.dataset][1]

    def search_dirs(self) -> list[Path]:
        folder = DATASETS[self.dataset][0]
        return [self.data_dir / folder / "raw", self.data_dir]

    def locate(self, file: IDXFile) -> Path | None:
        for directory in self.search_dirs():
            for candidate in (directory / file.name, directory / f"{file.name}.gz"):
                if candidate.is_file():
                    return candidate
        return None

    def missing_files(self) -> list[str]:
        return [file.name for file in self._files if self.locate(file) is None]

    @override
    def prepare_data(self) -> None:
        missing = self.missing_files()
        if not missing:
            return
        if not self.data_dir.is_dir() and self.data_dir != Path(DEFAULT_DATA_DIR):
            raise DataError(self._no_data_dir_message())
        searched = ", ".join(str(d) for d in self.search_dirs())
        if not self.download:
            raise DataError(
                f"{self.dataset} files missing: {', '.join(missing)} (searched {searched}, each raw or .gz). "
                f"Point `--data.data_dir` (or ${DATA_DIR_ENV}) at a folder that holds them, or set "
                "`--data.download true` where a network is available."
            )
        self._download(searched)

    def _no_data_dir_message(self) -> str:
        folder = self.data_dir
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        parent = folder.parent if folder.parent.is_dir() else None
        siblings = [path.name for path in parent.iterdir() if path.is_dir()] if parent else []
        close = difflib.get_close_matches(folder.name, siblings, n=1)
        hint = f" (did you mean {parent / close[0]}?)" if close and parent else ""
        return (
            f"{self.dataset} files missing: the data folder {folder} {what}{hint}. Point `--data.data_dir` (or "
            f"${DATA_DIR_ENV}) at the folder that holds the four IDX files. A folder other than the default "
            f"{DEFAULT_DATA_DIR} is not created, so that a mistyped path does not start a download into a new, "
            "empty folder: to download into a new folder, create it first."
        )

    def _download(self, searched: str) -> None:
        from torchvision import datasets  # only needed the first time, online

        dataset_class = datasets.MNIST if self.dataset == "mnist" else datasets.FashionMNIST
        try:
            dataset_class(root=str(self.data_dir), download=True)
        except Exception as err:  # torchvision raises RuntimeError, URLError, OSError... offline
            raise DataError(
                f"{self.dataset} files are missing (searched {searched}) and downloading them through "
                f"torchvision failed: {' '.join(str(err).split())}. Without a network, copy the four IDX files "
                f"(raw or .gz) into {self.data_dir} or point `--data.data_dir` (or ${DATA_DIR_ENV}) at a folder that "
                "holds them."
            ) from err

    def _read_splits(self) -> None:
        self.prepare_data()  # under DDP every rank checks; only rank 0 may download in prepare_data
        cache = VerificationCache()
        tensors = {}
        for file in self._files:
            path = self.locate(file)
            if path is None:
                raise DataError(f"{file.name} is missing from {', '.join(map(str, self.search_dirs()))}.")
            tensors[file.name] = load_verified(path, file, cache)
        train_x, train_y = tensors["train-images-idx3-ubyte"], tensors["train-labels-idx1-ubyte"].long()
        test_x, test_y = tensors["t10k-images-idx3-ubyte"], tensors["t10k-labels-idx1-ubyte"].long()
        val_index, train_index = self.split_indices(len(train_y))
        images = {"train": train_x[train_index], "val": train_x[val_index], "test": test_x}
        labels = {"train": train_y[train_index], "val": train_y[val_index], "test": test_y}
        mean, std = _pixel_mean_and_std(images["train"]) if self.standardize else (0.0, 1.0)
        # Inputs are `(pixel / 255 - mean) / std`, computed once per split rather than once per batch.
        scale, shift = 1.0 / (255.0 * std), mean / std
        self._splits = {
            split: (images[split].unsqueeze(1).float().mul_(scale).sub_(shift), labels[split]) for split in images
        }

    def split_indices(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(validation, training) indices into the training file."""
        val_count = round(count * self.val_split)
        if self.val_split_mode == "last":
            return torch.arange(count - val_count, count), torch.arange(count - val_count)
        order = torch.randperm(count, generator=torch.Generator().manual_seed(self.seed))
        return order[:val_count].sort().values, order[val_count:].sort().values

    @override
    def setup(self, stage: str | None = None) -> None:
        if not self._splits:
            self._read_splits()
        for split in ("train", "val", "test"):
            name, size = (
                ("batch_size", self.batch_size) if split == "train" else ("eval_batch_size", self.eval_batch_size)
            )
            if size > len(self._splits[split][1]):
                raise DataError(
                    f"`{name}` {size} is larger than the {split} split "
                    f"({len(self._splits[split][1])} samples); choose a smaller `--data.{name}`."
                )

    # -- loaders -----------------------------------------------------------------------

    def _loader(self, split: str) -> BatchLoader:
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        device = trainer.strategy.root_device if trainer else torch.device("cpu")
        loader = self._loaders.get(split)
        if loader is None or (loader.rank, loader.world_size) != (rank, world_size):
            inputs, labels = self._splits[split]
            if device.type == "cuda":  # MNIST's inputs take 220 MB: keep them on the GPU, no copy per batch
                inputs, labels = inputs.to(device), labels.to(device)
            loader = BatchLoader(
                inputs,
                labels,
                self.batch_size if split == "train" else self.eval_batch_size,
                shuffle=split == "train",
                seed=self.seed,
                rank=rank,
                world_size=world_size,
                current_epoch=(lambda: trainer.current_epoch) if trainer and split == "train" else None,
            )
            self._loaders[split] = loader
        return loader

    @override
    def train_dataloader(self) -> BatchLoader:
        return self._loader("train")

    @override
    def val_dataloader(self) -> BatchLoader:
        return self._loader("val")

    @override
    def test_dataloader(self) -> BatchLoader:
        return self._loader("test")

    @override
    def predict_dataloader(self) -> BatchLoader:
        return self._loader("test")
