"""Nothing lost at the command line: signals to a real `fit` and `--ckpt_path last` resume it bitwise; a failing W&B.

The pieces have their own tests: AtomicCheckpointIO in ``tests/library/test_checkpoint_io.py``,
InterruptCheckpoint and ExactResume in process in ``tests/callbacks/test_interrupt_and_exact_resume.py``,
the checks of a checkpoint in ``tests/app/test_checks.py`` and the resume command in ``tests/app/test_runs.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import REPO

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # the shape of a W&B key, known to no server


# -- real signals to the real command line --------------------------------------------------------


def _config(tmp_path: Path, mnist_dir: Path) -> Path:
    config = {
        "seed_everything": 7,
        "trainer": {
            "max_epochs": 2,
            "limit_train_batches": 30,
            "limit_val_batches": 5,
            "num_sanity_val_steps": 0,
            "deterministic": True,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {"class_path": "lit_nnopt.app.loggers.AutoWandbLogger", "init_args": {"mode": "disabled"}},
        },
        "model": {"net": {"class_path": "lit_nnopt.MLP", "init_args": {"hidden_sizes": [32], "dropout": 0.3}}},
        "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.002}},
        "lr_scheduler": {"class_path": "torch.optim.lr_scheduler.ExponentialLR", "init_args": {"gamma": 0.85}},
        "data": {"data_dir": str(mnist_dir), "batch_size": 64, "standardize": True},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _start(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "lit_nnopt", *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _interrupt(process: subprocess.Popen, marker: Path, signum: int) -> tuple[int, str]:
    deadline = time.monotonic() + 120
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), process.communicate()[1][-3000:]
    process.send_signal(signum)
    marker.unlink()
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


def _pause(marker: Path, step: int) -> list[str]:
    return [
        "--trainer.callbacks+=tests.helpers.cli_callbacks.PauseForSignal",
        "--trainer.callbacks.marker",
        str(marker),
        "--trainer.callbacks.step",
        str(step),
    ]


def _run_folder(root: Path) -> Path:
    (run,) = (root / "lit_nnopt").iterdir()
    return run


def _final_state(root: Path) -> tuple[dict, list]:
    run = _run_folder(root)
    weights = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    history = json.loads((run / "summary.json").read_text())["history"]
    return weights, [{k: v for k, v in row.items() if k != "elapsed_seconds"} for row in history]


@pytest.mark.slow  # three runs of the command line: 16 to 27 s measured on two busy cores
@pytest.mark.parametrize("steps_per_execution", [1, 4])
def test_sigterm_mid_epoch_then_ckpt_path_last_ends_bitwise_equal_to_an_uninterrupted_run(
    mnist_dir, tmp_path, steps_per_execution
):
    config, marker = _config(tmp_path, mnist_dir), tmp_path / "paused"
    steps = [
        "--trainer.callbacks+=lit_nnopt.callbacks.StepsPerExecution",
        "--trainer.callbacks.steps",
        str(steps_per_execution),
    ]
    whole = _start("fit", "--config", str(config), "--trainer.default_root_dir", "whole", *steps, cwd=tmp_path)
    cut_args = ["fit", "--config", str(config), "--trainer.default_root_dir", "cut", *steps]
    returncode, stderr = _interrupt(_start(*cut_args, *_pause(marker, step=20), cwd=tmp_path), marker, signal.SIGTERM)
    assert returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    saved = _run_folder(tmp_path / "cut") / "checkpoints" / "last.ckpt"
    assert f"SIGTERM received: stopped at epoch 0, step 20 and saved {saved.relative_to(tmp_path)}" in stderr
    (resume_line,) = [line for line in stderr.splitlines() if line.startswith("Resume with: ")]
    assert (
        resume_line == f"Resume with: python -m lit_nnopt {' '.join(cut_args)} {' '.join(_pause(marker, step=20))}"
        " --ckpt_path last"
    )
    assert torch.load(saved, weights_only=True)["global_step"] == 20

    resumed = subprocess.run(
        [sys.executable, "-m", "lit_nnopt", *cut_args, "--ckpt_path", "last"],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {saved.relative_to(tmp_path)}" in resumed.stderr
    assert whole.wait(timeout=300) == 0, whole.communicate()[1][-3000:]
    whole_weights, whole_history = _final_state(tmp_path / "whole")
    cut_weights, cut_history = _final_state(tmp_path / "cut")  # one run folder: the resume continued it
    assert cut_history == whole_history and len(whole_history) == 2
    assert whole_weights.keys() == cut_weights.keys()
    for name, tensor in whole_weights.items():
        assert torch.equal(cut_weights[name], tensor), name


@pytest.mark.slow  # three runs of the command line, as above
def test_sigterm_with_restore_best_weights_then_ckpt_path_last_ends_bitwise_equal(mnist_dir, tmp_path):
    # Issue 15, finding 1: EarlyStopping(restore_best_weights=True) used to put epoch 0's weights
    # into the interrupt checkpoint of step 40 (in epoch 1), and the resume went on from them.
    config_path, marker = _config(tmp_path, mnist_dir), tmp_path / "paused"
    config = yaml.safe_load(config_path.read_text())
    stopper = {"monitor": "val_loss", "patience": 5, "restore_best_weights": True}
    config["trainer"]["callbacks"] = [{"class_path": "lit_nnopt.callbacks.EarlyStopping", "init_args": stopper}]
    config_path.write_text(yaml.safe_dump(config))
    whole = _start("fit", "--config", str(config_path), "--trainer.default_root_dir", "whole", cwd=tmp_path)
    cut_args = ["fit", "--config", str(config_path), "--trainer.default_root_dir", "cut"]
    returncode, stderr = _interrupt(_start(*cut_args, *_pause(marker, step=40), cwd=tmp_path), marker, signal.SIGTERM)
    assert returncode == 143, stderr[-3000:]
    saved = torch.load(_run_folder(tmp_path / "cut") / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 40 and saved["epoch"] == 1

    resumed = subprocess.run(
        [sys.executable, "-m", "lit_nnopt", *cut_args, "--ckpt_path", "last"],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert whole.wait(timeout=300) == 0, whole.communicate()[1][-3000:]
    whole_weights, whole_history = _final_state(tmp_path / "whole")
    cut_weights, cut_history = _final_state(tmp_path / "cut")
    assert cut_history == whole_history and len(whole_history) == 2
    for name, tensor in whole_weights.items():
        assert torch.equal(cut_weights[name], tensor), name


@pytest.mark.slow  # subprocesses
def test_ctrl_c_finishes_the_batch_saves_and_exits_130_then_last_continues_the_run(mnist_dir, tmp_path):
    config, marker = _config(tmp_path, mnist_dir), tmp_path / "paused"
    args = ["fit", "--config", str(config), "--trainer.default_root_dir", "runs", "--trainer.max_epochs", "1"]
    returncode, stderr = _interrupt(_start(*args, *_pause(marker, step=5), cwd=tmp_path), marker, signal.SIGINT)
    assert returncode == 130, stderr[-3000:]
    assert "stopping after this batch" in stderr and "SIGINT received: stopped at epoch 0, step 5" in stderr
    assert "Traceback" not in stderr and "SIGTERM" not in stderr  # Lightning's "Received SIGTERM: 15" is silenced
    run = _run_folder(tmp_path / "runs")
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 5 and set(saved["callbacks"]["InterruptCheckpoint"]) == {"rng", "partial_epoch"}

    resumed = subprocess.run(
        [sys.executable, "-m", "lit_nnopt", *args, "--ckpt_path", "last"],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"lit_nnopt: resuming from {(run / 'checkpoints' / 'last.ckpt').relative_to(tmp_path)}" in resumed.stderr
    assert _run_folder(tmp_path / "runs") == run  # the same folder, not a new run
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 30


# -- W&B failures -------------------------------------------------------------------------------


class _FailingWandbServer(BaseHTTPRequestHandler):
    requests = 0

    def _fail(self) -> None:
        type(self).requests += 1
        body = b'{"errors": [{"message": "internal error"}]}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _fail

    def log_message(self, *args) -> None:
        pass


@pytest.mark.slow  # subprocesses
def test_a_failing_wandb_server_does_not_stop_training(mnist_dir, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FailingWandbServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        **os.environ,
        "WANDB_MODE": "online",
        "WANDB_API_KEY": FAKE_KEY,
        "HOME": str(tmp_path),
        "WANDB_BASE_URL": f"http://127.0.0.1:{server.server_address[1]}",
        "PYTHONUNBUFFERED": "1",
    }
    try:
        started = time.monotonic()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "lit_nnopt",
                "fit",
                "--config",
                str(_config(tmp_path, mnist_dir)),
                "--trainer.default_root_dir",
                str(tmp_path / "runs"),
                "--trainer.max_epochs",
                "1",
                "--trainer.logger.mode",
                "auto",
                "--trainer.logger.init_timeout",
                "5",
            ],
            check=False,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        elapsed = time.monotonic() - started
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr[-3000:]
    assert _FailingWandbServer.requests > 0, "wandb never called the server"
    assert "could not start online" in result.stderr
    summary = json.loads((_run_folder(tmp_path / "runs") / "summary.json").read_text())
    assert summary["history"][0]["val_acc"] > 0.5
    assert elapsed < 120
