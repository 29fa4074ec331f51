"""Finding runs again: a run's folder, its best checkpoint, the checkpoint to resume, the latest run of a config.

A run folder holds ``config.yaml`` (the LightningCLI config of its ``fit``), ``checkpoints/``
and ``summary.json``; with the default logger it is ``<save_dir>/<project>/<run id>``,
without a logger ``<default_root_dir>/fit-<date>-<time>``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

RUN_CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
SUMMARY = "summary.json"
# Set by the process that names a run folder, read by the DDP ranks it starts (same folder).
RUN_NAME_ENV = "LIT_NNOPT_RUN_NAME"
# Config sections that decide whether a checkpoint fits a run: what it trains and on what.
FINGERPRINT_SECTIONS = ("model", "optimizer", "lr_scheduler", "data")
# Data options that name where the files are rather than what they are.
_DATA_LOCATION_KEYS = ("data_dir", "download")
_LAST_NAME = re.compile(rf"^{ModelCheckpoint.CHECKPOINT_NAME_LAST}(-v\d+)?\{ModelCheckpoint.FILE_EXTENSION}$")


def run_folder_of(checkpoint: str | os.PathLike) -> Path | None:
    """The run folder a checkpoint was saved in, or None for a checkpoint outside one."""
    path = Path(checkpoint)
    folder = path.parent.parent
    return folder if path.parent.name == CHECKPOINTS and (folder / RUN_CONFIG).is_file() else None


def matching_runs(root: str | os.PathLike, config: dict[str, Any]) -> list[Path]:
    """The run folders right below ``root`` trained with the same model, optimizer and data; newest first."""
    wanted = fingerprint(config)
    runs = []
    for saved in Path(root).glob(f"*/{RUN_CONFIG}"):
        content = _read_yaml(saved)
        if content is not None and fingerprint(content) == wanted:
            runs.append(saved.parent)
    return sorted(runs, key=_last_change, reverse=True)


def _last_change(run: Path) -> int:
    files = [run / RUN_CONFIG, *(run / CHECKPOINTS).glob("*.ckpt")]
    return max(path.stat().st_mtime_ns for path in files if path.exists())


def best_checkpoint(run: Path) -> Path | None:
    """The best checkpoint of a run: as ``summary.json`` names it, else as its ``last.ckpt`` remembers it."""
    named = _read_json(run / SUMMARY).get("best_checkpoint") or _best_in_last_checkpoint(run)
    if not named:
        return None
    # A relative path is relative to where `fit` ran; the file name is enough inside the run.
    for candidate in (Path(named), run / CHECKPOINTS / Path(named).name):
        if candidate.is_file():
            return candidate
    return None


def _best_in_last_checkpoint(run: Path) -> str | None:
    last = run / CHECKPOINTS / "last.ckpt"
    if not last.is_file():
        return None
    try:
        state = torch.load(last, map_location="cpu", weights_only=True, mmap=True).get("callbacks", {})
    except Exception:  # a damaged last.ckpt: the run has no best checkpoint we can name
        return None
    paths = [value.get("best_model_path") for key, value in state.items() if key.startswith("ModelCheckpoint")]
    return next((path for path in paths if path), None)


def latest_best_checkpoint(root: str | os.PathLike, config: dict[str, Any]) -> Path | None:
    """The best checkpoint of the newest run of ``config`` under ``root`` that has one."""
    for run in matching_runs(root, config):
        found = best_checkpoint(run)
        if found is not None:
            return found
    return None


def new_run_name(root: str | os.PathLike, subcommand: str) -> str:
    """A readable, unused folder name for a run without a logger: ``fit-20261128-093012``.

    DDP ranks started by this process get the same name through :data:`RUN_NAME_ENV`.
    """
    if os.environ.get("LOCAL_RANK", "0") != "0" and os.environ.get(RUN_NAME_ENV):
        return os.environ[RUN_NAME_ENV]
    stem = f"{subcommand}-{time.strftime('%Y%m%d-%H%M%S')}"
    name, number = stem, 1
    while (Path(root) / name).exists():
        number += 1
        name = f"{stem}-{number}"
    os.environ[RUN_NAME_ENV] = name
    return name


def _read_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def _read_yaml(path: Path) -> dict[str, Any] | None:
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return content if isinstance(content, dict) else None


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
