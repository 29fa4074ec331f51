"""The LightningModule: any network, any ``torch.optim`` optimizer and scheduler, torchmetrics."""

from __future__ import annotations

import importlib
import inspect
import warnings
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import instantiate_class
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.types import LRSchedulerConfig
from torch import nn
from torch.nn import functional as F
from torchmetrics import Metric

from lit_nnopt.data import BatchGroup
from lit_nnopt.networks import MLP

_NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def weight_decay_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Parameter groups that apply ``weight_decay`` to weights only, not to biases or norm layers."""
    decay, exempt = [], []
    for layer in module.modules():
        for name, param in layer.named_parameters(recurse=False):
            (exempt if name == "bias" or isinstance(layer, _NORM_LAYERS) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": exempt, "weight_decay": 0.0}]


def describe(net: nn.Module) -> dict[str, Any]:
    """A ``class_path`` description of a network, so hyperparameters stay plain values."""
    cls = type(net)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(getattr(net, "init_args", {}))}


class LossAndAccuracy(Metric):
    """Sample-weighted mean loss and accuracy of one split over an epoch, synchronized under DDP.

    One metric with three sums rather than ``MeanMetric`` plus ``MulticlassAccuracy``: those
    validate their inputs and compute per-class statistics on every batch, which costs more
    than the training step of a small network.
    """

    full_state_update = False

    def __init__(self, split: str) -> None:
        super().__init__()
        self.split = split
        self.add_state("loss_sum", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("correct", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0), dist_reduce_fx="sum")

    def update(
        self,
        loss: torch.Tensor | list[torch.Tensor],
        logits: torch.Tensor | list[torch.Tensor],
        target: torch.Tensor | list[torch.Tensor],
    ) -> None:
        """Add one batch, or several at once as lists with one entry per batch (the same sums)."""
        losses, all_logits, targets = ([value] if isinstance(value, torch.Tensor) else value for value in (loss, logits, target))
        # In place: `self.total += n` would go through nn.Module.__setattr__ on every batch.
        for batch_loss, batch_target in zip(losses, targets):  # in order: the float sum of one batch at a time
            self.loss_sum.add_(batch_loss.detach(), alpha=len(batch_target))
        predictions = torch.cat([batch_logits.detach().argmax(dim=1) for batch_logits in all_logits])
        self.correct.add_((predictions == torch.cat(targets)).sum())
        self.total.add_(len(predictions))

    def compute(self) -> dict[str, torch.Tensor]:
        return {f"{self.split}_loss": self.loss_sum / self.total, f"{self.split}_acc": self.correct / self.total}

    def compute_and_reset(self) -> dict[str, torch.Tensor]:
        values = self.compute()
        self.reset()
        return values


def _plateau_monitor(config: LRSchedulerConfig) -> str | None:
    """The metric that a ReduceLROnPlateau scheduler monitors; None for other schedulers.

    Under manual optimization Lightning leaves ``reduce_on_plateau`` False and ``monitor`` None
    in the scheduler configs, so the scheduler's class tells.
    """
    if not (config.reduce_on_plateau or isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)):
        return None
    return config.monitor or getattr(config.scheduler, "monitor", "val_loss")


class MNISTClassifier(pl.LightningModule):
    """Trains a network with cross-entropy and reports loss and accuracy per split.

    Logs ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``, ``test_loss``, ``test_acc``.
    As in Keras, each loss includes the network's regularization penalty (if it has one).

    Args:
        net: the network (``class_path`` in YAML); defaults to ``MLP()``. A ``class_path``
            dict is accepted too, as stored in checkpoints.
        optimizer: ``{"class_path": ..., "init_args": ...}`` of any ``torch.optim`` optimizer;
            filled from the top-level ``optimizer:`` key by the CLI. Defaults to Adam(lr=1e-3).
        lr_scheduler: the same for a learning-rate scheduler (top-level ``lr_scheduler:``).
        lr_scheduler_interval: step the scheduler every ``epoch`` or every optimizer ``step``.
        lr_scheduler_frequency: step it every this many intervals.
        exempt_bias_and_norm_from_weight_decay: put biases and norm-layer parameters in a
            parameter group with ``weight_decay=0`` (what AdamW users usually want).
        compile: run the network through ``torch.compile`` (pays off on GPUs; the first
            steps then take longer while it compiles).
        steps_per_execution: run this many batches, each with its own optimizer step, in one
            Lightning training step, as Keras' ``compile(steps_per_execution=...)`` does. The
            weights, optimizer steps and LR schedule are those of one batch per step; only
            Lightning's per-batch work (``on_train_batch_start``/``end`` hooks, the progress
            bar, step logging) happens once per group instead of once per batch, which is most
            of the framework's time for a network this small. Hooks around each optimizer step
            (``on_before_backward``, ``on_after_backward``, ``on_before_optimizer_step``) still
            run at every step. The data module must serve groups of as many batches
            (``MNISTDataModule(steps_per_execution=...)``; the CLI links the two). Lightning
            then uses manual optimization, so ``Trainer(gradient_clip_val=...)`` and
            ``accumulate_grad_batches`` are not available: clip with
            :class:`~lit_nnopt.callbacks.GradientClipping`.
    """

    def __init__(
        self,
        net: nn.Module | None = None,
        optimizer: dict | None = None,
        lr_scheduler: dict | None = None,
        lr_scheduler_interval: Literal["step", "epoch"] = "epoch",
        lr_scheduler_frequency: int = 1,
        exempt_bias_and_norm_from_weight_decay: bool = True,
        compile: bool = False,
        steps_per_execution: int = 1,
    ) -> None:
        super().__init__()
        if lr_scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"`lr_scheduler_interval` can be step, epoch, got {lr_scheduler_interval!r}.")
        if lr_scheduler_frequency < 1:
            raise ValueError(f"`lr_scheduler_frequency` must be >= 1, got {lr_scheduler_frequency}.")
        if steps_per_execution < 1:
            raise ValueError(f"`steps_per_execution` must be >= 1, got {steps_per_execution}.")
        # Lightning's automatic optimization takes one batch per training step; a group of
        # them needs the steps taken here (see `_run_execution`).
        self.automatic_optimization = steps_per_execution == 1
        self._epoch_end_reached = False  # in this epoch, by `_run_execution`
        if isinstance(net, dict):
            net = instantiate_class((), net)
        self.net = net if net is not None else MLP()
        with warnings.catch_warnings():  # a module in hparams is replaced by its description below
            warnings.filterwarnings("ignore", message="Attribute 'net' is an instance of `nn.Module`")
            self.save_hyperparameters()
        if isinstance(self.hparams.get("net"), nn.Module):
            self.hparams["net"] = describe(self.net)
        self.optimizer_init = optimizer or {"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-3}}
        self.lr_scheduler_init = lr_scheduler
        self.train_metrics = LossAndAccuracy("train")
        self.val_metrics = LossAndAccuracy("val")
        self.test_metrics = LossAndAccuracy("test")

    def configure_model(self) -> None:
        if self.hparams.compile and not isinstance(self.net, torch._dynamo.eval_frame.OptimizedModule):
            self.net = torch.compile(self.net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        penalty = getattr(self.net, "regularization_loss", None)
        loss = F.cross_entropy(logits, y)
        return loss + penalty() if penalty else loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor] | BatchGroup, batch_idx: int) -> torch.Tensor:
        if not self.automatic_optimization:
            return self._run_execution(batch, batch_idx)
        if isinstance(batch, BatchGroup):
            raise MisconfigurationException(
                f"The training data comes in groups of batches (steps_per_execution="
                f"{len(batch.labels) // batch.batch_size} or more) but the model takes one batch per "
                "step. Give the model and the data module the same `steps_per_execution` (the CLI's "
                "`--model.steps_per_execution` sets both)."
            )
        x, y = batch
        logits = self(x)
        loss = self._loss(logits, y)
        self.train_metrics.update(loss, logits, y)
        if batch_idx % self.trainer.log_every_n_steps == 0:
            self.log("train_loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        if self._last_batch_of_epoch(batch_idx):
            # Logged once per epoch, at its last batch, so that every callback's
            # on_train_epoch_end sees them; a `self.log` per step costs more than the step.
            self.log_dict(self.train_metrics.compute_and_reset(), prog_bar=True)
        return loss

    def _last_batch_of_epoch(self, batch_idx: int) -> bool:
        return self.trainer.is_last_batch or batch_idx + 1 >= self.trainer.num_training_batches

    def _run_execution(self, batch: tuple[torch.Tensor, torch.Tensor] | BatchGroup, batch_idx: int) -> torch.Tensor:
        """Train on a group of batches, one optimizer step each, as automatic optimization would.

        The zero_grad/backward/step order, the ``max_steps`` limit and the LR schedulers' rules
        (``interval``, ``frequency``, counted in batches as Lightning counts them) are Lightning's,
        so the weights come out as with one batch per training step.
        """
        optimizer = self.optimizers()
        grouped = isinstance(batch, BatchGroup)
        batches = batch.batches() if grouped else [batch]
        # The index in the epoch of the group's first batch (groups before this one are full).
        first_batch = batch_idx * self.hparams.steps_per_execution if grouped else batch_idx
        loss = torch.tensor(float("nan"))
        completed = True
        # One metric update per group: per batch its small tensor operations cost about 2% of the step.
        losses, all_logits, targets = [], [], []
        for offset, (x, y) in enumerate(batches):
            if 0 <= self.trainer.max_steps <= self.trainer.global_step:
                # As with one batch per step, an epoch cut short by max_steps has no epoch end.
                completed = False
                break
            logits = self(x)
            loss = self._loss(logits, y)
            losses.append(loss.detach())
            all_logits.append(logits.detach())
            targets.append(y)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            self._step_lr_schedulers("step", first_batch + offset)
            if (first_batch + offset) % self.trainer.log_every_n_steps == 0:
                self.log("train_loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        if losses:
            self.train_metrics.update(losses, all_logits, targets)
        if completed and self._last_batch_of_epoch(batch_idx):
            self._epoch_end_reached = True
            self.log_dict(self.train_metrics.compute_and_reset(), prog_bar=True)
            self._step_lr_schedulers("epoch", self.current_epoch)
        return loss.detach()

    def _step_lr_schedulers(self, interval: str, index: int) -> None:
        """Step the schedulers of ``interval`` whose frequency divides ``index + 1`` (plateau ones at epoch end)."""
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == interval and not _plateau_monitor(config) and (index + 1) % config.frequency == 0:
                self.lr_scheduler_step(config.scheduler, None)

    def on_fit_start(self) -> None:
        if self.automatic_optimization:
            return
        for config in self.trainer.lr_scheduler_configs:
            if _plateau_monitor(config) and config.interval != "epoch":
                raise MisconfigurationException(
                    "With steps_per_execution > 1 a ReduceLROnPlateau scheduler can only be stepped "
                    "every epoch: set `--model.lr_scheduler_interval epoch`, or use the "
                    "lit_nnopt.callbacks.ReduceLROnPlateau callback."
                )

    def on_train_epoch_start(self) -> None:
        self._epoch_end_reached = False

    def on_train_epoch_end(self) -> None:
        # Lightning steps plateau schedulers only after the epoch's last batch (not when max_steps
        # ends it early, nor when a restored run re-enters an epoch that had ended).
        if self.automatic_optimization or not self._epoch_end_reached:
            return
        for config in self.trainer.lr_scheduler_configs:
            monitor = _plateau_monitor(config)
            if monitor and (self.current_epoch + 1) % config.frequency == 0:
                value = self.trainer.callback_metrics.get(monitor)
                if value is None:
                    raise MisconfigurationException(
                        f"ReduceLROnPlateau monitors {monitor!r}, which was not logged; "
                        f"logged metrics: {sorted(self.trainer.callback_metrics)}."
                    )
                self.lr_scheduler_step(config.scheduler, value)

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], metrics: LossAndAccuracy) -> None:
        x, y = batch
        logits = self(x)
        metrics.update(self._loss(logits, y), logits, y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute_and_reset(), prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute_and_reset(), prog_bar=True)

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch[0]).argmax(dim=1)

    def _fused_by_default(self, init_args: dict[str, Any]) -> bool:
        """Whether to ask for the fused implementation: one kernel for the whole step.

        For torch's Adam, AdamW, SGD and Adagrad it is the same algorithm, and on a small
        network it halves the optimizer's time. Left out where the config chose ``fused`` or
        ``foreach`` itself, and under float16 loss scaling, where clipping callbacks need the
        gradients unscaled before the step.
        """
        # LightningCLI fills in every argument, so `None` (torch's "choose for me") counts as unset.
        if init_args.get("fused") is not None or init_args.get("foreach") is not None:
            return False
        if self.device.type not in ("cpu", "cuda"):
            return False
        if self._trainer is not None and str(self.trainer.precision).startswith("16"):
            return False
        module_name, class_name = self.optimizer_init["class_path"].rsplit(".", 1)
        optimizer_class = getattr(importlib.import_module(module_name), class_name)
        return "fused" in inspect.signature(optimizer_class).parameters

    def configure_optimizers(self) -> Any:
        init_args = dict(self.optimizer_init.get("init_args", {}))
        weight_decay = init_args.get("weight_decay", 0.0)
        if self.hparams.exempt_bias_and_norm_from_weight_decay and weight_decay:
            params: Any = weight_decay_groups(self, weight_decay)
        else:
            params = self.parameters()
        if self._fused_by_default(init_args):
            init_args["fused"] = True
        optimizer = instantiate_class(params, {**self.optimizer_init, "init_args": init_args})
        if not self.lr_scheduler_init:
            return optimizer
        scheduler = instantiate_class(optimizer, self.lr_scheduler_init)
        config = {
            "scheduler": scheduler,
            "interval": self.hparams.lr_scheduler_interval,
            "frequency": self.hparams.lr_scheduler_frequency,
        }
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and self.automatic_optimization:
            # Manual optimization ignores (with a warning) a monitor: see `_plateau_monitor`.
            config["monitor"] = getattr(scheduler, "monitor", "val_loss")
        return {"optimizer": optimizer, "lr_scheduler": config}
