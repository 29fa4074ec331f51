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

This module starts the runs, one process each, and tabulates their figures. The runs themselves
are in ``bench_reference_loop`` (the hand-written loop), ``bench_lit_nnopt_runs`` (``adam.yaml``
through lit_nnopt's CLI) and ``bench_usual_recipe`` (torchvision and a default Trainer).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lit_nnopt.app.bench_lit_nnopt_runs import EXTRA_FIGURES, adam_config, run_lit_nnopt, run_lit_nnopt_1_step
from lit_nnopt.app.bench_reference_loop import MNIST_TRAIN_FILES, run_reference
from lit_nnopt.app.bench_usual_recipe import run_usual
from lit_nnopt.app.machine import cpu_name

RUNNERS = ("reference", "lit_nnopt", "lit_nnopt_1_step", "usual")
LABELS = {
    "reference": "hand-written loop",
    "lit_nnopt": "lit_nnopt adam.yaml",
    "lit_nnopt_1_step": "... 1 batch per step",
    "usual": "usual Lightning",
}
ACCELERATORS = ("cpu", "gpu")
_RESULT = "runner result: "  # marks the line a runner process reports on; others may print too
_DATA_DIRS = ("../shared/data", "shared/data", "data")  # the project's shared copy, then a checkout's own

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


def default_data_dir() -> str:
    """The first of ``$LIT_NNOPT_DATA_DIR``, ``../shared/data``, ``shared/data`` and ``data`` that holds MNIST."""
    candidates = [os.environ.get("LIT_NNOPT_DATA_DIR"), *_DATA_DIRS]
    found = (c for c in candidates if c and (Path(c) / "MNIST" / "raw" / MNIST_TRAIN_FILES[0]).is_file())
    return next(found, _DATA_DIRS[0])


def _check_data_dir(data_dir: str) -> None:
    raw = Path(data_dir) / "MNIST" / "raw"
    missing = [name for name in MNIST_TRAIN_FILES if not (raw / name).is_file()]
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
        report = {"epoch_seconds": epoch_seconds, "peak_rss_mb": peak_rss_mb, **EXTRA_FIGURES}
        if args.accelerator == "gpu":
            import torch

            report["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        print(_RESULT + json.dumps(report))
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
