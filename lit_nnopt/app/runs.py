"""Finding runs again: a run's folder, its best checkpoint, the checkpoint to resume, the best run of a config.

A run folder holds ``config.yaml`` (the LightningCLI config of its ``fit``), ``checkpoints/``
and ``summary.json``; with the default logger it is ``<save_dir>/<project>/<run id>``,
without a logger ``<default_root_dir>/fit-<date>-<time>``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass
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


def _model_checkpoint_state(run: Path) -> dict[str, Any]:
    """The ModelCheckpoint state its ``last.ckpt`` holds, or {} (no such file, or one that cannot be read)."""
    last = run / CHECKPOINTS / "last.ckpt"
    if not last.is_file():
        return {}
    try:
        # A str: torch before 2.3 memory-maps only a file name given as one, and refuses a Path.
        state = torch.load(str(last), map_location="cpu", weights_only=True, mmap=True).get("callbacks", {})
    except Exception as error:  # damaged, or written by a newer torch: the run's best checkpoint stays unknown
        _say_unreadable(last, str(error).strip().split(". ")[0] or type(error).__name__)
        return {}
    found = [value for key, value in state.items() if key.startswith("ModelCheckpoint") and isinstance(value, dict)]
    return next((value for value in found if value.get("best_model_path")), {})


@functools.cache
def _say_unreadable(last: Path, reason: str) -> None:
    """Says once per file that a run is left out of the lookup, rather than finding nothing without a word."""
    sys.stderr.write(
        f"lit_nnopt: {last} cannot be read ({reason}), so its run's best checkpoint is not known; "
        "that run is passed over (to use it, give one of its checkpoints/*.ckpt as --ckpt_path).\n"
    )


def _best_in_last_checkpoint(run: Path) -> str | None:
    return _model_checkpoint_state(run).get("best_model_path")


@dataclass(frozen=True)
class BestRun:
    """The best checkpoint among a config's runs: the file, its run folder and its score by ``monitor``."""

    checkpoint: Path
    run: Path
    monitor: str
    score: float
    runs_compared: int


def best_run_checkpoint(
    root: str | os.PathLike, config: dict[str, Any], monitor: str = "val_acc", mode: str = "max"
) -> BestRun | None:
    """The best checkpoint by ``monitor`` among the runs of ``config`` under ``root`` that learnt.

    A run's score is its ``summary.json``'s best value of ``monitor``, else (an interrupted
    run) the best score its ``last.ckpt`` remembers. Runs whose summary says they diverged or
    stayed at chance are passed over, as are runs that monitored another metric. On a tie the
    newest run wins.
    """
    scored: list[tuple[float, Path, Path]] = []
    for run in matching_runs(root, config):  # newest first
        summary = _read_json(run / SUMMARY)
        if summary.get("status", "ok") != "ok":
            continue
        checkpoint = best_checkpoint(run)
        score = _score(run, summary, monitor)
        if checkpoint is not None and score is not None:
            scored.append((score, checkpoint, run))
    if not scored:
        return None
    pick = max if mode == "max" else min
    score, checkpoint, run = pick(scored, key=lambda entry: entry[0])  # the first, the newest, of equals
    return BestRun(checkpoint, run, monitor, score, len(scored))


def _score(run: Path, summary: dict[str, Any], monitor: str) -> float | None:
    if summary.get("monitor", monitor) == monitor and isinstance(summary.get("best"), dict):
        value = summary["best"].get(monitor)
        if isinstance(value, (int, float)):
            return float(value)
    state = _model_checkpoint_state(run)
    value = state.get("best_model_score")
    if state.get("monitor") != monitor or value is None:
        return None
    number = float(value.item() if isinstance(value, torch.Tensor) else value)
    return number if math.isfinite(number) else None


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


def test_command(argv: list[str], ckpt_path: str) -> str:
    """The ``fit`` command line ``argv`` turned into the ``test`` of ``ckpt_path``."""
    subcommand = next((i for i, arg in enumerate(argv) if arg == "fit"), None)
    as_test = [*argv[:subcommand], "test", *argv[subcommand + 1 :]] if subcommand is not None else argv
    return resume_command(as_test, shlex.quote(ckpt_path))
