"""The benchmark README quotes runs end to end and reports what it says it does."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_bench_runs_every_runner_and_prints_ratios_to_the_reference(mnist_dir: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    result = subprocess.run(
        [sys.executable, "-m", "lit_nnopt.bench", "--data-dir", str(mnist_dir), "--epochs", "2", "--repeats", "1",
         "--skip-usual"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {}
    for label in ("hand-written loop", "lit_nnopt adam.yaml", "... 1 batch per step"):
        (line,) = [line for line in result.stdout.splitlines() if label in line]
        seconds, ratio, peak_mb = (float(value) for value in re.findall(r"\d+\.\d+|\d+(?=\s*│\s*$)", line))
        rows[label] = seconds, ratio, peak_mb
    reference_seconds = rows["hand-written loop"][0]
    for seconds, ratio, peak_mb in rows.values():
        assert seconds > 0 and peak_mb > 100
        assert abs(ratio - seconds / reference_seconds) < 0.01
    assert "usual Lightning" not in result.stdout
    assert re.search(r"lit_nnopt: \d+\.\d s from process start to the first training step", result.stdout)
    assert re.search(r"`python -m lit_nnopt --help`: \d+\.\d s", result.stdout)
