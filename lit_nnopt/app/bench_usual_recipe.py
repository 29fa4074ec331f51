"""The benchmark's ``usual Lightning`` row: the recipe of most MNIST tutorials, for comparison.

torchvision's ``MNIST`` dataset with ``ToTensor`` and ``Normalize``, a ``DataLoader``, a small
``LightningModule`` and a default ``Trainer``: what a user who does not reach for lit_nnopt writes.
"""

from __future__ import annotations

import gzip
import itertools
import tempfile
import time
from pathlib import Path


def run_usual(data_dir: str, epochs: int, accelerator: str = "cpu", limit_batches: int | None = None) -> list[float]:
    """The usual recipe: torchvision ``MNIST``, ``ToTensor`` and ``Normalize``, a ``DataLoader``, a default Trainer."""
    import lightning.pytorch as pl
    import torch
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, random_split
    from torchvision import datasets, transforms

    from lit_nnopt.networks import MLP

    class Classifier(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = MLP([128], dropout=0.2)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_acc", (self.net(x).argmax(1) == y).float().mean(), prog_bar=True)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    class EpochClock(pl.Callback):
        def __init__(self):
            self.stamps = []

        def on_fit_start(self, trainer, pl_module):
            self.stamps.append(time.perf_counter())

        def on_validation_epoch_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                self.stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as root:
        raw = Path(root) / "MNIST" / "raw"  # torchvision reads only uncompressed files offline
        raw.mkdir(parents=True)
        for source in (Path(data_dir) / "MNIST" / "raw").glob("*.gz"):
            (raw / source.name[:-3]).write_bytes(gzip.decompress(source.read_bytes()))
        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
        full = datasets.MNIST(root, train=True, transform=transform)
        train, val = random_split(full, [48000, 12000], generator=torch.Generator().manual_seed(0))
        clock = EpochClock()
        trainer = pl.Trainer(
            accelerator=accelerator,
            devices=1,
            max_epochs=epochs,
            limit_train_batches=limit_batches,
            default_root_dir=root,
            callbacks=[clock],
            num_sanity_val_steps=0,
        )
        trainer.fit(Classifier(), DataLoader(train, batch_size=64, shuffle=True), DataLoader(val, batch_size=64))
    return [b - a for a, b in itertools.pairwise(clock.stamps)]
