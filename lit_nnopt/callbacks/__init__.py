"""Drop-in callbacks for any LightningModule and any optimizer.

In Python::

    from lit_nnopt.callbacks import EarlyStopping, GradientClipping, ReduceLROnPlateau

With LightningCLI: ``--trainer.callbacks+=lit_nnopt.callbacks.ReduceLROnPlateau``.
``LearningRateMonitor`` is Lightning's, re-exported so that configs need one import path.

The callbacks log through ``logging.getLogger(<their module>)``, from rank 0 only. As Lightning
does for its own logger, the ``lit_nnopt.callbacks`` logger prints INFO and above to stderr
unless the application configured logging (the root logger has handlers), in which case its
records go there.
"""

import logging

from lightning.pytorch.callbacks import LearningRateMonitor

from lit_nnopt.callbacks.early_stopping import EarlyStopping
from lit_nnopt.callbacks.exact_resume import ExactResume
from lit_nnopt.callbacks.grad_norm import GradientNormMonitor
from lit_nnopt.callbacks.gradient_clipping import GradientClipping
from lit_nnopt.callbacks.interrupt_checkpoint import InterruptCheckpoint
from lit_nnopt.callbacks.nan_guard import NaNGuard
from lit_nnopt.callbacks.plateau import ReduceLROnPlateau
from lit_nnopt.callbacks.steps_per_execution import StepsPerExecution

_logger = logging.getLogger(__name__)
_logger.setLevel(logging.INFO)
if not logging.getLogger().hasHandlers():
    _logger.addHandler(logging.StreamHandler())
    _logger.propagate = False

__all__ = [
    "EarlyStopping",
    "ExactResume",
    "GradientClipping",
    "GradientNormMonitor",
    "InterruptCheckpoint",
    "LearningRateMonitor",
    "NaNGuard",
    "ReduceLROnPlateau",
    "StepsPerExecution",
]
