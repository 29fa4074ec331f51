"""Finding runs again: a run's folder, its best checkpoint, the latest run of a config.

A run folder holds ``config.yaml`` (the LightningCLI config of its ``fit``), ``checkpoints/``
and ``summary.json``; with the default logger it is ``<save_dir>/<project>/<run id>``,
without a logger ``<default_root_dir>/fit-<date>-<time>``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from lit_nnopt.resilience import fingerprint

RUN_CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
SUMMARY = "summary.json"
# Set by the process that names a run folder, read by the DDP ranks it starts (same folder).
RUN_NAME_ENV = "LIT_NNOPT_RUN_NAME"


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
    import yaml

    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return content if isinstance(content, dict) else None
