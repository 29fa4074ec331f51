"""Per-epoch speed of lit_nnopt against a hand-written PyTorch loop and the usual Lightning recipe.

    python -m lit_nnopt.bench --data-dir ../shared/data [--epochs 4] [--repeats 3]

All three train the tutorial's MLP (784-128-10, dropout 0.2, Adam 1e-3, batch 64) on the same
48,000 / 12,000 split of the real MNIST and validate after every epoch. Each run is its own
process; runs alternate (reference, lit_nnopt, usual recipe, reference, ...) so that a busy
machine slows all three alike. An epoch's time is measured from the end of one epoch's
validation to the end of the next one's; the first epoch and process start are excluded.
The figures printed are medians over all measured epochs of all repeats.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNNERS = ("reference", "lit_nnopt", "usual")
_RESULT = "epoch seconds: "  # marks the line a runner process reports on; others may print too


def _mlp():
    from lit_nnopt.networks import MLP

    return MLP([128], dropout=0.2)


def run_reference(data_dir: str, epochs: int) -> list[float]:
    """A minimal hand-written loop on in-memory tensors: what an expert writes without a framework."""
    import torch
    from torch.nn import functional as F

    from lit_nnopt.data import MNISTDataModule

    torch.manual_seed(0)
    data = MNISTDataModule(data_dir)
    data.setup("fit")
    (train_x, train_y), (val_x, val_y) = data._splits["train"], data._splits["val"]
    train_x, val_x = train_x.unsqueeze(1).float() / 255, val_x.unsqueeze(1).float() / 255
    net = _mlp()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    stamps = [time.perf_counter()]
    for _ in range(epochs):
        net.train()
        for index in torch.randperm(len(train_y)).split(64):
            loss = F.cross_entropy(net(train_x[index]), train_y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            correct = sum((net(x).argmax(1) == y).sum() for x, y in zip(val_x.split(64), val_y.split(64)))
        print(f"val_acc {correct.item() / len(val_y):.4f}", file=sys.stderr)
        stamps.append(time.perf_counter())
    return [b - a for a, b in itertools.pairwise(stamps)]


def run_lit_nnopt(data_dir: str, epochs: int) -> list[float]:
    """``python -m lit_nnopt fit`` with its defaults: progress bar, checkpoints, logging, summary."""
    from lit_nnopt.cli import LitNNOptCLI

    with tempfile.TemporaryDirectory() as root:
        cli = LitNNOptCLI(
            args=[
                "fit", "--data.data_dir", data_dir, "--trainer.max_epochs", str(epochs),
                "--trainer.default_root_dir", root, "--trainer.num_sanity_val_steps", "0",
                "--model.net", "lit_nnopt.MLP", "--model.net.dropout", "0.2",
                "--optimizer", "torch.optim.Adam", "--optimizer.lr", "0.001",
            ]
        )
        history = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "RunSummary").history
    stamps = [0.0] + [row["elapsed_seconds"] for row in history]
    return [b - a for a, b in itertools.pairwise(stamps)]


def run_usual(data_dir: str, epochs: int) -> list[float]:
    """The usual recipe: torchvision ``MNIST`` with ``ToTensor`` and ``Normalize``, a ``DataLoader``, a default Trainer."""
    import lightning.pytorch as pl
    import torch
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, random_split
    from torchvision import datasets, transforms

    class Classifier(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _mlp()

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
        trainer = pl.Trainer(max_epochs=epochs, default_root_dir=root, callbacks=[clock], num_sanity_val_steps=0)
        trainer.fit(Classifier(), DataLoader(train, batch_size=64, shuffle=True), DataLoader(val, batch_size=64))
    return [b - a for a, b in itertools.pairwise(clock.stamps)]


def _run_in_subprocess(runner: str, data_dir: str, epochs: int) -> list[float]:
    command = [sys.executable, "-m", "lit_nnopt.bench", "--data-dir", data_dir, "--epochs", str(epochs), "--only", runner]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{runner} failed:\n{result.stderr[-3000:]}")
    (line,) = [line for line in result.stdout.splitlines() if line.startswith(_RESULT)]
    return json.loads(line[len(_RESULT) :])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="../shared/data", help="folder holding MNIST (raw or .gz IDX files)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run; the first is not measured")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, alternating")
    parser.add_argument("--skip-usual", action="store_true", help="leave out the slow torchvision recipe")
    parser.add_argument("--only", choices=RUNNERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.only:
        epoch_seconds = {"reference": run_reference, "lit_nnopt": run_lit_nnopt, "usual": run_usual}[args.only](
            args.data_dir, args.epochs
        )
        print(_RESULT + json.dumps(epoch_seconds))
        return

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    runners = [r for r in RUNNERS if not (args.skip_usual and r == "usual")]
    measured: dict[str, list[float]] = {runner: [] for runner in runners}
    with Progress() as progress:
        task = progress.add_task("benchmark", total=args.repeats * len(runners))
        for _ in range(args.repeats):
            for runner in runners:
                progress.update(task, description=f"{runner}")
                measured[runner] += _run_in_subprocess(runner, args.data_dir, args.epochs)[1:]
                progress.advance(task)
    reference = statistics.median(measured["reference"])
    table = Table(title=f"seconds per epoch (median of {args.repeats} x {args.epochs - 1} epochs)")
    for column in ("run", "s/epoch", "ratio to reference"):
        table.add_column(column, justify="right")
    for runner in runners:
        median = statistics.median(measured[runner])
        table.add_row(runner, f"{median:.3f}", f"{median / reference:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
