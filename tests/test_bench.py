"""The benchmark README quotes runs end to end and reports what it says it does."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from lit_nnopt.app.bench import whole_process_seconds_per_epoch
from tests.helpers import REPO


def test_whole_process_figure_is_the_cost_of_each_epoch_after_the_first():
    # 5 s of start-up and end, 1 s for the first epoch, 1.5 s for each further one.
    assert whole_process_seconds_per_epoch(5 + 1 + 3 * 1.5, 5 + 1, epochs=4) == 1.5


def test_bench_runs_every_runner_and_prints_ratios_to_the_reference(mnist_dir: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lit_nnopt.app.bench",
            "--data-dir",
            str(mnist_dir),
            "--epochs",
            "2",
            "--repeats",
            "1",
            "--skip-usual",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {}
    for label in ("hand-written loop", "lit_nnopt adam.yaml", "... 1 batch per step"):
        (line,) = [line for line in result.stdout.splitlines() if label in line]
        rows[label] = [float(value) for value in re.findall(r"-?\d+\.\d+|\d+(?=\s*│\s*$)", line)]
    reference_in_fit, _, reference_whole, _, _ = rows["hand-written loop"]
    for in_fit, in_fit_ratio, whole, whole_ratio, peak_mb in rows.values():
        assert in_fit > 0 and peak_mb > 100
        assert abs(in_fit_ratio - in_fit / reference_in_fit) < 0.01
        assert abs(whole_ratio - whole / reference_whole) < 0.02
    assert "usual Lightning" not in result.stdout
    assert re.search(r"lit_nnopt: \d+\.\d s from process start to the first training step", result.stdout)
    assert re.search(r"`python -m lit_nnopt --help`: \d+\.\d s", result.stdout)
