"""Log gradient norms, total and per parameter tensor, every few optimizer steps."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.optim import Optimizer
from typing_extensions import override

from lit_nnopt._host import Callback


class GradientNormMonitor(Callback):
    """Log the gradient norm of the whole model and of each parameter tensor at a set cadence.

    Metric names follow Lightning's ``grad_norm`` utility: ``grad_2.0_norm_total`` and
    ``grad_2.0_norm/<parameter name>`` (for ``norm_type=2``), over the parameters of the optimizer
    about to step; with several optimizers the total ends in ``/optimizer_<index>``. The norms
    are taken in ``on_before_optimizer_step``: after gradient accumulation, after unscaling
    under mixed precision, and before any clipping (Lightning's or
    :class:`~lit_nnopt.callbacks.GradientClipping`'s, which logs its own before/after total norms).

    Off steps cost one modulo; ``every_n_steps=0`` turns the callback off entirely.

    Args:
        every_n_steps: log at every this many optimizer steps; ``None`` uses the Trainer's
            ``log_every_n_steps``, so that each value computed is also written by the logger.
        norm_type: the p of the p-norm; ``float("inf")`` for the max norm.
        per_layer: log each parameter tensor's norm, not only the total.

    Raises:
        ValueError: if ``every_n_steps`` is negative or ``norm_type`` is not positive.

    Example::

        >>> import lightning.pytorch as pl
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> from lit_nnopt.callbacks import GradientNormMonitor
        >>> trainer = pl.Trainer(max_steps=2, callbacks=[GradientNormMonitor(every_n_steps=1)], limit_val_batches=0,
        ...     logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(BoringModel())
        >>> sorted(name for name in trainer.callback_metrics if name.startswith("grad_"))
        ['grad_2.0_norm/layer.bias', 'grad_2.0_norm/layer.weight', 'grad_2.0_norm_total']
    """

    def __init__(self, every_n_steps: int | None = None, norm_type: float = 2.0, per_layer: bool = True) -> None:
        if every_n_steps is not None and every_n_steps < 0:
            raise ValueError(f"`every_n_steps` must be >= 0 (0 turns the monitor off), got {every_n_steps}.")
        if not norm_type > 0:
            raise ValueError(f"`norm_type` must be a positive number or inf, got {norm_type}.")
        self.every_n_steps = every_n_steps
        self.norm_type = float(norm_type)
        self.per_layer = per_layer

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        every = trainer.log_every_n_steps if self.every_n_steps is None else self.every_n_steps
        # `+ 1`: Lightning writes step metrics when (steps done + 1) is a multiple of log_every_n_steps.
        if not every or (trainer.global_step + 1) % every:
            return
        stepped = {id(param) for group in optimizer.param_groups for param in group["params"]}
        norms = {
            f"grad_{self.norm_type}_norm/{name}": torch.linalg.vector_norm(param.grad.detach(), self.norm_type)
            for name, param in pl_module.named_parameters()
            if param.grad is not None and id(param) in stepped
        }
        if not norms:
            return
        total = torch.linalg.vector_norm(torch.stack(list(norms.values())), self.norm_type)
        total_name = f"grad_{self.norm_type}_norm_total"
        if len(trainer.optimizers) > 1:
            total_name += f"/optimizer_{trainer.optimizers.index(optimizer)}"
        logged = {**(norms if self.per_layer else {}), total_name: total}
        pl_module.log_dict(logged, on_step=True, on_epoch=False, batch_size=1)
