"""Checkpoints written atomically, so that a save cut short never destroys the previous file."""

from __future__ import annotations

import errno
import inspect
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from typing_extensions import override

# Whether Lightning hands `weights_only` to its checkpoint IO (2.6.6 does, 2.5.6 does not).
_LIGHTNING_LOADS_WEIGHTS_ONLY = "weights_only" in inspect.signature(TorchCheckpointIO.load_checkpoint).parameters


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes checkpoints atomically and loads them with ``weights_only=True``.

    A save goes to a hidden temporary file beside the target (``.last.ckpt.<pid>.tmp``), is
    flushed to disk, and is renamed over the target: a save cut short by a crash, a kill or a
    full disk leaves the previous checkpoint as it was. (Lightning's own save stages the file
    in the system's temporary folder, and moving it from there is a copy, not a rename, when
    that folder is on another file system.) After a hard kill the temporary file may remain;
    it never has the target's name. Remote paths (``s3://`` ...) are saved as Lightning does.

    Loading uses ``weights_only=True`` unless ``--weights_only false`` asks otherwise: a
    checkpoint then holds only tensors and plain values and cannot run code when loaded.

    Example::

        trainer = Trainer(plugins=[AtomicCheckpointIO()])
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, target)
        except BaseException as error:
            tmp.unlink(missing_ok=True)
            reason = _save_failure(error)
            if reason is None:
                raise
            raise CheckpointSaveError(_save_failure_message(target, reason)) from error
        _fsync_folder(target.parent)

    @override
    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        weights_only = True if weights_only is None else weights_only
        if _LIGHTNING_LOADS_WEIGHTS_ONLY:
            kwargs = {"map_location": map_location} if map_location is not None else {}
            return super().load_checkpoint(path, weights_only=weights_only, **kwargs)
        # Such a Lightning loads with torch's default, which before torch 2.6 unpickles anything: load here.
        filesystem = get_filesystem(path)
        if not filesystem.exists(path):
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        with filesystem.open(path, "rb") as file:
            return torch.load(file, map_location=map_location, weights_only=weights_only)


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (disk full, no permission...); the previous file is intact."""


def _save_failure(error: BaseException) -> str | None:
    """Why a save failed, in words, for the OS errors a user can fix; None for anything else.

    ``torch.save`` reports a full disk from its C++ zip writer as a RuntimeError such as
    "[enforce fail at inline_container.cc:672] . unexpected pos 426880 vs 426772".
    """
    if isinstance(error, OSError):
        if error.errno == errno.ENOSPC:
            return "the disk is full"
        if error.errno == errno.EDQUOT:
            return "the disk quota is exceeded"
        return error.strerror or str(error)
    if isinstance(error, RuntimeError) and re.search(r"inline_container|unexpected pos|file write failed", str(error)):
        return "the write failed, most likely because the disk is full"
    return None


def _save_failure_message(target: Path, reason: str) -> str:
    kept = f"the previous {target.name} is intact" if target.exists() else f"no {target.name} was written"
    return (
        f"Could not save the checkpoint {target}: {reason}. Nothing was half-written: {kept}. "
        f"Free space in {target.parent} (or point `--checkpoint.dirpath` elsewhere) and resume with `--ckpt_path last`."
    )


def _fsync_folder(folder: Path) -> None:
    # The rename lives in the folder's entry table; without this a power cut may undo it.
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its rename is durable enough
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _is_local_file(path: Any) -> bool:
    """Whether ``path`` is on the local file system (not ``s3://`` or another fsspec protocol)."""
    protocol = get_filesystem(path).protocol
    return "file" in ((protocol,) if isinstance(protocol, str) else protocol)
