"""Keras' ``steps_per_execution`` for any LightningModule: Lightning's per-batch work once per group of batches."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.model_helpers import is_overridden
from typing_extensions import override

from lit_nnopt._host import Callback, namespace_of
from lit_nnopt._lightning_internals import GroupedSteps, ungroupable, unverified_lightning

log = logging.getLogger(__name__)


class StepsPerExecution(Callback):
    """Runs ``steps`` batches per Lightning training step, each with its own optimizer step.

    Keras' ``compile(steps_per_execution=N)`` for any LightningModule under automatic
    optimization, without changing it. The train loader's batches, in the loader's own order
    (any ``DataLoader``, shuffled or not, any sampler), come in groups of ``steps``; a group
    ends early at the epoch's end and before a batch after which Lightning validates. Each
    batch of a group goes through Lightning's own automatic optimization (``training_step``,
    ``zero_grad``, ``backward``, ``optimizer_step``, with the ``on_before_backward``,
    ``on_after_backward`` and ``on_before_optimizer_step`` hooks), and the LR schedulers, the
    step counters, ``max_steps``, ``limit_train_batches`` and the logging of step metrics follow
    Lightning's rules per batch. The weights, optimizer states and learning rates are bitwise
    those of one batch per step. What happens once per group instead of once per batch is
    Lightning's per-batch work around the step: the ``on_train_batch_start`` and
    ``on_train_batch_end`` hooks (which see the group's first batch and its index), the progress
    bar, the checks for validation, early stop and signals. For a network as small as
    lit_nnopt's MLP that work is most of the framework's time.

    In the plain case (one device, 32-bit precision, no profiler, none of ``optimizer_step``,
    ``optimizer_zero_grad``, ``backward``, ``configure_gradient_clipping`` or ``clip_gradients``
    overridden), the batches skip Lightning's closure objects and hook dispatch too: they take
    the same steps, with the same hooks in the same order, called directly.

    ``batch_idx`` in ``training_step`` and ``trainer.num_training_batches`` count batches, as
    without groups, so checkpoints resume mid-epoch whatever the group size of either run.

    Running a batch between Lightning's own steps needs a few of Lightning's private names
    (listed in ``lit_nnopt/_lightning_internals.py``), verified on Lightning 2.4 to 2.6. On
    another version, or with a ``training_step`` that takes ``dataloader_iter``, the callback
    says so in one line and lets Lightning run one batch per step: the same training, slower.

    Args:
        steps: batches per Lightning training step; 1 changes nothing.

    Raises:
        ValueError: ``steps`` is not a positive integer.
        MisconfigurationException: at fit start, for a module under manual optimization, with
            ``Trainer(gradient_clip_val=...)`` or ``accumulate_grad_batches > 1``, or with a
            ReduceLROnPlateau scheduler stepped every step.

    Example::

        >>> import lightning.pytorch as pl
        >>> import torch
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> from lit_nnopt.callbacks import StepsPerExecution
        >>> def trained_weights(*callbacks):
        ...     pl.seed_everything(0, verbose=False)
        ...     model = BoringModel()
        ...     trainer = pl.Trainer(max_epochs=1, limit_train_batches=40, limit_val_batches=0, logger=False,
        ...         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...         callbacks=list(callbacks))
        ...     trainer.fit(model)
        ...     return model.layer.weight, trainer.global_step
        >>> grouped, grouped_steps = trained_weights(StepsPerExecution(steps=8))
        >>> one_by_one, steps = trained_weights()
        >>> torch.equal(grouped, one_by_one), grouped_steps, steps
        (True, 40, 40)

    In a LightningCLI config, under ``trainer.callbacks``::

        - class_path: lit_nnopt.callbacks.StepsPerExecution
          init_args:
            steps: 32
    """

    def __init__(self, steps: int) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"`steps` must be a positive number of batches per training step, got {steps!r}.")
        self.steps = steps
        self._grouped: GroupedSteps | None = None
        self._told_fallback = False

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.steps > 1:
            _check_trainer(trainer, pl_module, self.steps)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.steps > 1:
            _check_schedulers(trainer, self.steps)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.steps == 1:
            return
        obstacle = unverified_lightning(trainer) or ungroupable(trainer)
        if obstacle is not None:
            if not self._told_fallback and trainer.is_global_zero:
                log.warning(
                    f"StepsPerExecution(steps={self.steps}) runs one batch per Lightning step: {obstacle}. "
                    "The weights are the same; only the speed-up is lost."
                )
                self._told_fallback = True
            return
        self._grouped = GroupedSteps(trainer, self.steps, _default_batch_handling(trainer))
        self._grouped.install()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._grouped is not None:
            self._grouped.remove()
            self._grouped = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}


def _default_batch_handling(trainer: pl.Trainer) -> bool:
    """Whether Lightning's conversion and transfer leave a batch already on the device as it is."""
    host = namespace_of(trainer)
    hooks = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")
    owners = [(trainer.lightning_module, host.LightningModule)]
    if trainer.datamodule is not None:
        owners.append((trainer.datamodule, host.LightningDataModule))
    overridden = any(is_overridden(hook, owner, parent) for hook in hooks for owner, parent in owners)
    default_conversion = host.plugins.precision.Precision.convert_input
    return not overridden and type(trainer.precision_plugin).convert_input is default_conversion


def _check_trainer(trainer: pl.Trainer, pl_module: pl.LightningModule, steps: int) -> None:
    if not pl_module.automatic_optimization:
        raise MisconfigurationException(
            f"StepsPerExecution(steps={steps}) needs automatic optimization, and {type(pl_module).__name__} "
            "sets `automatic_optimization = False`: a module that steps its optimizer itself can already "
            "run several batches per training step. Remove the StepsPerExecution callback."
        )
    if trainer.gradient_clip_val:
        raise MisconfigurationException(
            f"`Trainer(gradient_clip_val={trainer.gradient_clip_val})` is not supported with "
            f"StepsPerExecution(steps={steps}). Clip with the lit_nnopt.callbacks.GradientClipping callback "
            "(see configs/clipping.yaml), which acts at every optimizer step, or remove StepsPerExecution."
        )
    if trainer.accumulate_grad_batches != 1:
        raise MisconfigurationException(
            f"`Trainer(accumulate_grad_batches={trainer.accumulate_grad_batches})` is not supported with "
            f"StepsPerExecution(steps={steps}): each batch of a group gets its own optimizer step. Raise the "
            "batch size instead of accumulating, or remove StepsPerExecution."
        )


def _check_schedulers(trainer: pl.Trainer, steps: int) -> None:
    for config in trainer.lr_scheduler_configs:
        if config.reduce_on_plateau and config.interval == "step":
            raise MisconfigurationException(
                f"A ReduceLROnPlateau scheduler stepped every optimizer step is not supported with "
                f"StepsPerExecution(steps={steps}): the metric it monitors is only updated between groups. "
                "Step it every epoch (`--model.lr_scheduler_interval epoch`), use the "
                "lit_nnopt.callbacks.ReduceLROnPlateau callback, or remove StepsPerExecution."
            )
