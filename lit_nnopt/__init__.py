"""lit_nnopt: learn, apply and compare neural-network optimization techniques on PyTorch Lightning.

The public names below are imported on first use, so that ``import lit_nnopt.idx`` or
``python -m lit_nnopt new`` do not pay for importing Lightning.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "AtomicCheckpointIO": "lit_nnopt.resilience",
    "AutoWandbLogger": "lit_nnopt.loggers",
    "BatchLoader": "lit_nnopt.data",
    "CNN": "lit_nnopt.networks",
    "MLP": "lit_nnopt.networks",
    "MNISTClassifier": "lit_nnopt.model",
    "MNISTDataModule": "lit_nnopt.data",
    "RunPictures": "lit_nnopt.plots",
    "RunSummary": "lit_nnopt.reports",
    "StepsPerExecution": "lit_nnopt.callbacks",
}
__all__ = [  # provided by __getattr__
    "CNN",
    "MLP",
    "AtomicCheckpointIO",
    "AutoWandbLogger",
    "BatchLoader",
    "MNISTClassifier",
    "MNISTDataModule",
    "RunPictures",
    "RunSummary",
    "StepsPerExecution",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lit_nnopt' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
