"""Per-epoch speed of lit_nnopt against a hand-written PyTorch loop and the usual Lightning recipe.

    python -m lit_nnopt bench [--data-dir ../shared/data] [--epochs 4] [--repeats 3]
        [--accelerator cpu|gpu] [--json PATH]

All train the tutorial's MLP (784-128-10, dropout 0.2, Adam, batch 64) on the same 48,000 /
12,000 split of the real MNIST and validate after every epoch: the hand-written reference,
``configs/adam.yaml`` as shipped (``StepsPerExecution(steps=128)``), the same config with one
batch per Lightning step, and the usual torchvision-plus-DataLoader recipe. The reference
does the same work as ``adam.yaml`` (Keras' initialisation, fused Adam at lr 0.002 with its
decay, standardized inputs, the training and validation loss and accuracy of each epoch).
Each run is its own process; runs alternate (reference, lit_nnopt, ..., reference, ...) so
that a busy machine slows them all alike.

``--accelerator gpu`` runs every one of them on the same GPU: the reference keeps the split
on the device as float and reads the clock after ``torch.cuda.synchronize()``, lit_nnopt gets
``--trainer.accelerator gpu --trainer.devices 1`` and the usual recipe
``Trainer(accelerator="gpu", devices=1)``.

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
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: `bench --help` starts at once
    import torch

RUNNERS = ("reference", "lit_nnopt", "lit_nnopt_1_step", "usual")
LABELS = {
    "reference": "hand-written loop",
    "lit_nnopt": "lit_nnopt adam.yaml",
    "lit_nnopt_1_step": "... 1 batch per step",
    "usual": "usual Lightning",
}
ACCELERATORS = ("cpu", "gpu")
_RESULT = "runner result: "  # marks the line a runner process reports on; others may print too
_EXTRA: dict[str, float] = {}  # what a runner measures besides epoch times
_DATA_DIRS = ("../shared/data", "shared/data", "data")  # the project's shared copy, then a checkout's own
_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")


@dataclass
class Split:
    """The tutorial's 48,000 / 12,000 split of MNIST's training file, as float tensors on one device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor


def load_split(data_dir: str, device: torch.device, seed: int = 42, standardize: bool = True) -> Split:
    """The training file split 48,000 / 12,000 by a seeded permutation, as float, placed on ``device`` once.

    Pixels are scaled to [0, 1], then, with ``standardize``, standardized as ``data.standardize:
    true`` does: zero mean, unit variance over the training part.
    """
    import torch

    from lit_nnopt.idx import parse_idx, read_bytes

    raw = Path(data_dir) / "MNIST" / "raw"
    images = parse_idx(read_bytes(raw / _MNIST_FILES[0])).unsqueeze(1).to(device).float().div_(255)
    labels = parse_idx(read_bytes(raw / _MNIST_FILES[1])).to(device).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).to(device)
    val, train = order[:12000], order[12000:]
    if standardize:
        images = (images - images[train].mean()) / images[train].std()
    return Split(images[train], labels[train], images[val], labels[val])


def train_by_hand(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    split: Split,
    epochs: int,
    batch_size: int,
    epoch_scheduler: Any = None,
    step_scheduler: Any = None,
    limit_batches: int | None = None,
    limit_val_batches: int | None = None,
) -> tuple[list[float], float]:
    """An expert's loop on tensors already on the device: seconds per epoch (validation included), last val_acc.

    It does the work lit_nnopt's ``MNISTClassifier`` does: per epoch, the mean training loss and
    accuracy, accumulated on the device batch by batch, and the validation loss and accuracy, in
    batches of 1,000 (lit_nnopt's ``eval_batch_size``). Batches are ``index_select`` rows of the
    split, drawn on its device; the loop syncs with the host once per epoch, and the clock is read
    only after ``torch.cuda.synchronize()`` on a GPU.
    """
    import torch
    from torch.nn import functional as F

    device = split.train_x.device
    _synchronize(device)
    stamps = [time.perf_counter()]
    accuracy = 0.0
    for _ in range(epochs):
        net.train()
        train_loss, train_correct = torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device)
        trained = 0
        for index in torch.randperm(len(split.train_y), device=device).split(batch_size)[:limit_batches]:
            x, y = split.train_x.index_select(0, index), split.train_y.index_select(0, index)
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step_scheduler is not None:
                step_scheduler.step()
            train_loss += loss.detach() * len(y)
            train_correct += (logits.detach().argmax(1) == y).sum()
            trained += len(y)
        if epoch_scheduler is not None:
            epoch_scheduler.step()
        net.eval()
        with torch.no_grad():
            batches = list(zip(split.val_x.split(1000), split.val_y.split(1000), strict=True))[:limit_val_batches]
            val_loss, val_correct = torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device)
            for x, y in batches:
                logits = net(x)
                val_loss += F.cross_entropy(logits, y, reduction="sum")
                val_correct += (logits.argmax(1) == y).sum()
        validated = sum(len(y) for _, y in batches)
        accuracy = val_correct.item() / validated
        print(
            f"train_loss {train_loss.item() / trained:.4f} train_acc {train_correct.item() / trained:.4f} "
            f"val_loss {val_loss.item() / validated:.4f} val_acc {accuracy:.4f}",
            file=sys.stderr,
        )
        _synchronize(device)
        stamps.append(time.perf_counter())
    return [b - a for a, b in itertools.pairwise(stamps)], accuracy


def _synchronize(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def torch_device(accelerator: str) -> torch.device:
    """``cpu`` or ``gpu`` (the current CUDA device) as a torch device."""
    import torch

    return torch.device("cuda" if accelerator == "gpu" else "cpu")


def run_reference(
    data_dir: str, epochs: int, accelerator: str = "cpu", limit_batches: int | None = None
) -> list[float]:
    """A minimal hand-written loop of ``configs/adam.yaml``'s recipe: what an expert writes without a framework.

    The same work as lit_nnopt's run: the MLP with Keras' initialisation, fused Adam (lit_nnopt
    asks for ``fused=True`` by default) at lr 0.002, decayed by 0.85 per epoch, standardized
    inputs, batch 64. The split is placed on the device as float once, before training. It
    imports neither Lightning nor lit_nnopt's Lightning parts: only the IDX reader, the MLP and
    the thread rule the CLI follows (fewer torch threads on a busy machine), so both sides
    run with the same threads.
    """
    import torch

    from lit_nnopt.app.environment import fit_threads_to_free_cpus
    from lit_nnopt.networks import MLP

    fit_threads_to_free_cpus()
    device = torch_device(accelerator)
    torch.manual_seed(0)
    split = load_split(data_dir, device)
    net = MLP([128], dropout=0.2, init="keras").to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.002, fused=True)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.85)
    epoch_seconds, _ = train_by_hand(net, optimizer, split, epochs, 64, scheduler, limit_batches=limit_batches)
    return epoch_seconds


def adam_config() -> Path:
    """``configs/adam.yaml`` of the repository this package runs from, or of the working directory.

    Raises:
        SystemExit: neither has it, as for a package installed from a wheel.
    """
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / "configs" / "adam.yaml").is_file():
            return root / "configs" / "adam.yaml"
    raise SystemExit(
        "lit_nnopt bench: error: the benchmark trains configs/adam.yaml, which comes with a clone of the "
        "lit_nnopt repository, not with the installed package, and there is none beside this package or in "
        f"the working directory ({Path.cwd()}). Run it from the root of a clone."
    )


def run_lit_nnopt(
    data_dir: str, epochs: int, accelerator: str = "cpu", limit_batches: int | None = None, *overrides: str
) -> list[float]:
    """``python -m lit_nnopt fit --config configs/adam.yaml`` with its defaults: progress bar, checkpoints, logging."""
    import lightning.pytorch as pl

    from lit_nnopt.app.cli import LitNNOptCLI
    from lit_nnopt.app.reports import RunSummary

    class FirstStepClock(pl.Callback):
        at = 0.0

        def on_train_batch_start(self, *args: object) -> None:
            self.at = self.at or time.time()

    clock = FirstStepClock()
    limit = ["--trainer.limit_train_batches", str(limit_batches)] if limit_batches else []
    with tempfile.TemporaryDirectory() as root:
        cli = LitNNOptCLI(
            args=[
                "fit",
                "--config",
                str(adam_config()),
                "--data.data_dir",
                data_dir,
                "--trainer.max_epochs",
                str(epochs),
                "--trainer.default_root_dir",
                root,
                "--trainer.accelerator",
                accelerator,
                "--trainer.devices",
                "1",
                *limit,
                *overrides,
            ],
            trainer_defaults={"callbacks": [clock]},
        )
        history = next(cb for cb in cli.trainer.callbacks if isinstance(cb, RunSummary)).history
    _EXTRA["first_step_at"] = clock.at
    stamps = [0.0] + [row["elapsed_seconds"] for row in history]
    return [b - a for a, b in itertools.pairwise(stamps)]


def run_lit_nnopt_1_step(
    data_dir: str, epochs: int, accelerator: str = "cpu", limit_batches: int | None = None
) -> list[float]:
    """The same, with Lightning's own loop taking one batch per training step."""
    return run_lit_nnopt(data_dir, epochs, accelerator, limit_batches, "--trainer.callbacks.steps", "1")


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


RUNNER_FUNCTIONS = {
    "reference": run_reference,
    "lit_nnopt": run_lit_nnopt,
    "lit_nnopt_1_step": run_lit_nnopt_1_step,
    "usual": run_usual,
}


def _run_in_subprocess(runner: str, args: argparse.Namespace, epochs: int) -> dict:
    command = [
        sys.executable,
        "-m",
        "lit_nnopt.app.bench",
        "--data-dir",
        args.data_dir,
        "--epochs",
        str(epochs),
        "--accelerator",
        args.accelerator,
        "--only",
        runner,
    ]
    if args.limit_batches:
        command += ["--limit-batches", str(args.limit_batches)]
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


def medians(reports: dict[str, list[dict]], one_epoch: dict[str, list[dict]], epochs: int) -> dict[str, dict]:
    """Per runner: the in-fit and whole-process seconds per epoch (medians), their ratios to the reference, peak RSS.

    Each ratio is the median, over the repeats, of a runner's figure divided by the reference's of
    the same repeat: the runs of one repeat follow each other within minutes, so a machine that
    speeds up or slows down between repeats moves both sides of a ratio alike.
    """
    per_repeat = {
        runner: [
            (
                statistics.median(long["epoch_seconds"][1:]),
                whole_process_seconds_per_epoch(long["wall_seconds"], short["wall_seconds"], epochs),
            )
            for long, short in zip(reports[runner], one_epoch[runner], strict=True)
        ]
        for runner in reports
    }
    figures = {}
    for runner, repeats in per_repeat.items():
        in_fit = statistics.median(t for report in reports[runner] for t in report["epoch_seconds"][1:])
        pairs = list(zip(repeats, per_repeat["reference"], strict=True))
        figures[runner] = {
            "in_fit_seconds_per_epoch": in_fit,
            "whole_process_seconds_per_epoch": statistics.median(whole for _, whole in repeats),
            "peak_rss_mb": max(report["peak_rss_mb"] for report in reports[runner]),
            "in_fit_ratio": statistics.median(ours[0] / reference[0] for ours, reference in pairs),
            "whole_process_ratio": statistics.median(ours[1] / reference[1] for ours, reference in pairs),
        }
    return figures


def check_accelerator(accelerator: str) -> str:
    """The name of the device the runs will use.

    Raises:
        SystemExit: ``gpu`` was asked for and torch sees no CUDA GPU.
    """
    import torch

    if accelerator == "cpu":
        return cpu_name()
    if not torch.cuda.is_available():
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise SystemExit(
            f"lit_nnopt bench: error: --accelerator gpu needs a CUDA GPU, and torch sees none here "
            f"(torch {torch.__version__}, {build}; torch.cuda.is_available() is False). Run it on a machine "
            "with an NVIDIA GPU and a CUDA build of torch, or leave out --accelerator to benchmark on the CPU."
        )
    return torch.cuda.get_device_name()


def cpu_name() -> str:
    """The processor's model name where Linux tells it, else its architecture."""
    import platform

    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def default_data_dir() -> str:
    """The first of ``$LIT_NNOPT_DATA_DIR``, ``../shared/data``, ``shared/data`` and ``data`` that holds MNIST."""
    candidates = [os.environ.get("LIT_NNOPT_DATA_DIR"), *_DATA_DIRS]
    found = (c for c in candidates if c and (Path(c) / "MNIST" / "raw" / _MNIST_FILES[0]).is_file())
    return next(found, _DATA_DIRS[0])


def _check_data_dir(data_dir: str) -> None:
    raw = Path(data_dir) / "MNIST" / "raw"
    missing = [name for name in _MNIST_FILES if not (raw / name).is_file()]
    if missing:
        raise SystemExit(
            f"lit_nnopt bench: error: {', '.join(missing)} not found in {raw}. Give --data-dir, the folder that "
            "holds MNIST/raw/*.gz (the benchmark reads the real MNIST and downloads nothing)."
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lit_nnopt bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder holding MNIST/raw/*.gz (default: the first of $LIT_NNOPT_DATA_DIR, ../shared/data, "
        "shared/data and data that holds it)",
    )
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (at least 2); the first is not measured")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, alternating")
    parser.add_argument("--skip-usual", action="store_true", help="leave out the slow torchvision recipe")
    parser.add_argument("--accelerator", choices=ACCELERATORS, default="cpu", help="where every run trains")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every figure (per run, medians) here")
    parser.add_argument(
        "--limit-batches",
        type=int,
        metavar="N",
        help="train on N batches per epoch: a quick check of the benchmark itself, not a measurement",
    )
    parser.add_argument("--only", choices=RUNNERS, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    args.data_dir = args.data_dir or default_data_dir()
    if args.only:
        epoch_seconds = RUNNER_FUNCTIONS[args.only](args.data_dir, args.epochs, args.accelerator, args.limit_batches)
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if args.accelerator == "gpu":
            import torch

            _EXTRA["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        print(_RESULT + json.dumps({"epoch_seconds": epoch_seconds, "peak_rss_mb": peak_rss_mb, **_EXTRA}))
        return
    if args.epochs < 2:
        parser.error(f"--epochs must be at least 2 (the first epoch is not measured), got {args.epochs}")
    _check_data_dir(args.data_dir)
    adam_config()
    device = check_accelerator(args.accelerator)

    from rich.console import Console
    from rich.progress import Progress

    runners = [r for r in RUNNERS if not (args.skip_usual and r == "usual")]
    reports: dict[str, list[dict]] = {runner: [] for runner in runners}
    one_epoch: dict[str, list[dict]] = {runner: [] for runner in runners}
    with Progress() as progress:
        task = progress.add_task("benchmark", total=args.repeats * len(runners) * 2)
        for _ in range(args.repeats):
            for runner in runners:
                progress.update(task, description=runner)
                reports[runner].append(_run_in_subprocess(runner, args, args.epochs))
                progress.advance(task)
                one_epoch[runner].append(_run_in_subprocess(runner, args, 1))
                progress.advance(task)
    figures = medians(reports, one_epoch, args.epochs)
    to_first_step = statistics.median(report["seconds_to_first_step"] for report in reports["lit_nnopt"])
    help_seconds = _help_seconds()
    console = Console()
    console.print(_table(figures, args, device))
    console.print(f"lit_nnopt: {to_first_step:.1f} s from process start to the first training step (median)")
    console.print(f"`python -m lit_nnopt --help`: {help_seconds:.1f} s (median of 3)")
    if args.json:
        record = {
            "accelerator": args.accelerator,
            "device": device,
            "data_dir": args.data_dir,
            "epochs": args.epochs,
            "repeats": args.repeats,
            "limit_batches": args.limit_batches,
            "medians": figures,
            "seconds_to_first_step": to_first_step,
            "help_seconds": help_seconds,
            "runs": {runner: {"epochs": reports[runner], "one_epoch": one_epoch[runner]} for runner in runners},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2))
        console.print(f"figures written to {args.json}")


def _table(figures: dict[str, dict], args: argparse.Namespace, device: str) -> Any:
    from rich.table import Table

    title = f"seconds per epoch on {device}, median of {args.repeats} runs of {args.epochs} epochs (and of 1)"
    table = Table(title=title)
    for column in ("run", "in fit", "ratio", "whole process", "ratio ", "peak RSS (MB)"):
        table.add_column(column, justify="right")
    for runner, row in figures.items():
        table.add_row(
            LABELS[runner],
            f"{row['in_fit_seconds_per_epoch']:.3f}",
            f"{row['in_fit_ratio']:.2f}",
            f"{row['whole_process_seconds_per_epoch']:.3f}",
            f"{row['whole_process_ratio']:.2f}",
            f"{row['peak_rss_mb']:.0f}",
        )
    return table


def _help_seconds() -> float:
    times = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lit_nnopt", "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


if __name__ == "__main__":
    main()
