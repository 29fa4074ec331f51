"""Where a CLI run goes: the checkpoint ``--ckpt_path last`` or ``best`` names, and the folder the run writes to.

``--ckpt_path last`` names the newest ``last.ckpt`` of a run of this config, ``best`` the best
checkpoint by the monitored metric among this config's runs that learnt; ``validate``, ``test``
and ``predict`` refuse to run without a checkpoint. An evaluation of a run's checkpoint writes
into that run's folder, wherever it lies (a run that ``compare`` trained, say), a ``fit``
resumed with ``last`` goes on in its run's folder, and any other run without a logger gets a
new ``<subcommand>-<date>-<time>`` folder. All this is left to Lightning where the user fixed
the folder (an explicit logger ``id``, ``checkpoint.dirpath``, or another logger). Finding the
runs on disk is :mod:`lit_nnopt.app.runs`' job.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lit_nnopt.app.checks import CheckpointError
from lit_nnopt.app.runs import BestRun, best_run_checkpoint, find_resumable_checkpoint, new_run_name, run_folder_of

# The parsed config of the subcommand as the plain dict its `config.yaml` will hold.
Dump = Callable[[Any], dict[str, Any]]


def place_run(subcommand: str, config: Any, dump: Dump) -> None:
    """Set the checkpoint (``config.ckpt_path``) and the run folder (the trainer's or logger's) of a run.

    Args:
        subcommand: ``fit``, ``validate``, ``test`` or ``predict``.
        config: the subcommand's parsed config, changed in place.
        dump: turns ``config`` into the dict a run's ``config.yaml`` holds, to find this config's runs.

    Raises:
        CheckpointError: if ``last`` or ``best`` finds no checkpoint where one is needed, or an
            evaluation has no checkpoint at all.
    """
    root = runs_root(config)
    ckpt_path = config.get("ckpt_path")
    named = ckpt_path in ("last", "best")
    if root is not None and named:
        ckpt_path = config.ckpt_path = _find_checkpoint(subcommand, config, root, ckpt_path, dump)
    if subcommand != "fit" and not ckpt_path:
        raise CheckpointError(_no_checkpoint_message(subcommand, config, root, dump))
    if root is None:
        return
    run = run_folder_of(ckpt_path) if ckpt_path else None
    continues_run = run is not None and (subcommand != "fit" or named)
    logger = config.get("trainer", {}).get("logger")
    if continues_run and run.parent.absolute() != root.absolute():
        sys.stderr.write(f"lit_nnopt: {subcommand}: writing into the checkpoint's run folder {run}\n")
    if is_auto_wandb(logger):
        if continues_run:  # the logger's run folder is <save_dir>/<project>/<id>: the checkpoint's run
            logger.init_args.id = run.name
            logger.init_args.project = run.parent.name
            logger.init_args.save_dir = config.trainer.default_root_dir = str(run.parent.parent)
    elif continues_run:
        config.trainer.default_root_dir = str(run)
    else:
        config.trainer.default_root_dir = str(root / new_run_name(root, subcommand))


def runs_root(config: Any) -> Path | None:
    """The folder holding the run folders lit_nnopt names; None where the user fixed the run's folder."""
    if config.get("checkpoint", {}).get("dirpath"):
        return None
    trainer = config.get("trainer", {})
    logger = trainer.get("logger")
    if logger in (None, False):
        return Path(trainer.get("default_root_dir") or "runs")
    if not is_auto_wandb(logger):
        return None
    init_args = logger.get("init_args") or {}
    if init_args.get("id") or os.environ.get("WANDB_RUN_ID"):
        return None
    return Path(init_args.get("save_dir") or "runs") / (init_args.get("project") or "lit_nnopt")


def resume_ckpt_path(config: Any) -> str:
    """``last`` where ``--ckpt_path last`` finds this run's checkpoint again, else ``{ckpt_path}`` (its path)."""
    logger = config.get("trainer", {}).get("logger")
    fixed_folder = config.get("checkpoint", {}).get("dirpath") or logger in (None, False)
    return "last" if fixed_folder or is_auto_wandb(logger) else "{ckpt_path}"


def is_auto_wandb(logger: Any) -> bool:
    """Whether a parsed ``trainer.logger`` is lit_nnopt's AutoWandbLogger or a subclass of it."""
    from lit_nnopt.app.loggers import AutoWandbLogger

    class_path = logger.get("class_path") if hasattr(logger, "get") else None
    if not isinstance(class_path, str) or "." not in class_path:
        return False
    module, name = class_path.rsplit(".", 1)
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return False
    return isinstance(cls, type) and issubclass(cls, AutoWandbLogger)


def _find_checkpoint(subcommand: str, config: Any, root: Path, which: str, dump: Dump) -> str | None:
    if which == "last":
        found = find_resumable_checkpoint(root, dump(config))
        what = "has a last.ckpt"
    else:
        best = _best_run(config, root, dump)
        found = best.checkpoint if best else None
        what = "that learnt has a best checkpoint"
    if found is None and (subcommand != "fit" or which == "best"):
        raise CheckpointError(
            f"--ckpt_path {which}: no run of this config under {root} {what}. Give the checkpoint's path "
            "instead, or train one with `python -m lit_nnopt fit` and this config."
        )
    if found is None:
        sys.stderr.write(
            f"lit_nnopt: --ckpt_path last: no run of this config under {root} to resume; starting a new run.\n"
        )
        return None
    if which == "best":
        sys.stderr.write(f"lit_nnopt: {subcommand}: using {found}, {_describe_best(best)}.\n")
    elif subcommand == "fit":
        sys.stderr.write(f"lit_nnopt: resuming from {found}\n")
    else:
        sys.stderr.write(f"lit_nnopt: {subcommand}: using {found}, the last checkpoint of the latest run.\n")
    return str(found)


def _best_run(config: Any, root: Path, dump: Dump) -> BestRun | None:
    checkpoint = config.get("checkpoint", {})
    monitor, mode = checkpoint.get("monitor") or "val_acc", checkpoint.get("mode") or "max"
    return best_run_checkpoint(root, dump(config), monitor, mode)


def _describe_best(best: BestRun) -> str:
    among = "the only run" if best.runs_compared == 1 else f"the best of {best.runs_compared} runs"
    return f"the best checkpoint by {best.monitor} ({best.score:.4f}) of run {best.run.name}, {among} of this config"


def _no_checkpoint_message(subcommand: str, config: Any, root: Path | None, dump: Dump) -> str:
    best = _best_run(config, root, dump) if root is not None else None
    if best is not None:
        hint = (
            f"The best run of this config by {best.monitor} ({best.run.name}, {best.score:.4f}) has its best "
            f"checkpoint at {best.checkpoint}: add `--ckpt_path best` to use it, or `--ckpt_path <file>` for "
            "another."
        )
    else:
        where = f" under {root}" if root is not None else ""
        hint = (
            f"No run of this config{where} that learnt has a checkpoint: train one with `python -m lit_nnopt "
            "fit` and this config, or give `--ckpt_path <file>` (a run's checkpoints/best-*.ckpt)."
        )
    problem = f"`{subcommand}` needs trained weights and no --ckpt_path was given"
    return f"{problem}: it would score an untrained model. {hint}"
