"""Fixtures: the real MNIST, and caches and W&B files kept out of the home folder; one thread per process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers import SHARED_MNIST

pytest_plugins = ["tests.helpers.postgres"]  # the postgres_url fixture: a throwaway PostgreSQL server

# One intra-op thread per process: tests run several processes (DDP ranks, CLI subprocesses) on
# a 2-core machine, and oversubscribed OpenMP threads spin; the small networks lose nothing.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


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


@pytest.fixture
def torch_load_that_maps_only_file_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """``torch.load`` as torch before 2.3 had it: ``mmap=True`` with anything but a str file name is refused."""
    real_load = torch.load

    def load(f, *args, mmap=None, **kwargs):
        if mmap and not isinstance(f, str):
            raise ValueError("f must be a string filename in order to use mmap argument")
        return real_load(f, *args, mmap=mmap, **kwargs)

    monkeypatch.setattr(torch, "load", load)
