"""The GPU measurements as one prepared command: the speedrun, the GPU benchmark, DDP beside a hand-written loop.

    python benchmarks/gpu.py --out OUT [--data-dir DIR] [--budget 540] [--seeds 0 1 2 3 4] [--dry-run]

Run from the repository's root on a machine with a GPU; it needs no network (no logger, W&B
offline). Within ``--budget`` seconds, start-up of the subprocesses included, it runs:

1. the speedrun: ``fit --config configs/speedrun.yaml`` once per seed, the first with an empty
   compile cache (cold: fresh ``TORCHINDUCTOR_CACHE_DIR`` and ``TRITON_CACHE_DIR``), the others
   with the cache it filled (warm); each fit's process wall time and ``TrainingClock``'s
   training, warm-up and validation seconds; then ``test --ckpt_path best`` of each seed: mean
   and lowest test accuracy;
2. DDP: ``fit --config configs/cnn.yaml`` on every GPU (``--trainer.strategy ddp``), in training
   images per second, next to a hand-written single-GPU loop of the same recipe;
3. the GPU benchmark: ``python -m lit_nnopt bench --accelerator gpu --json ...``, sized to the
   time left (without the slow usual recipe, or with fewer repeats, when the full one would not fit).

A stage (or a seed) whose estimate does not fit in the time left is skipped, and the record
says so. It prints every figure as it measures it and writes four files into ``--out``:
``record.json`` (everything: machine, versions, commit, date, commands, figures),
``record.md`` (the same for a measurement page), ``bench.json`` (the benchmark's own figures)
and ``log.txt`` (every command's output). Checkpoints and caches go to a temporary folder.

``--dry-run`` runs the same pipeline on the CPU with tiny sizes (one seed, a few batches, no
compiling), to test the command itself; its figures measure nothing.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULT = "cnn reference result: "
TRAIN_IMAGES = 48000

# Seconds each part is expected to take, start-up included: a part that does not fit in the
# time left is skipped. GPU figures from the H100 runs of issue 17, with a margin.
ESTIMATES = {
    "gpu": {"cold_fit": 90, "warm_fit": 20, "test": 20, "ddp": 60, "cnn_reference": 30},
    "cpu": {"cold_fit": 60, "warm_fit": 60, "test": 40, "ddp": 60, "cnn_reference": 30},
}
# The benchmark's sizes, largest first, with their expected seconds on a GPU.
BENCH_SIZES = [
    ({"epochs": 3, "repeats": 2, "skip_usual": False}, 300),
    ({"epochs": 3, "repeats": 2, "skip_usual": True}, 150),
    ({"epochs": 2, "repeats": 1, "skip_usual": True}, 70),
]
DRY_BENCH = ({"epochs": 2, "repeats": 1, "skip_usual": True, "limit_batches": 10}, 150)


class Budget:
    """The seconds left of a fixed budget."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.monotonic()

    def used(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.seconds - self.used()


class Runner:
    """Runs the commands: each one's output into ``log.txt``, killed (its process group) when the budget runs out."""

    def __init__(self, out: Path, budget: Budget, env: dict[str, str]) -> None:
        self.log = out / "log.txt"
        self.log.write_text("")
        self.budget = budget
        self.env = env

    def __call__(self, command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
        shown = shlex.join(["python" if part == sys.executable else part for part in command])
        print(f"$ {shown}", flush=True)
        with self.log.open("a") as log:
            log.write(f"\n$ {shown}\n")
            log.flush()
            started = time.perf_counter()
            process = subprocess.Popen(
                command,
                cwd=REPO,
                env={**self.env, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its DDP ranks and bench runners die with it on a timeout
            )
            timed_out = False
            try:
                process.wait(timeout=max(self.budget.left(), 1))
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(process)
            seconds = time.perf_counter() - started
        status = "timed out (budget spent)" if timed_out else f"exit status {process.returncode}"
        if timed_out or process.returncode:
            print(f"  ... {status} after {seconds:.1f} s; see {self.log}", flush=True)
        return {"command": shown, "seconds": seconds, "ok": not timed_out and process.returncode == 0}


def _kill_group(process: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def _summary(root: Path) -> dict[str, Any]:
    """The newest ``summary.json`` under ``root``."""
    found = sorted(root.glob("**/summary.json"), key=lambda path: path.stat().st_mtime)
    return json.loads(found[-1].read_text()) if found else {}


def speedrun(args: argparse.Namespace, run: Runner, work: Path) -> dict[str, Any]:
    """``fit`` of configs/speedrun.yaml per seed (the first with an empty compile cache), then ``test`` of each."""
    estimates = ESTIMATES[args.accelerator]
    fit_extra, test_extra = [], []
    if args.dry_run:
        fit_extra = ["--trainer.accelerator", "cpu", "--model.compile", "false", "--trainer.limit_train_batches", "4"]
        # The whole OneCycle in the run's 2 x 4 steps: cut short, its lr stays too low to learn, and the fit exits 3
        fit_extra += ["--trainer.limit_val_batches", "2", "--lr_scheduler.total_steps", "8"]
        test_extra = ["--trainer.accelerator", "cpu", "--model.compile", "false", "--trainer.limit_test_batches", "2"]
    caches = {"TORCHINDUCTOR_CACHE_DIR": str(work / "inductor-cache"), "TRITON_CACHE_DIR": str(work / "triton-cache")}
    base = [sys.executable, "-m", "lit_nnopt"]
    common = ["--config", "configs/speedrun.yaml", "--data.data_dir", args.data_dir]
    seeds, commands, skipped = [], [], []
    for index, seed in enumerate(args.seeds):
        cache = "cold" if index == 0 else "warm"
        needed = estimates[f"{cache}_fit"] + estimates["test"]
        if run.budget.left() < needed:
            skipped.append(f"seed {seed}: {needed} s needed, {run.budget.left():.0f} s left")
            print(f"speedrun: skipping seed {seed} ({skipped[-1]})", flush=True)
            continue
        root = work / "speedrun" / f"seed-{seed}"
        folder = ["--trainer.default_root_dir", str(root)]
        fit = run([*base, "fit", *common, "--seed_everything", str(seed), *folder, *fit_extra], caches)
        summary = _summary(root)
        row = {
            "seed": seed,
            "compile_cache": cache,
            "fit_ok": fit["ok"],
            "fit_process_seconds": fit["seconds"],
            "fit_seconds": summary.get("wall_seconds"),
            **summary.get("training_clock", {}),
            "best_checkpoint": summary.get("best_checkpoint"),
        }
        commands.append(fit["command"])
        if fit["ok"] and row["best_checkpoint"]:
            test = run([*base, "test", *common, "--ckpt_path", row["best_checkpoint"], *folder, *test_extra], caches)
            commands.append(test["command"])
            row["test_ok"] = test["ok"]
            row["test_process_seconds"] = test["seconds"]
            row["test_acc"] = _summary(root).get("final", {}).get("test_acc") if test["ok"] else None
        seeds.append(row)
        print("speedrun: " + _speedrun_line(row), flush=True)
    return {"seeds": seeds, "skipped": skipped, "commands": commands, **_speedrun_figures(seeds)}


def _speedrun_line(row: dict[str, Any]) -> str:
    test_acc = row.get("test_acc")
    return (
        f"seed {row['seed']} ({row['compile_cache']} cache): fit {row['fit_process_seconds']:.1f} s, "
        f"training {_fmt(row.get('training_seconds'), 3)} s, warm-up {_fmt(row.get('warmup_seconds'), 2)} s, "
        f"validation {_fmt(row.get('validation_seconds'), 3)} s, test_acc {_fmt(test_acc, 4)}"
    )


def _speedrun_figures(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    accuracies = [row["test_acc"] for row in seeds if row.get("test_acc") is not None]
    training = [row["training_seconds"] for row in seeds if row.get("training_seconds") is not None]
    warm = [row["fit_process_seconds"] for row in seeds if row["compile_cache"] == "warm" and row["fit_ok"]]
    cold = [row["fit_process_seconds"] for row in seeds if row["compile_cache"] == "cold" and row["fit_ok"]]
    return {
        "cold_fit_process_seconds": cold[0] if cold else None,
        "warm_fit_process_seconds_median": statistics.median(warm) if warm else None,
        "training_seconds_mean": statistics.mean(training) if training else None,
        "training_seconds_max": max(training) if training else None,
        "test_acc_mean": statistics.mean(accuracies) if accuracies else None,
        "test_acc_min": min(accuracies) if accuracies else None,
        "seeds_tested": len(accuracies),
    }


def ddp(args: argparse.Namespace, run: Runner, work: Path) -> dict[str, Any]:
    """configs/cnn.yaml under DDP on every GPU, and a hand-written single-device loop of the same recipe."""
    import torch

    devices = torch.cuda.device_count() if args.accelerator == "gpu" else 1
    epochs = 2
    limit = ["--trainer.limit_train_batches", "8", "--trainer.limit_val_batches", "2"] if args.dry_run else []
    limit += ["--lr_scheduler.total_steps", str(epochs * 8)] if args.dry_run else []  # as in the speedrun's dry run
    root = work / "ddp"
    fit = run(
        [
            *[sys.executable, "-m", "lit_nnopt", "fit", "--config", "configs/cnn.yaml"],
            *["--data.data_dir", args.data_dir, "--trainer.accelerator", args.accelerator],
            *["--trainer.devices", str(devices), "--trainer.strategy", "ddp", "--trainer.max_epochs", str(epochs)],
            *["--trainer.logger", "false", "--trainer.default_root_dir", str(root), *limit],
        ]
    )
    summary = _summary(root)
    elapsed = [row["elapsed_seconds"] for row in summary.get("history", [])]
    epoch_seconds = [b - a for a, b in itertools.pairwise([0.0, *elapsed])]
    images = 8 * 64 * devices if args.dry_run else TRAIN_IMAGES
    result: dict[str, Any] = {
        "devices": devices,
        "epochs": epochs,
        "commands": [fit["command"]],
        "lit_nnopt": {
            "ok": fit["ok"],
            "epoch_seconds": epoch_seconds,
            "images_per_second": _throughput(images, epoch_seconds),
            "val_acc": summary.get("final", {}).get("val_acc"),
        },
    }
    print(f"ddp: lit_nnopt on {devices} device(s): {_fmt(result['lit_nnopt']['images_per_second'], 0)} images/s")
    if run.budget.left() < ESTIMATES[args.accelerator]["cnn_reference"]:
        result["skipped"] = [f"hand-written loop: {run.budget.left():.0f} s left"]
        return result
    command = [sys.executable, str(Path(__file__).resolve()), "--cnn-reference", "--data-dir", args.data_dir]
    command += ["--accelerator", args.accelerator, "--epochs", str(epochs)]
    reference_file = work / "cnn_reference.json"
    reference = run([*command, "--result", str(reference_file), *(["--dry-run"] if args.dry_run else [])])
    result["commands"].append(reference["command"])
    figures = json.loads(reference_file.read_text()) if reference["ok"] else {}
    result["hand_written_one_device"] = {
        "ok": reference["ok"],
        **figures,
        "images_per_second": _throughput(images // devices, figures.get("epoch_seconds", [])),
    }
    ours, theirs = result["lit_nnopt"]["images_per_second"], result["hand_written_one_device"]["images_per_second"]
    result["lit_nnopt_per_device_over_hand_written"] = ours / devices / theirs if ours and theirs else None
    print(f"ddp: hand-written loop on one device: {_fmt(theirs, 0)} images/s", flush=True)
    return result


def _throughput(images: int, epoch_seconds: list[float]) -> float | None:
    """Training images per second in the fastest epoch after the first (validation included)."""
    measured = epoch_seconds[1:] or epoch_seconds
    return images / min(measured) if measured else None


def cnn_reference(args: argparse.Namespace) -> None:
    """configs/cnn.yaml by hand on one device: the CNN, AdamW (no decay on biases and norms), OneCycle, batch 64."""
    import torch

    from lit_nnopt.app.bench_reference_loop import load_split, torch_device, train_by_hand
    from lit_nnopt.app.environment import fit_threads_to_free_cpus
    from lit_nnopt.networks import CNN

    fit_threads_to_free_cpus()  # as the CLI does for lit_nnopt's run
    device = torch_device(args.accelerator)
    torch.manual_seed(42)
    split = load_split(args.data_dir, device, standardize=False)
    net = CNN([32, 64], hidden=128, dropout=0.25).to(device)
    decay = [p for p in net.parameters() if p.ndim > 1]  # conv and dense kernels; biases and batch norm are 1-d
    groups = [{"params": decay, "weight_decay": 1e-4}, {"params": [p for p in net.parameters() if p.ndim <= 1]}]
    optimizer = torch.optim.AdamW(groups, lr=0.003, weight_decay=0.0, fused=True)
    limits = {"limit_batches": 8, "limit_val_batches": 2} if args.dry_run else {}  # as the dry run's DDP fit
    total_steps = args.epochs * 8 if args.dry_run else 3000
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.003, total_steps=total_steps)
    epoch_seconds, val_acc = train_by_hand(net, optimizer, split, args.epochs, 64, step_scheduler=scheduler, **limits)
    args.result.write_text(json.dumps({"epoch_seconds": epoch_seconds, "val_acc": val_acc}))


def bench_size(seconds_left: float, dry_run: bool = False) -> dict[str, Any] | None:
    """The largest benchmark size expected to fit in ``seconds_left``; None if none does."""
    sizes = [DRY_BENCH] if dry_run else BENCH_SIZES
    return next((size for size, estimate in sizes if estimate <= seconds_left), None)


def bench(args: argparse.Namespace, run: Runner, out: Path) -> dict[str, Any]:
    """``python -m lit_nnopt bench --accelerator ...`` at the largest size that fits in the time left."""
    size = bench_size(run.budget.left(), args.dry_run)
    if size is None:
        print(f"bench: skipped ({run.budget.left():.0f} s left)", flush=True)
        return {"skipped": [f"the smallest size needs {BENCH_SIZES[-1][1]} s, {run.budget.left():.0f} s left"]}
    command = [sys.executable, "-m", "lit_nnopt", "bench", "--accelerator", args.accelerator, "--data-dir"]
    command += [args.data_dir, "--json", str(out / "bench.json")]
    command += ["--epochs", str(size["epochs"]), "--repeats", str(size["repeats"])]
    command += ["--skip-usual"] if size["skip_usual"] else []
    command += ["--limit-batches", str(size["limit_batches"])] if "limit_batches" in size else []
    result = run(command, {"COLUMNS": "120"})
    figures = json.loads((out / "bench.json").read_text()) if result["ok"] else {}
    for runner, row in figures.get("medians", {}).items():
        print(
            f"bench: {runner}: {row['in_fit_seconds_per_epoch']:.3f} s/epoch in fit "
            f"(x{row['in_fit_ratio']:.2f}), {row['whole_process_seconds_per_epoch']:.3f} whole process "
            f"(x{row['whole_process_ratio']:.2f})",
            flush=True,
        )
    return {"ok": result["ok"], "size": size, "commands": [result["command"]], "medians": figures.get("medians")}


def commit() -> dict[str, Any]:
    """The checkout's commit, and whether it had changes; nulls where it is no git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "uncommitted_changes": None}
    return {"commit": head.stdout.strip(), "uncommitted_changes": bool(status.stdout.strip())}


def render_markdown(record: dict[str, Any]) -> str:
    """``record.json`` as a measurement page's section."""
    m = record["machine"]
    gpus = ", ".join(m["gpus"]) or "none"
    lines = [
        f"# GPU measurements, {record['date']}",
        "",
        *(["**Dry run on the CPU: these figures measure nothing.**", ""] if record["dry_run"] else []),
        f"- command: `{record['command']}` ({record['seconds_used']:.0f} s of a {record['budget_seconds']:.0f} s "
        "budget)",
        f"- commit: {record['commit']}" + (" with uncommitted changes" if record["uncommitted_changes"] else ""),
        f"- GPUs: {gpus}; driver {m['driver'] or '-'}, CUDA {m['cuda'] or '-'}, cuDNN {m['cudnn'] or '-'}",
        f"- torch {m['torch']}, Lightning {m['lightning']}, Python {m['python']}; CPU {m['cpu']} ({m['cpu_count']})",
        "",
    ]
    lines += _speedrun_markdown(record["speedrun"]) + _ddp_markdown(record["ddp"]) + _bench_markdown(record["bench"])
    return "\n".join(lines) + "\n"


def _skipped(stage: dict[str, Any]) -> list[str]:
    return [f"Skipped: {reason}." for reason in stage.get("skipped", [])] + ([""] if stage.get("skipped") else [])


def _commands(stage: dict[str, Any]) -> list[str]:
    return ["```bash", *stage.get("commands", []), "```", ""] if stage.get("commands") else []


def _speedrun_markdown(stage: dict[str, Any]) -> list[str]:
    lines = ["## Speedrun: `configs/speedrun.yaml`", "", *_skipped(stage)]
    if not stage.get("seeds"):
        return lines
    lines += [
        "| seed | compile cache | fit, whole process (s) | training (s) | warm-up (s) | validation (s) | test_acc |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in stage["seeds"]:
        lines.append(
            f"| {row['seed']} | {row['compile_cache']} | {row['fit_process_seconds']:.1f} | "
            f"{_fmt(row.get('training_seconds'), 3)} | {_fmt(row.get('warmup_seconds'), 2)} | "
            f"{_fmt(row.get('validation_seconds'), 3)} | {_fmt(row.get('test_acc'), 4)} |"
        )
    lines += [
        "",
        f"Test accuracy: mean {_fmt(stage['test_acc_mean'], 4)}, lowest {_fmt(stage['test_acc_min'], 4)} "
        f"({stage['seeds_tested']} seed(s)). Training: mean {_fmt(stage['training_seconds_mean'], 3)} s, "
        f"longest {_fmt(stage['training_seconds_max'], 3)} s. Fit, whole process: cold "
        f"{_fmt(stage['cold_fit_process_seconds'], 1)} s, warm {_fmt(stage['warm_fit_process_seconds_median'], 1)} s "
        "(median).",
        "",
        *_commands(stage),
    ]
    return lines


def _ddp_markdown(stage: dict[str, Any]) -> list[str]:
    lines = ["## DDP: `configs/cnn.yaml`", "", *_skipped(stage)]
    if "lit_nnopt" not in stage:
        return lines
    ours, theirs = stage["lit_nnopt"], stage.get("hand_written_one_device", {})
    lines += [
        "| run | devices | training images/s | val_acc |",
        "| --- | --- | --- | --- |",
        f"| lit_nnopt, DDP | {stage['devices']} | {_fmt(ours['images_per_second'], 0)} | {_fmt(ours['val_acc'], 4)} |",
        f"| hand-written loop | 1 | {_fmt(theirs.get('images_per_second'), 0)} | {_fmt(theirs.get('val_acc'), 4)} |",
        "",
        f"Images per second in the fastest epoch after the first, validation included, {stage['epochs']} epochs; "
        f"lit_nnopt per device / hand-written: {_fmt(stage.get('lit_nnopt_per_device_over_hand_written'), 2)}.",
        "",
        *_commands(stage),
    ]
    return lines


def _bench_markdown(stage: dict[str, Any]) -> list[str]:
    lines = ["## Benchmark: `python -m lit_nnopt bench`", "", *_skipped(stage)]
    if not stage.get("medians"):
        return lines
    lines += [
        "| run | in fit (s/epoch) | ratio | whole process (s/epoch) | ratio |",
        "| --- | --- | --- | --- | --- |",
    ]
    for runner, row in stage["medians"].items():
        lines.append(
            f"| {runner} | {row['in_fit_seconds_per_epoch']:.3f} | {row['in_fit_ratio']:.2f} | "
            f"{row['whole_process_seconds_per_epoch']:.3f} | {row['whole_process_ratio']:.2f} |"
        )
    size = stage["size"]
    lines += ["", f"Medians of {size['repeats']} runs of {size['epochs']} epochs (and of 1).", "", *_commands(stage)]
    return lines


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/gpu.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="folder for record.json, record.md, bench.json and log.txt")
    parser.add_argument(
        "--data-dir",
        help="folder holding MNIST/raw/*.gz (default: the first of $LIT_NNOPT_DATA_DIR, ../shared/data, "
        "shared/data and data that holds it)",
    )
    parser.add_argument("--budget", type=float, default=540, help="seconds for everything (default 540)")
    parser.add_argument("--seeds", type=int, nargs="+", help="speedrun seeds (default 0 1 2 3 4; 0 for --dry-run)")
    parser.add_argument("--dry-run", action="store_true", help="the whole pipeline on the CPU with tiny sizes")
    parser.add_argument("--cnn-reference", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--accelerator", choices=("cpu", "gpu"), help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    sys.path.insert(0, str(REPO))  # `python benchmarks/gpu.py` imports this checkout's lit_nnopt
    from lit_nnopt.app.bench import default_data_dir
    from lit_nnopt.app.machine import machine_record

    args.data_dir = str(Path(args.data_dir or default_data_dir()).resolve())
    args.accelerator = args.accelerator or ("cpu" if args.dry_run else "gpu")
    if args.cnn_reference:
        cnn_reference(args)
        return
    if args.out is None:
        _parser().error("--out is required: the folder that gets record.json and record.md")
    if not (Path(args.data_dir) / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file():
        sys.exit(f"gpu.py: error: no MNIST in {args.data_dir}/MNIST/raw: give --data-dir, the folder holding it.")
    _check_gpu(args)
    args.seeds = args.seeds or ([0] if args.dry_run else [0, 1, 2, 3, 4])
    args.out.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget)
    command = shlex.join(["python", "benchmarks/gpu.py", *(sys.argv[1:] if argv is None else argv)])
    with tempfile.TemporaryDirectory(prefix="lit_nnopt-gpu-") as folder:
        work = Path(folder)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        env.update({"WANDB_MODE": "offline", "WANDB_DIR": str(work), "PYTHONUNBUFFERED": "1"})
        run = Runner(args.out, budget, env)
        record: dict[str, Any] = {
            "command": command,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "dry_run": args.dry_run,
            "accelerator": args.accelerator,
            "data_dir": args.data_dir,
            "budget_seconds": args.budget,
            **commit(),
            "machine": machine_record(args.accelerator),
        }
        record["speedrun"] = speedrun(args, run, work)
        record["ddp"] = _if_time(args, run, "ddp", lambda: ddp(args, run, work))
        record["bench"] = bench(args, run, args.out)
    record["seconds_used"] = budget.used()
    (args.out / "record.json").write_text(json.dumps(record, indent=2))
    markdown = render_markdown(record)
    (args.out / "record.md").write_text(markdown)
    print("\n" + markdown)
    print(f"written: {args.out / 'record.json'}, {args.out / 'record.md'}, {args.out / 'bench.json'}, {run.log}")


def _check_gpu(args: argparse.Namespace) -> None:
    import torch

    if args.accelerator == "gpu" and not torch.cuda.is_available():
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        sys.exit(
            f"gpu.py: error: the measurements need a CUDA GPU, and torch sees none here (torch {torch.__version__}, "
            f"{build}). Run it on a GPU machine, or add --dry-run to check the pipeline on the CPU."
        )


def _if_time(args: argparse.Namespace, run: Runner, stage: str, measure: Any) -> dict[str, Any]:
    needed = ESTIMATES[args.accelerator][stage]
    if run.budget.left() < needed:
        print(f"{stage}: skipped ({needed} s needed, {run.budget.left():.0f} s left)", flush=True)
        return {"skipped": [f"{needed} s needed, {run.budget.left():.0f} s left"]}
    return measure()


if __name__ == "__main__":
    main()
