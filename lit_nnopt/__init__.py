"""lit_nnopt: learn, apply and compare neural-network optimization techniques on PyTorch Lightning."""

from lit_nnopt.data import BatchLoader, MNISTDataModule
from lit_nnopt.loggers import AutoWandbLogger
from lit_nnopt.model import MNISTClassifier
from lit_nnopt.networks import CNN, MLP
from lit_nnopt.plots import RunPictures
from lit_nnopt.reports import RunSummary
from lit_nnopt.resilience import AtomicCheckpointIO

__all__ = [
    "CNN",
    "MLP",
    "AtomicCheckpointIO",
    "AutoWandbLogger",
    "BatchLoader",
    "MNISTClassifier",
    "MNISTDataModule",
    "RunPictures",
    "RunSummary",
]
__version__ = "0.1.0"
