"""The benchmark runs end to end, reports what it says it does, and refuses what it cannot do clearly."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lit_nnopt.app import bench, bench_lit_nnopt_runs
from lit_nnopt.app.bench import medians, whole_process_seconds_per_epoch
from lit_nnopt.app.bench_reference_loop import Split, train_by_hand
from tests.helpers import REPO


def test_whole_process_figure_is_the_cost_of_each_epoch_after_the_first():
    # 5 s of start-up and end, 1 s for the first epoch, 1.5 s for each further one.
    assert whole_process_seconds_per_epoch(5 + 1 + 3 * 1.5, 5 + 1, epochs=4) == 1.5


def test_medians_skip_the_first_epoch_and_divide_by_the_reference():
    def run(epochs: list[float], wall: float) -> dict:
        return {"epoch_seconds": epochs, "wall_seconds": wall, "peak_rss_mb": 900.0}

    reports = {"reference": [run([9.0, 1.0, 1.0], 10.0)], "lit_nnopt": [run([9.0, 2.0, 2.0], 20.0)]}
    one_epoch = {"reference": [run([9.0], 8.0)], "lit_nnopt": [run([9.0], 16.0)]}
    figures = medians(reports, one_epoch, epochs=3)
    assert figures["reference"]["in_fit_seconds_per_epoch"] == 1.0
    assert figures["lit_nnopt"]["in_fit_ratio"] == 2.0
    assert figures["lit_nnopt"]["whole_process_seconds_per_epoch"] == 2.0
    assert figures["lit_nnopt"]["whole_process_ratio"] == 2.0


def test_ratios_pair_each_repeat_with_the_reference_of_the_same_repeat():
    """The machine halves its speed in the second of three repeats, after the reference's runs.

    Medians taken over all runs first would say 2.4; two of the three paired ratios say 1.2.
    """

    def runs(per_epoch: float, slowdowns: tuple[float, ...], epochs: int) -> list[dict]:
        return [
            {
                "epoch_seconds": [9.0 * slow] + [per_epoch * slow] * (epochs - 1),
                "wall_seconds": (5.0 + 9.0 + per_epoch * (epochs - 1)) * slow,
                "peak_rss_mb": 900.0,
            }
            for slow in slowdowns
        ]

    reference, ours = (1.0, 1.0, 2.0), (1.0, 2.0, 2.0)
    reports = {"reference": runs(1.0, reference, 4), "lit_nnopt": runs(1.2, ours, 4)}
    one_epoch = {"reference": runs(1.0, reference, 1), "lit_nnopt": runs(1.2, ours, 1)}
    figures = medians(reports, one_epoch, epochs=4)["lit_nnopt"]
    assert figures["in_fit_ratio"] == pytest.approx(1.2)
    assert figures["whole_process_ratio"] == pytest.approx(1.2)
    assert figures["in_fit_seconds_per_epoch"] == pytest.approx(2.4), "the seconds stay medians over every run"


def test_the_reference_reports_the_epochs_loss_and_accuracy_as_lit_nnopt_does(capsys: pytest.CaptureFixture):
    """With a learning rate of 0 and no dropout the network does not change: each printed mean is one formula."""
    import torch
    from torch.nn import functional as F

    from lit_nnopt.networks import MLP

    generator = torch.Generator().manual_seed(0)
    inputs, labels = torch.randn(300, 1, 28, 28, generator=generator), torch.randint(0, 10, (300,), generator=generator)
    split = Split(inputs[:200], labels[:200], inputs[200:], labels[200:])
    net = MLP([16], dropout=0.0)
    _, val_acc = train_by_hand(net, torch.optim.SGD(net.parameters(), lr=0.0), split, epochs=1, batch_size=64)
    with torch.no_grad():
        train_logits, val_logits = net(split.train_x), net(split.val_x)
    expected = {
        "train_loss": F.cross_entropy(train_logits, split.train_y).item(),
        "train_acc": (train_logits.argmax(1) == split.train_y).float().mean().item(),
        "val_loss": F.cross_entropy(val_logits, split.val_y).item(),
        "val_acc": (val_logits.argmax(1) == split.val_y).float().mean().item(),
    }
    printed = dict(re.findall(r"(\w+) (\d+\.\d+)", capsys.readouterr().err))
    assert printed.keys() == expected.keys()
    for name, value in expected.items():
        assert float(printed[name]) == pytest.approx(value, abs=1e-4), name
    assert val_acc == pytest.approx(expected["val_acc"])


def test_gpu_without_cuda_is_one_paragraph_that_says_what_to_do(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        bench.check_accelerator("gpu")
    message = str(exit_.value.code)
    assert "--accelerator gpu needs a CUDA GPU" in message and "leave out --accelerator" in message
    assert "\n" not in message


def test_missing_data_is_refused_before_any_run(tmp_path: Path):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--data-dir", str(tmp_path), "--epochs", "2"])
    assert "Give --data-dir" in str(exit_.value.code) and str(tmp_path) in str(exit_.value.code)


def test_default_data_dir_is_the_first_that_holds_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LIT_NNOPT_DATA_DIR", raising=False)
    assert bench.default_data_dir() == "../shared/data"  # nothing anywhere: the project's usual place
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte.gz").touch()
    assert bench.default_data_dir() == "data"


def test_the_config_is_found_from_the_repository_and_refused_clearly_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    assert bench_lit_nnopt_runs.adam_config() == REPO / "configs" / "adam.yaml"
    monkeypatch.chdir(tmp_path)
    installed = tmp_path / "site-packages" / "lit_nnopt" / "app" / "bench_lit_nnopt_runs.py"
    monkeypatch.setattr(bench_lit_nnopt_runs, "__file__", str(installed))
    with pytest.raises(SystemExit, match="Run it from the root of a clone"):
        bench_lit_nnopt_runs.adam_config()


@pytest.mark.slow  # six processes that train on the real MNIST
def test_bench_runs_every_runner_and_prints_ratios_to_the_reference(mnist_dir: Path, tmp_path: Path) -> None:
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
            "--json",
            str(tmp_path / "bench.json"),
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
    record = json.loads((tmp_path / "bench.json").read_text())
    assert record["accelerator"] == "cpu" and set(record["medians"]) == {"reference", "lit_nnopt", "lit_nnopt_1_step"}
    for runner, figures in record["medians"].items():
        assert len(record["runs"][runner]["epochs"][0]["epoch_seconds"]) == 2
        assert abs(figures["in_fit_seconds_per_epoch"] - rows[bench.LABELS[runner]][0]) < 0.001
