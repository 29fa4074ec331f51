"""The callback that ties a ``tune`` trial's ``fit`` to its Optuna study.

``tune`` runs each trial as ``python -m lit_nnopt fit ...`` with ``LIT_NNOPT_TRIAL`` in its
environment, and the CLI adds a ``TrialReport`` to such a fit.
After each validation the callback writes the monitored score into the trial, as the
study's intermediate value for that epoch, and asks the study's pruner whether the trial is
hopeless compared with the other trials at the same epoch; if so it marks the trial
``pruned_at_epoch`` and ends the fit there. It also ends a fit whose trial the study no longer
counts as running: its ``tune`` worker died and another worker has taken the trial over.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

PRUNED_AT_EPOCH = "pruned_at_epoch"
# How ``tune`` hands a trial's fit its study: in the environment, so that the storage URL (and
# its password) stays out of the fit's command line, its saved config and the commands it prints.
TRIAL_ENV = "LIT_NNOPT_TRIAL"


class TrialReport(Callback):
    """Report each epoch's ``monitor`` to trial ``trial`` of ``study`` in ``storage``; stop where the pruner says.

    Args:
        storage: the study's storage URL.
        study: the study's name.
        trial: the trial's number in the study.
        monitor: the validation metric the study maximizes.
        startup_trials: trials that must finish before any is pruned.
        warmup_epochs: epochs every trial runs before it may be pruned.
    """

    def __init__(
        self,
        storage: str,
        study: str,
        trial: int,
        monitor: str = "val_acc",
        startup_trials: int = 5,
        warmup_epochs: int = 1,
    ) -> None:
        self.storage_url = storage
        self.study_name = study
        self.trial_number = trial
        self.monitor = monitor
        self.startup_trials = startup_trials
        self.warmup_epochs = warmup_epochs
        self._storage: Any = None
        self._study: Any = None
        self._trial_id: int | None = None

    def environment(self) -> dict[str, str]:
        """The environment variable that makes a ``fit`` process report to this trial (see :meth:`from_environment`)."""
        settings = {
            "storage": self.storage_url,
            "study": self.study_name,
            "trial": self.trial_number,
            "monitor": self.monitor,
            "startup_trials": self.startup_trials,
            "warmup_epochs": self.warmup_epochs,
        }
        return {TRIAL_ENV: json.dumps(settings)}

    @classmethod
    def from_environment(cls, environment: Mapping[str, str] | None = None) -> TrialReport | None:
        """The report that ``LIT_NNOPT_TRIAL`` describes, or None in a ``fit`` that is no trial of ``tune``."""
        settings = (os.environ if environment is None else environment).get(TRIAL_ENV)
        return cls(**json.loads(settings)) if settings else None

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        import optuna

        from lit_nnopt.app.studies import open_storage

        self._storage = open_storage(self.storage_url, heartbeat=False)  # the tune worker writes the heartbeat
        pruner = optuna.pruners.MedianPruner(n_startup_trials=self.startup_trials, n_warmup_steps=self.warmup_epochs)
        self._study = optuna.load_study(study_name=self.study_name, storage=self._storage, pruner=pruner)
        study_id = self._storage.get_study_id_from_name(self.study_name)
        self._trial_id = self._storage.get_trial_id_from_study_id_trial_number(study_id, self.trial_number)

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        stop = self._report(trainer) if trainer.is_global_zero else False
        if trainer.strategy.broadcast(stop):
            trainer.should_stop = True

    def _report(self, trainer: Trainer) -> bool:
        """Write this epoch's score into the trial; whether the fit should end here."""
        from optuna.trial import TrialState

        score = trainer.callback_metrics.get(self.monitor)
        if score is None:
            raise ValueError(
                f"TrialReport cannot find `{self.monitor}` among the logged metrics "
                f"({', '.join(sorted(trainer.callback_metrics)) or 'none'}): tune's --monitor names a metric "
                "that the model logs in validation."
            )
        state = self._storage.get_trial(self._trial_id).state
        if state != TrialState.RUNNING:
            trainer.print(
                f"lit_nnopt: trial {self.trial_number} is {state.name} in study {self.study_name}: its tune worker "
                "stopped and another worker has taken the trial over; this fit ends here."
            )
            return True
        epoch = trainer.current_epoch
        self._storage.set_trial_intermediate_value(self._trial_id, epoch, float(score))
        if self._study.pruner.prune(self._study, self._storage.get_trial(self._trial_id)):
            self._storage.set_trial_user_attr(self._trial_id, PRUNED_AT_EPOCH, epoch)
            trainer.print(
                f"lit_nnopt: trial {self.trial_number} pruned after epoch {epoch}: {self.monitor} {score:.4f}"
            )
            return True
        return False
