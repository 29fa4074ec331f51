"""Nothing lost: stop cleanly on SIGTERM or Ctrl-C, write checkpoints atomically, refuse bad input early.

- :class:`InterruptCheckpoint` (a default callback of ``python -m lit_nnopt``): on SIGTERM or
  Ctrl-C during ``fit`` it lets the current batch finish, saves ``last.ckpt`` and says how to
  resume. Every checkpoint it takes part in also carries the random-number generators and
  the epoch's partial metrics, so that a run resumed mid-epoch ends with the same weights and
  metrics as one never interrupted.
- :class:`AtomicCheckpointIO`: writes a checkpoint to a temporary file in the same folder and
  renames it over the target, so a save cut short leaves the previous file intact; loads with
  ``weights_only=True`` unless told otherwise.
- ``check_*`` and :func:`find_resumable_checkpoint`: what the CLI checks before it trains.
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import pickle
import random
import re
import shlex
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torchmetrics import Metric

# Config sections that decide whether a checkpoint fits a run: what it trains and on what.
FINGERPRINT_SECTIONS = ("model", "optimizer", "lr_scheduler", "data")
# Data options that name where the files are rather than what they are.
_DATA_LOCATION_KEYS = ("data_dir", "download")
_LAST_NAME = re.compile(rf"^{ModelCheckpoint.CHECKPOINT_NAME_LAST}(-v\d+)?\{ModelCheckpoint.FILE_EXTENSION}$")
_SPECIAL_CKPT_PATHS = ("last", "best", "hpc")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


class CheckpointError(ValueError):
    """A checkpoint is missing, is not a checkpoint, or does not fit the configured model."""


class OutputDirError(ValueError):
    """A folder the run must write to cannot be written."""


class ConfigFileError(ValueError):
    """A ``--config`` file is not a YAML mapping."""


# -- interruption ------------------------------------------------------------------------


class InterruptCheckpoint(Callback):
    """Stops ``fit`` cleanly on SIGTERM or Ctrl-C, saves a checkpoint and says how to resume.

    Lightning's own SIGTERM handler only raises a flag; the training and validation loops
    check it after each batch and raise ``SIGTERMException`` (a ``SystemExit`` without a
    code, i.e. exit status 0). This callback saves ``<dirpath>/<filename>.ckpt`` at that
    point, prints where it is and the command that resumes from it, and sets the exit status
    to 143 (128 + SIGTERM), so that a scheduler sees the run did not finish.

    Ctrl-C during training is handled the same way (exit status 130): the first one asks the
    loops to stop after the current batch, so the checkpoint holds a state between two steps,
    never one torn in the middle of an optimizer update; a second Ctrl-C stops at once,
    without a checkpoint, as Lightning does by default.

    A signal that arrives during a validation takes effect when the validation ends, for
    Lightning cannot resume a validation midway without losing its metrics (and the
    checkpoint that monitors them). Validating lit_nnopt's MLP on MNIST took 0.1 to 2 s on
    two shared CPU cores, its CNN about 35 s: after ``validation_grace`` seconds the run
    stops midway, so that it saves before a scheduler's grace period (often 30 s) runs out.

    The callback's state, which goes into every checkpoint, holds torch's, CUDA's and
    Python's random-number generators, and during a training epoch the epoch's running
    aggregates of the logged metrics (Lightning checkpoints neither). They are put back before
    the first batch after a resume, so dropout draws the same masks and the resumed epoch's
    ``train_loss``/``train_acc`` cover the whole epoch. With the in-memory ``BatchLoader``
    resuming at the next batch, a single-process run resumed from a mid-epoch checkpoint ends
    bitwise equal to an uninterrupted one. NumPy's generator is not saved; under DDP the
    epoch's aggregates are not either (each rank holds its share), so the metrics of an epoch
    resumed midway cover the batches after the resume, as with Lightning alone.

    Args:
        dirpath: folder of the checkpoint; defaults to the ModelCheckpoint's folder, else
            ``<log_dir>/checkpoints``.
        filename: its name without ``.ckpt``. ``last`` (the default) replaces the
            ModelCheckpoint's ``last.ckpt``, which is what ``--ckpt_path last`` resumes from.
        catch_ctrl_c: turn the first Ctrl-C during training into a clean stop as above.
        validation_grace: seconds a signal waits for the validation under way to end; 0
            stops after the current validation batch.
        resume_command: the command to print for resuming; ``{ckpt_path}`` in it is replaced
            by the checkpoint's path. Defaults to ``trainer.fit(..., ckpt_path=<path>)``.

    After a stop, ``saved_path`` is the checkpoint's path.

    Raises:
        ValueError: if ``filename`` is empty or holds a path separator, or
            ``validation_grace`` is negative.

    Example::

        python -m lit_nnopt fit --config configs/adam.yaml   # then: kill -TERM <pid>
        python -m lit_nnopt fit --config configs/adam.yaml --ckpt_path last
    """

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str = ModelCheckpoint.CHECKPOINT_NAME_LAST,
        catch_ctrl_c: bool = True,
        validation_grace: float = 10.0,
        resume_command: str | None = None,
    ) -> None:
        if not filename or os.sep in filename or "/" in filename:
            raise ValueError(f"`filename` must be a file name without folder or extension, got {filename!r}.")
        if not validation_grace >= 0:
            raise ValueError(f"`validation_grace` must be a number of seconds >= 0, got {validation_grace}.")
        self.dirpath = dirpath
        self.filename = filename
        self.catch_ctrl_c = catch_ctrl_c
        self.validation_grace = validation_grace
        self.resume_command = resume_command
        self.saved_path: str | None = None
        self._signal: int | None = None
        self._deferred_since: float | None = None
        self._lightning_sigterm: Any = None
        self._trainer: pl.Trainer | None = None
        self._to_restore: dict[str, Any] | None = None
        self._partial_to_merge: dict[str, Any] | None = None

    # The handlers are installed once training starts, after Lightning's signal connector took
    # note of the previous ones: Lightning puts those back when fit ends, however it ends.
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore(trainer, pl_module)
        self._signal, self._deferred_since = None, None
        if not _in_main_thread():
            return
        self._lightning_sigterm = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        if self.catch_ctrl_c:
            signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self._signal = self._signal or signum
        trainer = self._trainer
        if trainer is not None and trainer.validating and self.validation_grace > 0:
            if self._deferred_since is None:
                self._deferred_since = time.monotonic()
                grace = f"{self.validation_grace:g}"
                sys.stderr.write(f"\nlit_nnopt: stopping when this validation ends (in {grace} s at most).\n")
            return
        self._raise_flag(frame)

    def _raise_flag(self, frame: FrameType | None) -> None:
        # Lightning's handler only sets the flag that its loops check after each batch.
        if callable(self._lightning_sigterm):
            self._lightning_sigterm(signal.SIGTERM, frame)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self._signal is not None:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        sys.stderr.write("\nlit_nnopt: stopping after this batch to save a checkpoint; Ctrl-C again stops at once.\n")
        self._on_sigterm(signum, frame)

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._deferred_since is not None and time.monotonic() - self._deferred_since >= self.validation_grace:
            self._deferred_since = None
            self._raise_flag(None)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._deferred_since is not None:
            self._deferred_since = None
            self._raise_flag(None)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            signum = self._signal or signal.SIGTERM
            exception.code = 128 + signum
            self._save_and_explain(trainer, signal.Signals(signum).name)
        elif isinstance(exception, KeyboardInterrupt) and trainer.is_global_zero:
            # It may have landed inside an optimizer step: that state is not worth saving.
            last = getattr(trainer.checkpoint_callback, "last_model_path", "")
            sys.stderr.write(
                "lit_nnopt: stopped at once, without a checkpoint"
                + (f"; the last one saved is {last}.\n" if last else ".\n")
            )

    def _save_and_explain(self, trainer: pl.Trainer, signal_name: str) -> None:
        where = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            if trainer.is_global_zero:
                sys.stderr.write(f"lit_nnopt: {signal_name} received: stopped; outside training, nothing to save.\n")
            return
        path = self._checkpoint_path(trainer)
        checkpoint = trainer.checkpoint_callback
        if isinstance(checkpoint, ModelCheckpoint) and path.stem == checkpoint.CHECKPOINT_NAME_LAST:
            # Stored in the checkpoint, so that after a resume ModelCheckpoint overwrites this
            # file with its next `last.ckpt` instead of writing `last-v1.ckpt` beside it.
            checkpoint.last_model_path = str(path)
        trainer.save_checkpoint(path, weights_only=False)
        self.saved_path = str(path)
        if trainer.is_global_zero:
            if self.resume_command:
                command = self.resume_command.replace("{ckpt_path}", shlex.quote(str(path)))
            else:
                command = f"trainer.fit(model, datamodule, ckpt_path={str(path)!r})"
            sys.stderr.write(
                f"lit_nnopt: {signal_name} received: stopped at {where} and saved {path}\n"
                f"Resume with: {command}\n"
            )

    def _checkpoint_path(self, trainer: pl.Trainer) -> Path:
        checkpoint = trainer.checkpoint_callback
        if self.dirpath:
            folder = Path(self.dirpath)
        elif isinstance(checkpoint, ModelCheckpoint) and checkpoint.dirpath:
            folder = Path(checkpoint.dirpath)
        else:
            folder = Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"
        return folder / f"{self.filename}{ModelCheckpoint.FILE_EXTENSION}"

    # -- exact resume --------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        state: dict[str, Any] = {"rng": _rng_state()}
        # Under DDP each rank holds its own share of the aggregates, and a checkpoint only rank 0's.
        if trainer is not None and trainer.training and not trainer.sanity_checking and trainer.world_size == 1:
            state["partial_epoch"] = _partial_epoch(trainer)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer  # state_dict() takes no trainer, and needs it

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = None

    def _restore(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Put back what a resumed checkpoint saved, at the point where the saving run went on."""
        state, self._to_restore = self._to_restore, None
        if not state:
            return
        _set_rng_state(state.get("rng") or {})
        partial = state.get("partial_epoch")
        if partial and partial["epoch"] == trainer.current_epoch:
            for name, metric_state in partial["metrics"].items():
                _set_metric_state(pl_module.get_submodule(name), metric_state)
            trainer.callback_metrics.update(partial["callback_metrics"])
            self._partial_to_merge = partial["results"]  # their entries exist once the first batch logged

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        saved, self._partial_to_merge = self._partial_to_merge, None
        if saved:
            _merge_results(trainer.fit_loop.epoch_loop._results, saved)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch.cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "torch.cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch.cuda"])


def _partial_epoch(trainer: pl.Trainer) -> dict[str, Any]:
    """What a training epoch has accumulated so far, which Lightning leaves out of checkpoints.

    That is the states of the module's torchmetrics, the running aggregates of values logged
    with ``self.log(..., on_epoch=True)`` (kept in the loop's private ``_results``), and
    ``trainer.callback_metrics`` (the last value of each metric, which callbacks read).
    """
    results = {
        key: {name: _cpu_copy(value) for name, value in result.metric_state.items()}
        for key, result in trainer.fit_loop.epoch_loop._results.items()
        if result.is_tensor and result.meta.on_epoch
    }
    metrics = {
        name: {state: _cpu_copy(value) for state, value in module.metric_state.items()}
        for name, module in trainer.lightning_module.named_modules()
        if isinstance(module, Metric)
    }
    callback_metrics = {name: _cpu_copy(value) for name, value in trainer.callback_metrics.items()}
    return {
        "epoch": trainer.current_epoch, "results": results, "metrics": metrics, "callback_metrics": callback_metrics,
    }


def _cpu_copy(value: Any) -> Any:
    if isinstance(value, list):
        return [_cpu_copy(item) for item in value]
    return value.detach().cpu().clone() if isinstance(value, torch.Tensor) else value


def _set_metric_state(metric: Metric, state: dict[str, Any]) -> None:
    device = metric.device
    for name, value in state.items():
        setattr(metric, name, [item.to(device) for item in value] if isinstance(value, list) else value.to(device))


def _merge_results(results: dict[str, Any], saved: dict[str, dict[str, torch.Tensor]]) -> None:
    """Fold the aggregates saved before the resume into those of the first batch after it.

    A mean is a running sum: ``saved + first`` is bitwise the ``sum + first`` that the
    uninterrupted run computes, since floating-point addition is commutative.
    """
    for key, state in saved.items():
        result = results.get(key)
        if result is None:
            continue
        for name, value in state.items():
            current = getattr(result, name)
            value = value.to(current.device)
            if name == "value" and result.meta.is_max_reduction:
                setattr(result, name, torch.maximum(value, current))
            elif name == "value" and result.meta.is_min_reduction:
                setattr(result, name, torch.minimum(value, current))
            else:
                setattr(result, name, value + current)


def resume_command(argv: list[str], ckpt_path: str = "last") -> str:
    """``python -m lit_nnopt ARGV`` with its ``--ckpt_path`` set to ``ckpt_path``."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        elif not arg.startswith("--ckpt_path="):
            kept.append(arg)
    return shlex.join(["python", "-m", "lit_nnopt", *kept, "--ckpt_path"]) + f" {ckpt_path}"


# -- atomic checkpoints ------------------------------------------------------------------


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

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
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

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        kwargs = {"map_location": map_location} if map_location is not None else {}
        return super().load_checkpoint(path, weights_only=True if weights_only is None else weights_only, **kwargs)


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


# -- checks before training --------------------------------------------------------------


def load_checkpoint_to_check(path: str, weights_only: bool | None = None) -> dict[str, Any] | None:
    """The checkpoint at ``--ckpt_path``, loaded as Lightning will load it; None for ``last``, ``best``, URLs...

    Raises:
        CheckpointError: if it is missing, is not a Lightning checkpoint, is damaged, or holds
            objects that ``weights_only=True`` refuses.
    """
    if path in _SPECIAL_CKPT_PATHS or "://" in path:
        return None
    file = Path(path)
    if not file.is_file():
        what = "is a folder" if file.is_dir() else "does not exist"
        raise CheckpointError(
            f"--ckpt_path {path} {what}. Give a .ckpt file, e.g. runs/lit_nnopt/<run id>/checkpoints/last.ckpt, "
            "or `last` to resume the latest run of this config."
        )
    checkpoint = _load_for_check(file, weights_only)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint (it holds no `state_dict`). Give a .ckpt file written by "
            "`python -m lit_nnopt fit` (in <run folder>/checkpoints/)."
        )
    return checkpoint


def check_hyperparameters(path: str, checkpoint: dict[str, Any], model_class: type) -> None:
    """Refuse a checkpoint whose hyperparameters ``model_class`` does not take.

    LightningCLI builds the model from the checkpoint's hyperparameters; one it does not know
    means the checkpoint comes from another model, or another version of it.

    Raises:
        CheckpointError: naming the unknown hyperparameters.
    """
    accepted = set(inspect.signature(model_class).parameters)
    unknown = sorted(set(checkpoint.get("hyper_parameters") or {}) - accepted - {"_instantiator", "_class_path"})
    if unknown:
        raise CheckpointError(
            f"{path} was written by another model: {model_class.__name__} takes no {', '.join(unknown)}. "
            f"It takes {', '.join(sorted(accepted))}. Evaluate it with the project or version that trained it."
        )


def check_checkpoint(path: str, model: torch.nn.Module, fitting: bool, weights_only: bool | None = None) -> None:
    """Refuse ``--ckpt_path`` when it is not a Lightning checkpoint or does not fit ``model``.

    Fitting also needs the same optimizer and LR scheduler classes, whose states it restores.

    Raises:
        CheckpointError: saying which and how to fix it.
    """
    checkpoint = load_checkpoint_to_check(path, weights_only)
    if checkpoint is None:
        return
    problems = _shape_mismatches(checkpoint["state_dict"], model.state_dict())
    saved_hparams = checkpoint.get("hyper_parameters") or {}
    if fitting:
        problems += _class_mismatches(saved_hparams, dict(getattr(model, "hparams", {})))
    if problems:
        net = saved_hparams.get("net")
        trained = f" It was trained with net {_describe(net)}." if net else ""
        raise CheckpointError(
            f"{path} does not fit this config: {'; '.join(problems[:5])}"
            f"{' ...' if len(problems) > 5 else ''}.{trained} Use the config the checkpoint was trained "
            "with: its run folder holds it as config.yaml (`--config <run folder>/config.yaml`)."
        )


def describe_model_override(checkpoint: dict[str, Any], configured_net: Any) -> str | None:
    """A note when the checkpoint's network, which LightningCLI builds, differs from the config's."""
    saved = (checkpoint.get("hyper_parameters") or {}).get("net")
    if not isinstance(saved, dict) or not isinstance(configured_net, dict):
        return None
    configured = {"class_path": configured_net.get("class_path"), "init_args": configured_net.get("init_args") or {}}
    same_class = str(configured["class_path"]).rsplit(".", 1)[-1] == str(saved.get("class_path")).rsplit(".", 1)[-1]
    if same_class and _plain(configured["init_args"]) == _plain(saved.get("init_args") or {}):
        return None
    return (
        f"the model is built from the checkpoint's hyperparameters, net {_describe(saved)}, "
        f"not from the config's {_describe(configured)}"
    )


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value)) if value is not None else None


def _load_for_check(file: Path, weights_only: bool | None) -> Any:
    with open(file, "rb") as handle:
        is_zip = handle.read(4) == _ZIP_MAGIC
    if not is_zip:
        raise CheckpointError(
            f"{file} is not a checkpoint: it was not written by torch.save. Give a .ckpt file written by "
            "`python -m lit_nnopt fit` (in <run folder>/checkpoints/)."
        )
    try:
        return torch.load(file, map_location="cpu", weights_only=weights_only is not False, mmap=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{file} holds more than tensors and plain values, and checkpoints are loaded with "
            "weights_only=True so that loading one cannot run code. Use a checkpoint written by lit_nnopt; "
            "only for a file you trust, pass `--weights_only false`."
        ) from error
    except Exception as error:  # RuntimeError from the zip reader, EOFError...: a damaged file
        reason = str(error).strip().split(". ")[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{file} is truncated or damaged ({reason}). Use another checkpoint of the run, e.g. its "
            "best-*.ckpt, or train again."
        ) from error


def _shape_mismatches(saved: dict[str, Any], expected: dict[str, torch.Tensor]) -> list[str]:
    problems = []
    missing = [key for key in expected if key not in saved]
    unexpected = [key for key in saved if key not in expected]
    if missing:
        problems.append(f"the model has {_names(missing)} that the checkpoint lacks")
    if unexpected:
        problems.append(f"the checkpoint has {_names(unexpected)} that the model lacks")
    for key, tensor in expected.items():
        value = saved.get(key)
        if isinstance(value, torch.Tensor) and value.shape != tensor.shape:
            problems.append(f"{key} is {tuple(value.shape)} in the checkpoint, {tuple(tensor.shape)} in the model")
    return problems


def _class_mismatches(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    problems = []
    for key in ("optimizer", "lr_scheduler"):
        before, now = _class_path(saved.get(key)), _class_path(current.get(key))
        if before != now:
            problems.append(f"the checkpoint's {key} is {before}, this config's is {now}")
    return problems


def _class_path(value: Any) -> str | None:
    return value.get("class_path") if isinstance(value, dict) else None


def _names(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _describe(net: Any) -> str:
    if isinstance(net, dict) and "class_path" in net:
        args = ", ".join(f"{key}={value!r}" for key, value in (net.get("init_args") or {}).items())
        return f"{net['class_path']}({args})"
    return repr(net)


def check_writable(folder: str | os.PathLike, option: str) -> None:
    """Refuse a run folder that cannot be created or written, before anything is trained.

    Raises:
        OutputDirError: naming the folder, the reason and the option that sets it.
    """
    if "://" in str(folder):
        return
    path = Path(folder).expanduser().absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    reason = None
    if not existing.is_dir():
        reason = f"{existing} is a file, not a folder"
    else:
        try:
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as error:
            reason = f"{existing} is not writable ({error.strerror or error})"
    if reason:
        raise OutputDirError(
            f"Cannot write the run's files to {path}: {reason}. Set `{option}` to a folder you can write to."
        )


def check_config_file(path: str | os.PathLike) -> None:
    """Refuse a ``--config`` file that is not a YAML mapping, naming the file and the problem.

    Raises:
        ConfigFileError: if the file is not UTF-8 text, not YAML, or not a mapping of keys.
    """
    try:
        content = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        reason = "it is not text (not UTF-8)"
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = f"it is not valid YAML{where} ({getattr(error, 'problem', None) or error})"
    except OSError as error:
        reason = f"it cannot be read ({error.strerror or error})"
    else:
        if content is None or isinstance(content, dict):
            return
        reason = f"it holds a YAML {type(content).__name__}, not a mapping of keys"
    raise ConfigFileError(
        f"--config {path} is not a lit_nnopt config: {reason}. A config is a YAML mapping with keys such as "
        "`trainer:`, `model:`, `data:` and `optimizer:` (see configs/adam.yaml); "
        "`python -m lit_nnopt fit --print_config` prints a complete one."
    )


def config_files(argv: list[str]) -> list[str]:
    """The existing files named by ``--config`` in ``argv`` (a ``--config`` value may also be inline YAML)."""
    values = [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]
    values += [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"]
    return [value for value in values if Path(value).is_file()]


# -- `--ckpt_path last` ------------------------------------------------------------------


def fingerprint(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a dumped CLI config that decide whether a run's checkpoint can be resumed by it."""
    sections = {key: config.get(key) for key in FINGERPRINT_SECTIONS}
    if isinstance(sections["data"], dict):
        sections["data"] = {k: v for k, v in sections["data"].items() if k not in _DATA_LOCATION_KEYS}
    return sections


def find_resumable_checkpoint(project_dir: str | os.PathLike, config: dict[str, Any]) -> Path | None:
    """The newest ``last*.ckpt`` among the run folders of ``project_dir`` trained with the same config.

    A run folder (``<save_dir>/<project>/<run id>``) qualifies when its ``config.yaml`` has the
    same :data:`FINGERPRINT_SECTIONS` as ``config`` (data location aside).
    """
    wanted = fingerprint(config)
    candidates = []
    for checkpoint in Path(project_dir).glob("*/checkpoints/*.ckpt"):
        if not _LAST_NAME.match(checkpoint.name):
            continue
        saved = _read_yaml(checkpoint.parent.parent / "config.yaml")
        if saved is not None and fingerprint(saved) == wanted:
            candidates.append(checkpoint)
    return max(candidates, key=lambda path: path.stat().st_mtime_ns, default=None)


def _read_yaml(path: Path) -> dict[str, Any] | None:
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return content if isinstance(content, dict) else None
