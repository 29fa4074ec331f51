"""Plain helpers for the tests (fixtures live in ``tests/conftest.py``).

Paths of the repository, the real MNIST and the configs; running the CLI in a subprocess as a
user would (any command, or a ``fit`` on the real MNIST), or its parser in this process;
reading a PNG's size.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
SHARED_MNIST = Path(os.environ.get("LIT_NNOPT_TEST_DATA", REPO.parent / "shared" / "data"))


def _is_wandb_sweep(path: Path) -> bool:
    """A W&B sweep spec (``wandb sweep configs/sweep.yaml``) lives in configs/ but is not a `fit` config."""
    spec = yaml.safe_load(path.read_text())
    return isinstance(spec, dict) and {"method", "parameters", "command"} <= spec.keys()


ALL_CONFIGS = [path for path in sorted(CONFIGS.glob("*.yaml")) if not _is_wandb_sweep(path)]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None):
    """Run ``python -m lit_nnopt ARGS`` in a subprocess, as a user would; returns CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "lit_nnopt", *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        check=False,
    )


def cli_fit(config: str | Path, mnist_dir: Path, root: Path, *extra: str, **run: Any):
    """``python -m lit_nnopt fit`` of ``config`` on the real MNIST, its runs under ``root``: :func:`run_cli`'s result.

    Args:
        config: a file of ``configs/`` by name (``"adam.yaml"``), or a path.
        mnist_dir: the data folder (``--data.data_dir``).
        root: ``--trainer.default_root_dir``.
        extra: further command-line arguments, after those above.
        run: :func:`run_cli`'s keyword arguments (``cwd``, ``timeout``, ``env``).
    """
    path = CONFIGS / config if isinstance(config, str) else config
    return run_cli(
        *("fit", "--config", str(path), "--data.data_dir", str(mnist_dir), "--trainer.default_root_dir", str(root)),
        *extra,
        **run,
    )


def link_mnist(mnist_dir: Path, target: Path) -> Path:
    """A torchvision root at ``target`` whose ``MNIST/raw`` links to the real files; returns that raw folder.

    Tests alter or remove files there without touching the shared data.
    """
    raw = target / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for source in (mnist_dir / "MNIST" / "raw").glob("*.gz"):
        os.symlink(source, raw / source.name)
    return raw


def resolved_config(args: list[str]) -> dict:
    """The config ``python -m lit_nnopt ARGS --print_config`` prints, parsed in this process."""
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as exit_:
        patch.setattr(sys, "argv", ["lit_nnopt"])  # pytest's own arguments are not the CLI's
        from lit_nnopt.app.cli import LitNNOptCLI

        LitNNOptCLI(args=[*args, "--print_config"])
    assert exit_.value.code in (0, None)
    return yaml.safe_load(printed.getvalue())


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; fails on anything that is not a PNG."""
    header = path.read_bytes()[:24]
    assert header[:8] == PNG_SIGNATURE and header[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])
