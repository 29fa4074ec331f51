"""Per-epoch speed of lit_nnopt against a hand-written PyTorch loop and the usual Lightning recipe.

    python -m lit_nnopt.app.bench --data-dir ../shared/data [--epochs 4] [--repeats 3]

All train the tutorial's MLP (784-128-10, dropout 0.2, Adam, batch 64) on the same 48,000 /
12,000 split of the real MNIST and validate after every epoch: the hand-written reference,
``configs/adam.yaml`` as shipped (``StepsPerExecution(steps=32)``), the same config with one
batch per Lightning step, and the usual torchvision-plus-DataLoader recipe. Each run is its
own process; runs alternate (reference, lit_nnopt, ..., reference, ...) so that a busy
machine slows them all alike.

Two figures per run, both medians over the repeats:
- in fit: an epoch's time from the end of one epoch's validation to the end of the next
  one's, the first epoch excluded (median over all measured epochs);
- whole process: (wall time of a process that trains ``--epochs`` epochs - that of one that
  trains 1) / (epochs - 1), so that whatever an epoch costs outside the epoch's clock
  (checkpoint writes, logger flushes, end-of-run work that grows with the epochs) counts.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNNERS = ("reference", "lit_nnopt", "lit_nnopt_1_step", "usual")
LABELS = {
    "reference": "hand-written loop",
    "lit_nnopt": "lit_nnopt adam.yaml",
    "lit_nnopt_1_step": "... 1 batch per step",
    "usual": "usual Lightning",
}
_RESULT = "runner result: "  # marks the line a runner process reports on; others may print too
_EXTRA: dict[str, float] = {}  # what a runner measures besides epoch times


def run_reference(data_dir: str, epochs: int) -> list[float]:
    """A minimal hand-written loop on in-memory tensors: what an expert writes without a framework.

    The data is converted to float once, before training, and validated in batches of 1,000
    (lit_nnopt's ``eval_batch_size``). It imports neither Lightning nor lit_nnopt's Lightning
    parts: only the IDX reader and the MLP.
    """
    import torch
    from torch.nn import functional as F

    from lit_nnopt.idx import parse_idx, read_bytes
    from lit_nnopt.networks import MLP

    torch.manual_seed(0)
    raw = Path(data_dir) / "MNIST" / "raw"
    images = parse_idx(read_bytes(raw / "train-images-idx3-ubyte.gz")).unsqueeze(1).float() / 255
    labels = parse_idx(read_bytes(raw / "train-labels-idx1-ubyte.gz")).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(42))
    val_x, val_y = images[order[:12000]], labels[order[:12000]]
    train_x, train_y = images[order[12000:]], labels[order[12000:]]
    net = MLP([128], dropout=0.2)
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
            batches = zip(val_x.split(1000), val_y.split(1000), strict=True)
            correct = sum((net(x).argmax(1) == y).sum() for x, y in batches)
        print(f"val_acc {correct.item() / len(val_y):.4f}", file=sys.stderr)
        stamps.append(time.perf_counter())
    return [b - a for a, b in itertools.pairwise(stamps)]


def run_lit_nnopt(data_dir: str, epochs: int, *overrides: str) -> list[float]:
    """``python -m lit_nnopt fit --config configs/adam.yaml`` with its defaults: progress bar, checkpoints, logging."""
    import lightning.pytorch as pl

    from lit_nnopt.app.cli import LitNNOptCLI
    from lit_nnopt.app.reports import RunSummary

    class FirstStepClock(pl.Callback):
        at = 0.0

        def on_train_batch_start(self, *args: object) -> None:
            self.at = self.at or time.time()

    clock = FirstStepClock()
    with tempfile.TemporaryDirectory() as root:
        cli = LitNNOptCLI(
            args=[
                "fit",
                "--config",
                str(Path(__file__).parents[1] / "configs" / "adam.yaml"),
                "--data.data_dir",
                data_dir,
                "--trainer.max_epochs",
                str(epochs),
                "--trainer.default_root_dir",
                root,
                *overrides,
            ],
            trainer_defaults={"callbacks": [clock]},
        )
        history = next(cb for cb in cli.trainer.callbacks if isinstance(cb, RunSummary)).history
    _EXTRA["first_step_at"] = clock.at
    stamps = [0.0] + [row["elapsed_seconds"] for row in history]
    return [b - a for a, b in itertools.pairwise(stamps)]


def run_lit_nnopt_1_step(data_dir: str, epochs: int) -> list[float]:
    """The same, with Lightning's own loop taking one batch per training step."""
    return run_lit_nnopt(data_dir, epochs, "--trainer.callbacks.steps", "1")


def run_usual(data_dir: str, epochs: int) -> list[float]:
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
        trainer = pl.Trainer(max_epochs=epochs, default_root_dir=root, callbacks=[clock], num_sanity_val_steps=0)
        trainer.fit(Classifier(), DataLoader(train, batch_size=64, shuffle=True), DataLoader(val, batch_size=64))
    return [b - a for a, b in itertools.pairwise(clock.stamps)]


def _run_in_subprocess(runner: str, data_dir: str, epochs: int) -> dict:
    command = [
        sys.executable,
        "-m",
        "lit_nnopt.app.bench",
        "--data-dir",
        data_dir,
        "--epochs",
        str(epochs),
        "--only",
        runner,
    ]
    launched_at = time.time()
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wall_seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{runner} failed:\n{result.stderr[-3000:]}")
    (line,) = [line for line in result.stdout.splitlines() if line.startswith(_RESULT)]
    report = json.loads(line[len(_RESULT) :])
    if "first_step_at" in report:
        report["seconds_to_first_step"] = report.pop("first_step_at") - launched_at
    report["wall_seconds"] = wall_seconds
    return report


def whole_process_seconds_per_epoch(wall_seconds: float, one_epoch_wall_seconds: float, epochs: int) -> float:
    """What each epoch after the first adds to a whole process' wall time, start-up and end included."""
    return (wall_seconds - one_epoch_wall_seconds) / (epochs - 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="../shared/data", help="folder holding MNIST (raw or .gz IDX files)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (at least 2); the first is not measured")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, alternating")
    parser.add_argument("--skip-usual", action="store_true", help="leave out the slow torchvision recipe")
    parser.add_argument("--only", choices=RUNNERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.only:
        runner = {
            "reference": run_reference,
            "lit_nnopt": run_lit_nnopt,
            "lit_nnopt_1_step": run_lit_nnopt_1_step,
            "usual": run_usual,
        }[args.only]
        epoch_seconds = runner(args.data_dir, args.epochs)
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(_RESULT + json.dumps({"epoch_seconds": epoch_seconds, "peak_rss_mb": peak_rss_mb, **_EXTRA}))
        return
    if args.epochs < 2:
        parser.error(f"--epochs must be at least 2 (the first epoch is not measured), got {args.epochs}")

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    runners = [r for r in RUNNERS if not (args.skip_usual and r == "usual")]
    reports: dict[str, list[dict]] = {runner: [] for runner in runners}
    one_epoch: dict[str, list[dict]] = {runner: [] for runner in runners}
    with Progress() as progress:
        task = progress.add_task("benchmark", total=args.repeats * len(runners) * 2)
        for _ in range(args.repeats):
            for runner in runners:
                progress.update(task, description=runner)
                reports[runner].append(_run_in_subprocess(runner, args.data_dir, args.epochs))
                progress.advance(task)
                one_epoch[runner].append(_run_in_subprocess(runner, args.data_dir, 1))
                progress.advance(task)
    in_fit = {
        runner: statistics.median(t for report in reports[runner] for t in report["epoch_seconds"][1:])
        for runner in runners
    }
    whole = {
        runner: statistics.median(
            whole_process_seconds_per_epoch(long["wall_seconds"], short["wall_seconds"], args.epochs)
            for long, short in zip(reports[runner], one_epoch[runner], strict=True)
        )
        for runner in runners
    }
    table = Table(title=f"seconds per epoch, median of {args.repeats} runs of {args.epochs} epochs (and of 1)")
    for column in ("run", "in fit", "ratio", "whole process", "ratio ", "peak RSS (MB)"):
        table.add_column(column, justify="right")
    for runner in runners:
        peak = max(report["peak_rss_mb"] for report in reports[runner])
        table.add_row(
            LABELS[runner],
            f"{in_fit[runner]:.3f}",
            f"{in_fit[runner] / in_fit['reference']:.2f}",
            f"{whole[runner]:.3f}",
            f"{whole[runner] / whole['reference']:.2f}",
            f"{peak:.0f}",
        )
    console = Console()
    console.print(table)
    to_first_step = statistics.median(report["seconds_to_first_step"] for report in reports["lit_nnopt"])
    console.print(f"lit_nnopt: {to_first_step:.1f} s from process start to the first training step (median)")
    console.print(f"`python -m lit_nnopt --help`: {_help_seconds():.1f} s (median of 3)")


def _help_seconds() -> float:
    times = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lit_nnopt", "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


if __name__ == "__main__":
    main()
