"""Drop-in callbacks for any LightningModule and any optimizer.

In Python::

    from lit_nnopt.callbacks import EarlyStopping, GradientClipping, ReduceLROnPlateau

With LightningCLI: ``--trainer.callbacks+=lit_nnopt.callbacks.ReduceLROnPlateau``.
``LearningRateMonitor`` is Lightning's, re-exported so that configs need one import path.
"""

from lightning.pytorch.callbacks import LearningRateMonitor

from lit_nnopt.callbacks.early_stopping import EarlyStopping
from lit_nnopt.callbacks.grad_norm import GradientNormMonitor
from lit_nnopt.callbacks.gradient_clipping import GradientClipping
from lit_nnopt.callbacks.nan_guard import NaNGuard
from lit_nnopt.callbacks.plateau import ReduceLROnPlateau
from lit_nnopt.callbacks.steps_per_execution import StepsPerExecution
from lit_nnopt.resilience import InterruptCheckpoint

__all__ = [
    "EarlyStopping",
    "GradientClipping",
    "GradientNormMonitor",
    "InterruptCheckpoint",
    "LearningRateMonitor",
    "NaNGuard",
    "ReduceLROnPlateau",
    "StepsPerExecution",
]
