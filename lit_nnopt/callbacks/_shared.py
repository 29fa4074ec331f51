"""Helpers the callbacks that change the lr share: which LR schedulers allow it, and the change itself.

Private: the names here may change without notice.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.optim import Optimizer
from torch.optim import lr_scheduler as schedulers

# Schedulers that set the lr from fields other than ``base_lrs`` and the current lr, so scaling
# ``base_lrs`` would not carry an lr change over to the next scheduler step.
_REFUSED_SCHEDULERS = (
    schedulers.OneCycleLR,
    schedulers.CyclicLR,
    schedulers.SequentialLR,
    schedulers.ChainedScheduler,
    schedulers.ReduceLROnPlateau,
)


def check_lr_schedulers(trainer: pl.Trainer, owner: str) -> None:
    """Refuse the schedulers whose next step would undo a change of the lr made by ``owner``."""
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        if isinstance(scheduler, _REFUSED_SCHEDULERS) or not hasattr(scheduler, "base_lrs"):
            raise MisconfigurationException(
                f"{owner} changes the learning rate, but the optimizer also has a"
                f" {type(scheduler).__name__}, which sets the lr from its own fields and would undo the change at"
                " its next step. Supported alongside it are schedulers that derive the lr from `base_lrs` or from"
                " the current lr (StepLR, MultiStepLR, ExponentialLR, LambdaLR, MultiplicativeLR, ConstantLR,"
                " LinearLR, PolynomialLR, CosineAnnealingLR, CosineAnnealingWarmRestarts). Remove one of the two."
            )


def scale_lr(trainer: pl.Trainer, optimizer: Optimizer, group_index: int, new_lr: float) -> float:
    """Set one parameter group's lr and scale its scheduler's ``base_lrs`` by the same ratio; return the old lr.

    Scaling ``base_lrs`` too makes the schedulers allowed by :func:`check_lr_schedulers` go on
    with the same schedule, multiplied by ``new_lr / old_lr``.
    """
    group = optimizer.param_groups[group_index]
    old_lr = float(group["lr"])
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(new_lr)
    else:
        group["lr"] = new_lr
    for config in trainer.lr_scheduler_configs:
        if config.scheduler.optimizer is optimizer and old_lr > 0:
            config.scheduler.base_lrs[group_index] *= new_lr / old_lr
    return old_lr
