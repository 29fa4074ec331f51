"""AtomicCheckpointIO: a checkpoint is written whole or not at all, says what a full disk did, and runs no code."""

from __future__ import annotations

import errno
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lit_nnopt import MNISTClassifier
from lit_nnopt.app.checks import CheckpointError, check_checkpoint
from lit_nnopt.checkpoint_io import AtomicCheckpointIO, CheckpointSaveError
from tests.helpers import REPO


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
