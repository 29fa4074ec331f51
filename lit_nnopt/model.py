"""The LightningModule: any network, any ``torch.optim`` optimizer and scheduler, torchmetrics."""

from __future__ import annotations

import functools
import importlib
import warnings
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F
from typing_extensions import override

from lit_nnopt.metrics import Accuracy, MeanLoss
from lit_nnopt.networks import MLP

_NORM_LAYERS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LazyBatchNorm1d,
    nn.LazyBatchNorm2d,
    nn.LazyBatchNorm3d,
    nn.SyncBatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
)


def weight_decay_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Parameter groups that apply ``weight_decay`` to weights only, not to biases or norm layers."""
    decay, exempt = [], []
    for layer in module.modules():
        for name, param in layer.named_parameters(recurse=False):
            (exempt if name == "bias" or isinstance(layer, _NORM_LAYERS) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": exempt, "weight_decay": 0.0}]


@functools.cache
def accepts_fused(optimizer_class: type[torch.optim.Optimizer], device_type: str) -> bool:
    """Whether ``optimizer_class(params, fused=True)`` works for parameters on ``device_type``.

    Torch is asked, once per class and device type, with a one-element parameter: a ``fused``
    argument in the signature does not mean the device has the kernel (torch 2.2's Adam takes
    ``fused`` and refuses it on the CPU; CPU kernels came with torch 2.4).
    """
    probe = torch.zeros(1, device=device_type, requires_grad=True)
    try:
        optimizer_class([probe], fused=True)
    except (TypeError, ValueError, RuntimeError):  # no `fused` argument, or no kernel for this device
        return False
    return True


def describe(net: nn.Module) -> dict[str, Any]:
    """A ``class_path`` description of a network, so hyperparameters stay plain values."""
    cls = type(net)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(getattr(net, "init_args", {}))}


def _instantiate(args: Any, config: dict[str, Any]) -> Any:
    """``class_path(*args, **init_args)`` of a ``{"class_path": ..., "init_args": ...}`` dict.

    What LightningCLI's ``instantiate_class`` does, without importing the CLI's parser.
    """
    module_name, class_name = config["class_path"].rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(*(args if isinstance(args, tuple) else (args,)), **config.get("init_args", {}))


class MNISTClassifier(pl.LightningModule):
    """Trains a network with cross-entropy and reports loss and accuracy per split.

    Logs ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``, ``test_loss`` and
    ``test_acc`` once per epoch, to every logger and to the callbacks. As in Keras, each loss
    includes the network's regularization penalty (if it has one).

    Hooks: ``training_step``, ``validation_step``, ``test_step``, ``predict_step``,
    ``configure_optimizers``, ``configure_model`` (for ``compile``).

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
        compile: compile the network in place with ``torch.compile`` (pays off on GPUs; the
            first steps then take longer while it compiles). Its state-dict keys do not change,
            so checkpoints load into compiled and uncompiled models alike.

    Raises:
        ValueError: ``lr_scheduler_interval`` or ``lr_scheduler_frequency`` is out of range.

    Trained with ``pl.Trainer(max_epochs=5).fit(model, datamodule=MNISTDataModule())``.

    Example::

        >>> import torch
        >>> from lit_nnopt import MLP, MNISTClassifier
        >>> model = MNISTClassifier(net=MLP([128], dropout=0.2),
        ...     optimizer={"class_path": "torch.optim.Adam", "init_args": {"lr": 0.002}})
        >>> model(torch.zeros(8, 1, 28, 28)).shape
        torch.Size([8, 10])
        >>> model.configure_optimizers()
        Adam (...lr: 0.002...)
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
    ) -> None:
        super().__init__()
        if lr_scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"`lr_scheduler_interval` can be step, epoch, got {lr_scheduler_interval!r}.")
        if lr_scheduler_frequency < 1:
            raise ValueError(f"`lr_scheduler_frequency` must be >= 1, got {lr_scheduler_frequency}.")
        if isinstance(net, dict):
            net = _instantiate((), net)
        self.net = net if net is not None else MLP()
        with warnings.catch_warnings():  # a module in hparams is replaced by its description below
            warnings.filterwarnings("ignore", message="Attribute 'net' is an instance of `nn.Module`")
            self.save_hyperparameters()
        if isinstance(self.hparams.get("net"), nn.Module):
            self.hparams["net"] = describe(self.net)
        self.optimizer_init = optimizer or {"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-3}}
        self.lr_scheduler_init = lr_scheduler
        # One pair of metric objects per split: each accumulates over its own epoch.
        self.train_loss, self.train_acc = MeanLoss(), Accuracy()
        self.val_loss, self.val_acc = MeanLoss(), Accuracy()
        self.test_loss, self.test_acc = MeanLoss(), Accuracy()
        # One MNIST image: the model summary shows each layer's sizes and FLOPs from it.
        self.example_input_array = torch.zeros(1, 1, 28, 28)

    @override
    def configure_model(self) -> None:
        if self.hparams.compile:
            self.net.compile()

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, y)
        penalty = self.net.regularization_loss() if hasattr(self.net, "regularization_loss") else 0.0
        # No regularization (a penalty of 0.0): the loss as it is, without one more operation per step.
        return loss if isinstance(penalty, float) and penalty == 0.0 else loss + penalty

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self._loss(logits, y)
        loss_metric, accuracy = getattr(self, f"{split}_loss"), getattr(self, f"{split}_acc")
        loss_metric.update(loss, len(y))
        accuracy.update(logits, y)
        if accuracy.update_count == 1:
            # Lightning computes the metric objects at the epoch's end from all their updates, then
            # resets them: handing them over once an epoch is enough, and each `self.log` call costs
            # more than a training step of a small network.
            self.log_dict(
                {f"{split}_loss": loss_metric, f"{split}_acc": accuracy}, on_step=False, on_epoch=True, prog_bar=True
            )
        return loss

    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    @override
    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    @override
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
        if self._precision().startswith("16"):
            return False
        module_name, class_name = self.optimizer_init["class_path"].rsplit(".", 1)
        return accepts_fused(getattr(importlib.import_module(module_name), class_name), self.device.type)

    def _precision(self) -> str:
        """The trainer's precision; ``""`` without a trainer (``configure_optimizers`` by hand) or under Fabric."""
        try:
            return str(getattr(self.trainer, "precision", ""))
        except RuntimeError:  # "... is not attached to a `Trainer`"
            return ""

    @override
    def configure_optimizers(self) -> Any:
        init_args = dict(self.optimizer_init.get("init_args", {}))
        weight_decay = init_args.get("weight_decay", 0.0)
        if self.hparams.exempt_bias_and_norm_from_weight_decay and weight_decay:
            params: Any = weight_decay_groups(self, weight_decay)
        else:
            params = self.parameters()
        if self._fused_by_default(init_args):
            init_args["fused"] = True
        optimizer = _instantiate(params, {**self.optimizer_init, "init_args": init_args})
        if not self.lr_scheduler_init:
            return optimizer
        scheduler = _instantiate(optimizer, self.lr_scheduler_init)
        config = {
            "scheduler": scheduler,
            "interval": self.hparams.lr_scheduler_interval,
            "frequency": self.hparams.lr_scheduler_frequency,
        }
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = getattr(scheduler, "monitor", "val_loss")
        return {"optimizer": optimizer, "lr_scheduler": config}
