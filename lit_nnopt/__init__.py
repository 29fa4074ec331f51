"""lit_nnopt: learn, apply and compare neural-network optimization techniques on PyTorch Lightning."""

from lit_nnopt.data import BatchLoader, MNISTDataModule
from lit_nnopt.model import MNISTClassifier
from lit_nnopt.networks import CNN, MLP

__all__ = ["BatchLoader", "CNN", "MLP", "MNISTClassifier", "MNISTDataModule"]
__version__ = "0.1.0"
