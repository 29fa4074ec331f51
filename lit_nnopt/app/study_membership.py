"""Which study a ``fit`` belongs to, told to every logger, so that a study's runs can be found together.

``tune`` and ``compare`` start each trial and each seed as its own ``fit`` process, with
``LIT_NNOPT_STUDY`` (the study: a tune study, or a comparison and its config) and
``LIT_NNOPT_STUDY_MEMBER`` (``trial 3``, ``seed 2``) in its environment, and ``WANDB_RUN_GROUP``
set to the study, which W&B reads as the run's group. :class:`StudyMembership`, one of the
CLI's default callbacks when the variables are set, logs ``study`` and ``study_member`` as
hyperparameters to every logger of the run: W&B's config, TensorBoard's hparams, the CSV
logger's ``hparams.yaml``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

STUDY_ENV = "LIT_NNOPT_STUDY"
MEMBER_ENV = "LIT_NNOPT_STUDY_MEMBER"


def membership_environment(environment: Mapping[str, str], study: str, member: str) -> dict[str, str]:
    """``environment`` plus the variables that make a ``fit`` process member ``member`` of ``study``."""
    return {**environment, STUDY_ENV: study, MEMBER_ENV: member, "WANDB_RUN_GROUP": study}


class StudyMembership(Callback):
    """Log ``study`` and ``study_member`` as hyperparameters to every logger of the run, when the run starts."""

    def __init__(self, study: str, member: str) -> None:
        self.study = study
        self.member = member

    @classmethod
    def from_environment(cls, environment: Mapping[str, str] | None = None) -> StudyMembership | None:
        """The membership that ``LIT_NNOPT_STUDY`` and ``LIT_NNOPT_STUDY_MEMBER`` give, or None outside a study."""
        environment = os.environ if environment is None else environment
        study = environment.get(STUDY_ENV)
        return cls(study, environment.get(MEMBER_ENV, "")) if study else None

    @override
    @rank_zero_only
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams({"study": self.study, "study_member": self.member})
