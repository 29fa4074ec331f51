"""benchmarks/gpu.py, the GPU measurements as one command: its figures and record, and its dry run on the CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO


def _load_gpu_command():
    spec = importlib.util.spec_from_file_location("gpu_command", REPO / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu = _load_gpu_command()


def seed(number: int, cache: str, process_seconds: float, training: float, test_acc: float | None) -> dict:
    return {
        "seed": number,
        "compile_cache": cache,
        "fit_ok": True,
        "fit_process_seconds": process_seconds,
        "training_seconds": training,
        "warmup_seconds": 1.0,
        "validation_seconds": 0.1,
        "test_acc": test_acc,
    }


def test_speedrun_figures_keep_the_cold_fit_apart_and_count_only_tested_seeds():
    rows = [seed(0, "cold", 60.0, 0.5, 0.991), seed(1, "warm", 9.0, 0.4, 0.989), seed(2, "warm", 11.0, 0.6, None)]
    figures = gpu._speedrun_figures(rows)
    assert figures["cold_fit_process_seconds"] == 60.0
    assert figures["warm_fit_process_seconds_median"] == 10.0
    assert figures["training_seconds_mean"] == pytest.approx(0.5) and figures["training_seconds_max"] == 0.6
    assert figures["test_acc_mean"] == pytest.approx(0.990) and figures["test_acc_min"] == 0.989
    assert figures["seeds_tested"] == 2


def test_the_benchmark_shrinks_to_the_time_left_and_is_skipped_when_nothing_fits():
    assert gpu.bench_size(1000) == {"epochs": 3, "repeats": 2, "skip_usual": False}
    assert gpu.bench_size(200)["skip_usual"] is True
    assert gpu.bench_size(80) == {"epochs": 2, "repeats": 1, "skip_usual": True}
    assert gpu.bench_size(30) is None


def test_the_record_page_names_machine_commit_commands_and_what_was_skipped():
    record = {
        "command": "python benchmarks/gpu.py --out x",
        "date": "2026-12-01T10:00:00+00:00",
        "dry_run": False,
        "seconds_used": 500.0,
        "budget_seconds": 540.0,
        "commit": "abc123",
        "uncommitted_changes": False,
        "machine": {
            "gpus": ["NVIDIA H200"],
            "driver": "580.1",
            "cuda": "13.0",
            "cudnn": 91000,
            "torch": "2.11.0",
            "lightning": "2.6.6",
            "python": "3.12.3",
            "cpu": "x86",
            "cpu_count": 16,
        },  # fmt: skip
        "speedrun": {
            "seeds": [seed(0, "cold", 60.0, 0.45, 0.991)],
            "skipped": ["seed 1: 40 s needed, 10 s left"],
            "commands": ["python -m lit_nnopt fit --config configs/speedrun.yaml"],
            **gpu._speedrun_figures([seed(0, "cold", 60.0, 0.45, 0.991)]),
        },
        "ddp": {"skipped": ["60 s needed, 10 s left"]},
        "bench": {"skipped": ["the smallest size needs 70 s, 10 s left"]},
    }
    page = gpu.render_markdown(record)
    for expected in ("NVIDIA H200", "driver 580.1", "torch 2.11.0", "Lightning 2.6.6", "commit: abc123", "0.9910"):
        assert expected in page
    assert "Skipped: seed 1: 40 s needed, 10 s left." in page and "Skipped: 60 s needed" in page
    assert "python -m lit_nnopt fit --config configs/speedrun.yaml" in page and "Dry run" not in page


@pytest.mark.slow  # a dozen processes that train on the real MNIST: a few minutes on two cores
def test_the_dry_run_runs_every_stage_on_the_cpu_and_writes_a_sane_record(mnist_dir: Path, tmp_path: Path):
    out = tmp_path / "record"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "benchmarks/gpu.py", "--dry-run", "--out", str(out), "--data-dir", str(mnist_dir)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(path.name for path in out.iterdir()) == ["bench.json", "log.txt", "record.json", "record.md"]
    record = json.loads((out / "record.json").read_text())
    assert record["dry_run"] is True and record["accelerator"] == "cpu"
    assert record["machine"]["torch"] and record["machine"]["lightning"] and record["date"]
    assert record["command"].startswith("python benchmarks/gpu.py --dry-run")
    assert 0 < record["seconds_used"] < record["budget_seconds"]
    (run,) = record["speedrun"]["seeds"]
    assert run["fit_ok"] and run["test_ok"] and run["compile_cache"] == "cold"
    assert 0 < run["training_seconds"] < run["train_span_seconds"] < run["fit_process_seconds"]
    assert run["warmup_seconds"] > 0 and run["validation_seconds"] > 0
    assert 0 < run["test_acc"] <= 1 and record["speedrun"]["test_acc_min"] == run["test_acc"]
    ddp = record["ddp"]
    assert ddp["lit_nnopt"]["ok"] and ddp["lit_nnopt"]["images_per_second"] > 0
    assert ddp["hand_written_one_device"]["ok"] and ddp["hand_written_one_device"]["images_per_second"] > 0
    assert ddp["lit_nnopt_per_device_over_hand_written"] > 0
    assert set(record["bench"]["medians"]) == {"reference", "lit_nnopt", "lit_nnopt_1_step"}
    assert record["bench"]["medians"]["reference"]["in_fit_ratio"] == 1.0
    page = (out / "record.md").read_text()
    assert "Dry run on the CPU" in page and "configs/speedrun.yaml" in page and "configs/cnn.yaml" in page
    assert "python -m lit_nnopt test --config configs/speedrun.yaml" in page
