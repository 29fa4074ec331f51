"""Nothing lost: interruption and exact resume, atomic checkpoints, checkpoint checks, W&B failures."""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.nn import functional as F
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lit_nnopt import MLP, BatchLoader, MNISTClassifier
from lit_nnopt.app.checks import CheckpointError, check_checkpoint
from lit_nnopt.app.config_files import config_files
from lit_nnopt.app.reports import RunSummary
from lit_nnopt.app.runs import find_resumable_checkpoint, resume_command
from lit_nnopt.callbacks import EarlyStopping, ExactResume, InterruptCheckpoint
from lit_nnopt.checkpoint_io import AtomicCheckpointIO, CheckpointSaveError
from tests.helpers import REPO

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # the shape of a W&B key, known to no server


# -- the resume command and `--ckpt_path last` -----------------------------------------------


def test_resume_command_replaces_the_ckpt_path():
    argv = ["fit", "--config", "my config.yaml", "--ckpt_path", "old.ckpt", "--ckpt_path=other.ckpt", "--x", "1"]
    assert resume_command(argv) == "python -m lit_nnopt fit --config 'my config.yaml' --x 1 --ckpt_path last"
    assert resume_command(["fit"], "{ckpt_path}").endswith("--ckpt_path {ckpt_path}")


def test_config_files_are_the_existing_files_after_config(tmp_path):
    real = tmp_path / "a.yaml"
    real.write_text("trainer: {}\n")
    argv = ["fit", "--config", str(real), f"--config={real}", "--config", "{trainer: {max_epochs: 1}}"]
    assert config_files(argv) == [str(real), str(real)]


def _fake_run(project_dir: Path, run_id: str, config: dict, checkpoint: str = "last.ckpt") -> Path:
    run = project_dir / run_id
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    path = run / "checkpoints" / checkpoint
    path.write_bytes(b"checkpoint")
    return path


def test_ckpt_path_last_finds_the_newest_run_of_the_same_config(tmp_path):
    adam = {
        "model": {"net": "mlp"},
        "optimizer": {"class_path": "torch.optim.Adam"},
        "lr_scheduler": None,
        "data": {"batch_size": 64, "data_dir": "/a"},
        "trainer": {"max_epochs": 5},
    }
    sgd = {**adam, "optimizer": {"class_path": "torch.optim.SGD"}}
    older = _fake_run(tmp_path, "older", adam)
    newer = _fake_run(tmp_path, "newer", adam, "last-v1.ckpt")
    _fake_run(tmp_path, "best-only", adam, "best-00-0.9000.ckpt")
    other = _fake_run(tmp_path, "other", sgd)
    os.utime(older, ns=(1, 1))
    # Where the data lives and how long to train do not make another run; the optimizer does.
    current = {**adam, "data": {"batch_size": 64, "data_dir": "/b"}, "trainer": {"max_epochs": 9}}
    assert find_resumable_checkpoint(tmp_path, current) == newer
    assert find_resumable_checkpoint(tmp_path, sgd) == other
    assert find_resumable_checkpoint(tmp_path, {**adam, "data": {"batch_size": 32}}) is None


# -- atomic checkpoints and weights_only ------------------------------------------------------


def test_a_checkpoint_on_another_file_system_is_saved_by_lightnings_own_io():
    """A remote path (here fsspec's in-memory file system) is Lightning's to write: no local temporary file."""
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, "memory://lit_nnopt-test/last.ckpt")
    loaded = io.load_checkpoint("memory://lit_nnopt-test/last.ckpt")
    assert torch.equal(loaded["state_dict"]["w"], torch.ones(2))


def test_a_save_cut_short_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)

    def torn_save(obj, file):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of writing

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.zeros(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


@pytest.mark.parametrize(
    "failure, reason",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "the disk is full"),
        (
            RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 426880 vs 426772"),
            "the write failed, most likely because the disk is full",
        ),
        (PermissionError(errno.EACCES, "Permission denied"), "Permission denied"),
    ],
)
def test_a_full_disk_says_what_happened_and_which_file_is_intact(tmp_path, monkeypatch, failure, reason):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)

    def full_disk(obj, file):
        file.write(b"PK\x03\x04 the first bytes")
        raise failure

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointSaveError) as raised:
        io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    monkeypatch.undo()
    message = str(raised.value)
    assert message.startswith(f"Could not save the checkpoint {path}: {reason}")
    assert "the previous last.ckpt is intact" in message and "--checkpoint.dirpath" in message
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.zeros(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_a_first_save_on_a_full_disk_says_no_file_was_written(tmp_path, monkeypatch):
    def full_disk(obj, file):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointSaveError, match="disk is full. Nothing was half-written: no best.ckpt was written"):
        AtomicCheckpointIO().save_checkpoint({}, tmp_path / "best.ckpt")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow  # subprocesses
def test_a_killed_save_never_leaves_a_partial_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    script = (
        "import sys, torch\n"
        "from lit_nnopt.checkpoint_io import AtomicCheckpointIO\n"
        "io = AtomicCheckpointIO()\n"
        "for i in range(1000):\n"
        "    io.save_checkpoint({'step': i, 'w': torch.full((8_000_000,), float(i))}, sys.argv[1])\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script, str(path)], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        # Kill it while a second save is being written: its temporary file exists beside the target.
        while not (path.exists() and list(tmp_path.glob(".last.ckpt.*.tmp"))) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert list(tmp_path.glob(".last.ckpt.*.tmp")), "the writer never got to a second save"
    finally:
        process.kill()
        process.wait()
    checkpoint = torch.load(path, weights_only=True)
    assert torch.equal(checkpoint["w"], torch.full((8_000_000,), float(checkpoint["step"])))


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoints_load_with_weights_only_so_a_file_cannot_run_code(tmp_path):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsCode(marker)}, evil)
    with pytest.raises(pickle.UnpicklingError):
        AtomicCheckpointIO().load_checkpoint(evil)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        check_checkpoint(str(evil), MNISTClassifier(), fitting=False)
    assert not marker.exists()


# -- checkpoint checks -------------------------------------------------------------------------


def _checkpoint_of(model: MNISTClassifier, path: Path) -> Path:
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


def _not_a_checkpoint(path: Path, kind: str) -> Path:
    if kind == "folder":
        path.mkdir()
    elif kind == "yaml":
        path.write_text("trainer:\n  max_epochs: 3\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "no-state-dict":
        torch.save({"weights": torch.ones(2)}, path)
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "does not exist"),
        ("folder", "is a folder"),
        ("yaml", "not written by torch.save"),
        ("empty", "not written by torch.save"),
        ("no-state-dict", "holds no `state_dict`"),
    ],
)
def test_a_path_that_is_not_a_checkpoint_is_refused(tmp_path, kind, message):
    path = _not_a_checkpoint(tmp_path / "model.ckpt", kind)
    with pytest.raises(CheckpointError, match=message):
        check_checkpoint(str(path), MNISTClassifier(), fitting=False)


def test_a_truncated_checkpoint_is_refused(tmp_path):
    path = _checkpoint_of(MNISTClassifier(), tmp_path / "whole.ckpt")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        check_checkpoint(str(truncated), MNISTClassifier(), fitting=False)


def test_a_checkpoint_of_another_network_names_the_difference(tmp_path):
    path = _checkpoint_of(MNISTClassifier(net=MLP(hidden_sizes=[16])), tmp_path / "small.ckpt")
    with pytest.raises(CheckpointError) as error:
        check_checkpoint(str(path), MNISTClassifier(net=MLP(hidden_sizes=[32])), fitting=False)
    message = str(error.value)
    assert "net.layers.1.weight is (16, 784) in the checkpoint, (32, 784) in the model" in message
    assert "lit_nnopt.networks.MLP(hidden_sizes=[16]" in message and "config.yaml" in message


def test_another_optimizer_is_refused_for_fit_only(tmp_path):
    adam = MNISTClassifier(optimizer={"class_path": "torch.optim.Adam", "init_args": {"lr": 0.001}})
    sgd = MNISTClassifier(optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}})
    sgd.load_state_dict(adam.state_dict())
    path = _checkpoint_of(adam, tmp_path / "adam.ckpt")
    check_checkpoint(str(path), sgd, fitting=False)  # evaluating needs the weights only
    with pytest.raises(CheckpointError, match="optimizer is torch.optim.Adam, this config's is torch.optim.SGD"):
        check_checkpoint(str(path), sgd, fitting=True)


# -- exact resume, in process -------------------------------------------------------------------


class _TinyClassifier(pl.LightningModule):
    """Logs its epoch metrics as torchmetrics objects (a mean, a max, an accuracy), as ExactResume asks."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 10))
        self.accuracy = MulticlassAccuracy(10)
        self.mean_loss, self.peak_loss = MeanMetric(), MaxMetric()

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        self.accuracy.update(logits, y)
        self.mean_loss.update(loss)
        self.peak_loss.update(loss)
        self.log("loss", self.mean_loss, on_step=False, on_epoch=True)
        self.log("peak_loss", self.peak_loss, on_step=False, on_epoch=True)
        self.log("accuracy", self.accuracy, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.001)


class _SignalAt(pl.Callback):
    """Sends ``signum`` to this process ``times`` times, at one training step or validation batch of epoch 0."""

    def __init__(self, signum: int, step: int = -1, val_batch: int = -1, times: int = 1) -> None:
        self.signum, self.step, self.val_batch, self.times = signum, step, val_batch, times

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self._send()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking and trainer.current_epoch == 0 and batch_idx == self.val_batch:
            self._send()

    def _send(self) -> None:
        for _ in range(self.times):
            os.kill(os.getpid(), self.signum)


def _tiny_fit(
    root: Path,
    *callbacks: pl.Callback,
    ckpt_path: str | None = None,
    val_batches: int = 0,
    interrupt: InterruptCheckpoint | None = None,
    before_interrupt: tuple[pl.Callback, ...] = (),
    module_class: type[pl.LightningModule] = _TinyClassifier,
):
    pl.seed_everything(3, verbose=False)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand((640, 1, 28, 28), generator=generator)
    loader = BatchLoader(images, torch.randint(0, 10, (640,), generator=generator), 32, shuffle=True, seed=1)
    val_loader = BatchLoader(images[:128], torch.randint(0, 10, (128,), generator=generator), 32, shuffle=False)
    summary = RunSummary()
    trainer = pl.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        default_root_dir=root,
        limit_val_batches=val_batches,
        num_sanity_val_steps=0,
        callbacks=[*before_interrupt, interrupt or InterruptCheckpoint(), summary, *callbacks],
    )
    model = module_class()
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=val_loader, ckpt_path=ckpt_path)
    return model, [{k: v for k, v in row.items() if k != "elapsed_seconds"} for row in summary.history]


def test_a_fit_stopped_mid_epoch_by_sigterm_resumes_to_the_same_weights_and_metrics(tmp_path):
    model, history = _tiny_fit(tmp_path / "whole")
    with pytest.raises(SystemExit) as stop:
        _tiny_fit(tmp_path / "cut", _SignalAt(signal.SIGTERM, step=13))
    assert stop.value.code == 143
    checkpoint = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["global_step"] == 13 and saved["callbacks"]["InterruptCheckpoint"]["partial_epoch"]["epoch"] == 0
    resumed, resumed_history = _tiny_fit(tmp_path / "cut", ckpt_path=str(checkpoint))
    assert resumed_history == history and [row["epoch"] for row in history] == [0, 1]
    for name, tensor in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name


def test_sigterm_with_restore_best_weights_saves_and_resumes_the_state_of_the_signal(tmp_path):
    # Issue 15, finding 1: EarlyStopping used to load the best epoch's weights in on_exception,
    # before this checkpoint was written, so it held those weights with the current step.
    def stopper():
        return EarlyStopping("val_loss", patience=10, restore_best_weights=True)

    # Listed before the interrupt checkpoint, as in the CLI, where the default callbacks come last.
    model, history = _tiny_fit(tmp_path / "whole", val_batches=2, before_interrupt=(stopper(),))
    with pytest.raises(SystemExit) as stop:
        _tiny_fit(tmp_path / "cut", _SignalAt(signal.SIGTERM, step=27), val_batches=2, before_interrupt=(stopper(),))
    assert stop.value.code == 143
    checkpoint = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    resumed, resumed_history = _tiny_fit(
        tmp_path / "cut", val_batches=2, ckpt_path=str(checkpoint), before_interrupt=(stopper(),)
    )
    assert resumed_history == history
    for name, tensor in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name


@pytest.mark.parametrize("grace, epochs_done", [(10.0, [0]), (0.0, [])])
def test_a_signal_during_validation_waits_for_its_end_at_most_the_grace(tmp_path, grace, epochs_done):
    interrupt = InterruptCheckpoint(validation_grace=grace)
    with pytest.raises(SystemExit) as stop:
        _tiny_fit(tmp_path, _SignalAt(signal.SIGTERM, val_batch=1), val_batches=4, interrupt=interrupt)
    assert stop.value.code == 143
    assert interrupt.saved_path == str(tmp_path / "checkpoints" / "last.ckpt")
    saved = torch.load(interrupt.saved_path, weights_only=True)
    assert saved["global_step"] == 20  # all of epoch 0's training batches
    history = saved["callbacks"]["RunSummary"]["history"]
    assert [row["epoch"] for row in history] == epochs_done  # the epoch ended, with its validation, or not


def test_a_second_ctrl_c_stops_at_once_without_a_checkpoint(tmp_path, capfd, caplog):
    with pytest.raises(SystemExit) as stop:
        _tiny_fit(tmp_path, _SignalAt(signal.SIGINT, step=5, times=2))
    assert stop.value.code == 1  # Lightning's exit status for a KeyboardInterrupt
    # Logged (issue 15): to stderr in a program, to pytest's log capture under pytest.
    assert "stopped at once, without a checkpoint" in capfd.readouterr().err + caplog.text
    assert not (tmp_path / "checkpoints").exists()


def test_validation_grace_must_not_be_negative():
    with pytest.raises(ValueError, match="`validation_grace` must be a number of seconds >= 0, got -1"):
        InterruptCheckpoint(validation_grace=-1)


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


# -- ExactResume on its own ----------------------------------------------------------------------


class _SaveAtStep13(pl.Callback):
    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 13:
            trainer.save_checkpoint(self.path)


def test_exact_resume_alone_makes_a_mid_epoch_checkpoint_resume_bitwise(tmp_path):
    checkpoint = tmp_path / "step13.ckpt"
    model, history = _tiny_fit(tmp_path / "whole", _SaveAtStep13(checkpoint), interrupt=ExactResume())
    resumed, resumed_history = _tiny_fit(tmp_path / "again", ckpt_path=str(checkpoint), interrupt=ExactResume())
    assert resumed_history == history
    for name, tensor in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name


class _LogsATensor(_TinyClassifier):
    """Also logs its loss as a plain tensor with ``on_epoch=True``: Lightning averages it outside any checkpoint."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("tensor_loss", loss, on_step=False, on_epoch=True)
        return loss


def test_a_value_logged_as_a_tensor_covers_only_the_batches_after_a_mid_epoch_resume(tmp_path):
    # The documented limit of ExactResume (issue 25): public APIs reach a Metric's state, not
    # Lightning's own running mean of a logged tensor. The weights and Metric values still match.
    checkpoint = tmp_path / "step13.ckpt"
    model, history = _tiny_fit(
        tmp_path / "whole", _SaveAtStep13(checkpoint), interrupt=ExactResume(), module_class=_LogsATensor
    )
    resumed, resumed_history = _tiny_fit(
        tmp_path / "again", ckpt_path=str(checkpoint), interrupt=ExactResume(), module_class=_LogsATensor
    )
    for name, tensor in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name
    cut, uncut = resumed_history[0], history[0]
    assert {name: cut[name] for name in ("loss", "peak_loss", "accuracy")} == {
        name: uncut[name] for name in ("loss", "peak_loss", "accuracy")
    }
    assert cut["tensor_loss"] != uncut["tensor_loss"]  # the mean of the batches after step 13 alone
    assert resumed_history[1] == history[1]  # the next epoch is whole again


def test_two_exact_resumes_are_refused(tmp_path):
    with pytest.raises(MisconfigurationException, match="InterruptCheckpoint, ExactResume: each restores"):
        _tiny_fit(tmp_path, ExactResume())
