"""What the CLI checks before it trains or writes: config values, output folders, checkpoints."""

from __future__ import annotations

import inspect
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from lit_nnopt.app.errors import ConfigError

_SPECIAL_CKPT_PATHS = ("last", "best", "hpc")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


class CheckpointError(ValueError):
    """A checkpoint is missing, is not a checkpoint, or does not fit the configured model."""


class OutputDirError(ValueError):
    """A folder the run must write to cannot be written."""


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
        # A str: torch before 2.3 memory-maps only a file name given as one, and refuses a Path.
        return torch.load(str(file), map_location="cpu", weights_only=weights_only is not False, mmap=True)
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


def check_output_dirs(config: Any) -> None:
    """Refuse, before a run folder is named below them, the folders a run's config says to write to.

    Raises:
        OutputDirError: for the first folder that cannot be created or written.
    """
    trainer = config.get("trainer", {})
    folders = [(trainer.get("default_root_dir"), "--trainer.default_root_dir")]
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        folders.append((init_arg(logger, "save_dir"), "--trainer.logger.save_dir"))
    folders.append((config.get("checkpoint", {}).get("dirpath"), "--checkpoint.dirpath"))
    for folder, option in folders:
        if folder:
            check_writable(folder, option)


def check_optimizer_settings(config: Any) -> None:
    """Refuse an optimizer lr that is not a positive number and a negative scheduler patience.

    torch checks neither where the CLI could say which option to change: the optimizer and
    ReduceLROnPlateau are built only when training starts.

    Raises:
        ConfigError: naming the option and the value to give.
    """
    lr = init_arg(config.get("optimizer"), "lr")
    if lr is not None and not (isinstance(lr, (int, float)) and lr > 0):
        raise ConfigError(
            f"`optimizer.init_args.lr` must be a positive number, got {lr!r}. Set e.g. `--optimizer.lr 0.001`."
        )
    scheduler = config.get("lr_scheduler")
    patience = init_arg(scheduler, "patience")
    if isinstance(patience, (int, float)) and patience < 0:
        raise ConfigError(
            f"`lr_scheduler.init_args.patience` of {scheduler.get('class_path')} must be >= 0, got {patience!r}: "
            "it counts the checks without improvement to wait for."
        )


def init_arg(namespace: Any, key: str) -> Any:
    """``init_args[key]`` of a parsed ``class_path`` entry; None where there is none."""
    if not namespace:
        return None
    init_args = namespace.get("init_args") if hasattr(namespace, "get") else None
    return init_args.get(key) if init_args is not None and hasattr(init_args, "get") else None
