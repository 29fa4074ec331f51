"""Shared fixtures: the real MNIST in ../shared/data, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# One intra-op thread per process: tests run several processes (DDP ranks, CLI subprocesses) on
# a 2-core machine, and oversubscribed OpenMP threads spin; the small networks lose nothing.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SHARED_MNIST = Path(os.environ.get("LIT_NNOPT_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The folder holding the real MNIST (``MNIST/raw/*.gz``); tests that need it skip without it."""
    if not (SHARED_MNIST / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"the real MNIST is not at {SHARED_MNIST} (set LIT_NNOPT_TEST_DATA to its folder)")
    return SHARED_MNIST


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the MD5 cache and W&B files of tests out of the user's home."""
    monkeypatch.setenv("LIT_NNOPT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("WANDB_MODE", os.environ.get("WANDB_MODE", "offline"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path_factory.getbasetemp()))


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


def link_mnist(mnist_dir: Path, target: Path) -> Path:
    """A torchvision root at ``target`` whose ``MNIST/raw`` links to the real files; returns that raw folder.

    Tests alter or remove files there without touching the shared data.
    """
    raw = target / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for source in (mnist_dir / "MNIST" / "raw").glob("*.gz"):
        os.symlink(source, raw / source.name)
    return raw
