"""lit_nnopt: learn, apply and compare neural-network optimization techniques on PyTorch Lightning.

The library: data, networks, the LightningModule, optimizers and schedules
(``lit_nnopt.optim``), drop-in callbacks (``lit_nnopt.callbacks``) and atomic checkpoint IO.
The ``python -m lit_nnopt`` application lives in ``lit_nnopt.app``, which nothing here imports.
Names are imported on first use, so that ``import lit_nnopt.idx`` does not pay for Lightning.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "AtomicCheckpointIO": "lit_nnopt.checkpoint_io",
    "BatchLoader": "lit_nnopt.data",
    "CNN": "lit_nnopt.networks",
    "MLP": "lit_nnopt.networks",
    "MNISTClassifier": "lit_nnopt.model",
    "MNISTDataModule": "lit_nnopt.data",
    "StepsPerExecution": "lit_nnopt.callbacks",
}
__all__ = sorted(_EXPORTS)  # provided by __getattr__
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lit_nnopt' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
