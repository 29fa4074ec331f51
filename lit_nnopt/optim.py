"""Optimization pieces PyTorch lacks or writes differently from Keras, each usable from YAML.

- ``ExponentialDecay``: Keras' ``ExponentialDecay`` schedule as a torch LR scheduler.
- ``WarmupCosineDecay``: linear warmup, then cosine decay to a floor.
- ``KerasSGD``: SGD with momentum written the way Keras writes it. It matches
  ``torch.optim.SGD`` while the learning rate is constant and differs once it changes.

OneCycle needs nothing here: ``torch.optim.lr_scheduler.OneCycleLR`` works as it is (see
``configs/onecycle.yaml``). Every schedule counts scheduler steps; set
``model.lr_scheduler_interval: step`` to step it once per optimizer step, as Keras does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from typing_extensions import override


class ExponentialDecay(LRScheduler):
    """Keras' ``ExponentialDecay``: ``lr = lr0 * decay_rate ** (step / decay_steps)``.

    ``step`` counts calls to ``step()``. Keras evaluates its schedule at the optimizer's
    iteration count, so step this one once per optimizer step
    (``model.lr_scheduler_interval: step``); stepped per epoch, ``decay_steps`` counts epochs.

    Args:
        optimizer: the optimizer whose learning rates decay; each group decays from its own
            initial ``lr``.
        decay_steps: steps over which the learning rate is multiplied by ``decay_rate``.
        decay_rate: the factor applied every ``decay_steps`` steps, in (0, 1] to decay.
        staircase: floor ``step / decay_steps``: the rate drops in whole steps of ``decay_rate``
            every ``decay_steps`` steps instead of continuously.
        last_epoch: index of the last step, as in every torch scheduler; -1 starts afresh.

    Raises:
        ValueError: if ``decay_steps`` is not positive or ``decay_rate`` is not positive.

    Example::

        # tf.keras.optimizers.schedules.ExponentialDecay(0.001, decay_steps=10000, decay_rate=0.9)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
        scheduler = ExponentialDecay(optimizer, decay_steps=10000, decay_rate=0.9)
        # after each optimizer.step(): scheduler.step()
    """

    def __init__(
        self,
        optimizer: Optimizer,
        decay_steps: int,
        decay_rate: float,
        staircase: bool = False,
        last_epoch: int = -1,
    ) -> None:
        if decay_steps <= 0:
            raise ValueError(f"`decay_steps` must be a positive number of steps, got {decay_steps}.")
        if decay_rate <= 0:
            raise ValueError(f"`decay_rate` must be positive (e.g. 0.9 to decay), got {decay_rate}.")
        self.decay_steps = decay_steps
        self.decay_rate = decay_rate
        self.staircase = staircase
        super().__init__(optimizer, last_epoch)

    def _factor(self, step: int) -> float:
        exponent = step / self.decay_steps
        return self.decay_rate ** (math.floor(exponent) if self.staircase else exponent)

    @override
    def get_lr(self) -> list[float]:
        # Closed form from the step count, as Keras computes it: no drift from repeated multiplication.
        return [base_lr * self._factor(self.last_epoch) for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


class WarmupCosineDecay(LRScheduler):
    """Linear warmup from ``warmup_start_factor * lr`` to ``lr``, then cosine decay to ``min_lr``.

    At step ``t`` (calls to ``step()``), with ``W = warmup_steps`` and ``T = total_steps``:
    ``lr * (f + (1 - f) * t / W)`` while ``t < W``, then
    ``min_lr + (lr - min_lr) * (1 + cos(pi * (t - W) / (T - W))) / 2``, and ``min_lr`` after ``T``.

    Args:
        optimizer: the optimizer; each group warms up to and decays from its own initial ``lr``.
        warmup_steps: steps of linear warmup (0 for none).
        total_steps: step at which the cosine reaches ``min_lr``; with the default data
            (48,000 training images, batch 64) an epoch is 750 optimizer steps.
        min_lr: the floor the cosine ends at.
        warmup_start_factor: fraction of ``lr`` at step 0.
        last_epoch: index of the last step, as in every torch scheduler; -1 starts afresh.

    Raises:
        ValueError: if the steps, ``min_lr`` or ``warmup_start_factor`` are out of range.

    Example::

        optimizer = torch.optim.AdamW(model.parameters(), lr=0.003)
        scheduler = WarmupCosineDecay(optimizer, warmup_steps=750, total_steps=7500)
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int,
        total_steps: int,
        min_lr: float = 0.0,
        warmup_start_factor: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if warmup_steps < 0:
            raise ValueError(f"`warmup_steps` must be >= 0, got {warmup_steps}.")
        if total_steps <= warmup_steps:
            raise ValueError(
                f"`total_steps` ({total_steps}) must exceed `warmup_steps` ({warmup_steps}): the cosine "
                "decay runs from the end of the warmup to `total_steps`."
            )
        if not 0.0 <= warmup_start_factor <= 1.0:
            raise ValueError(f"`warmup_start_factor` must lie in [0, 1], got {warmup_start_factor}.")
        lowest = min(group["lr"] for group in optimizer.param_groups)
        if not 0.0 <= min_lr <= lowest:
            raise ValueError(f"`min_lr` must lie in [0, {lowest}] (the optimizer's smallest lr), got {min_lr}.")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr = min_lr
        self.warmup_start_factor = warmup_start_factor
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, base_lr: float, step: int) -> float:
        if step < self.warmup_steps:
            start = self.warmup_start_factor
            return base_lr * (start + (1.0 - start) * step / self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_lr + (base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    @override
    def get_lr(self) -> list[float]:
        return [self._lr_at(base_lr, self.last_epoch) for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


class KerasSGD(Optimizer):
    """SGD with momentum as Keras writes it: the velocity carries past learning rates.

    Keras (``keras.optimizers.SGD``)::

        velocity = momentum * velocity - lr * g
        w = w + velocity                          # nesterov: w + momentum * velocity - lr * g

    PyTorch (``torch.optim.SGD``, ``dampening=0``)::

        buf = momentum * buf + g
        w = w - lr * buf                          # nesterov: w - lr * (g + momentum * buf)

    With a constant ``lr`` the two are the same (``velocity == -lr * buf``). When ``lr``
    changes, PyTorch rescales all accumulated momentum by the new ``lr`` at once, while
    Keras keeps each past step at the ``lr`` it was taken with, so a decay takes effect
    gradually. Pick this optimizer to reproduce a Keras run that schedules ``lr``.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (Keras' default is 0.01).
        momentum: momentum factor in [0, 1); 0 is plain gradient descent.
        nesterov: Nesterov momentum, as Keras computes it.
        weight_decay: Keras 3's decoupled decay, ``w = w - lr * weight_decay * w`` each step,
            applied to every parameter of the group (``MNISTClassifier`` exempts biases and
            norm layers through parameter groups).

    Raises:
        ValueError: if ``lr``, ``momentum`` or ``weight_decay`` is out of range, or
            ``nesterov`` is set without momentum.

    Example::

        optimizer = KerasSGD(model.parameters(), lr=0.01, momentum=0.9)
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"`lr` must be positive, got {lr}.")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"`momentum` must lie in [0, 1), got {momentum}.")
        if nesterov and not momentum:
            raise ValueError("`nesterov=True` needs a `momentum` above 0.")
        if weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0, got {weight_decay}.")
        super().__init__(params, {"lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay})

    @override
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group)
        return loss

    def _update(self, param: torch.Tensor, group: dict[str, Any]) -> None:
        lr, momentum, grad = group["lr"], group["momentum"], param.grad
        if group["weight_decay"]:
            param.mul_(1.0 - lr * group["weight_decay"])
        if not momentum:
            param.sub_(grad, alpha=lr)
            return
        state = self.state[param]
        if "velocity" not in state:
            state["velocity"] = torch.zeros_like(param)
        velocity = state["velocity"]
        velocity.mul_(momentum).sub_(grad, alpha=lr)
        if group["nesterov"]:
            param.add_(velocity, alpha=momentum).sub_(grad, alpha=lr)
        else:
            param.add_(velocity)
