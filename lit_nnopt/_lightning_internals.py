"""Every use of Lightning's private API in lit_nnopt, in one place (checked against Lightning 2.6).

A Lightning upgrade that moves one of these breaks only this module; its tests
(``tests/test_resilience.py``: the bitwise resume; ``tests/test_steps_per_execution.py``: the
training of one batch per step, bit for bit) say so at once.

One exception, named here: ``callbacks/steps_per_execution.py`` drives the training epoch loop
between the batches of a group, with what Lightning's ``_TrainingEpochLoop.advance`` does around a
batch: the fit loop's ``_combined_loader`` and ``_data_fetcher`` (``fetched``, ``done``,
``length``), the epoch loop's ``batch_progress``, ``_batches_that_stepped``,
``update_lr_schedulers`` and ``done``, the ``run`` and the optimizer-step count of its
``automatic_optimization``, the trainer's ``_logger_connector`` and its logging cadence
(``should_update_logs``), the module's ``_on_before_batch_transfer``, and the loops'
``_is_max_limit_reached``.

Private: the names here may change without notice.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loops.optimization.automatic import Closure, ClosureResult
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException


def epoch_aggregates(trainer: pl.Trainer) -> dict[str, dict[str, Any]]:
    """The running aggregates of the values logged with ``self.log(..., on_epoch=True)`` in this training epoch.

    Lightning keeps them in the training epoch loop's private ``_results`` and leaves them out of
    checkpoints. Returned as CPU copies of each result's ``metric_state`` (``value``, ``cumulated_batch_size``).
    """
    return {
        key: {name: _cpu_copy(value) for name, value in result.metric_state.items()}
        for key, result in trainer.fit_loop.epoch_loop._results.items()
        if result.is_tensor and result.meta.on_epoch
    }


def merge_epoch_aggregates(trainer: pl.Trainer, saved: dict[str, dict[str, torch.Tensor]]) -> None:
    """Fold aggregates saved before a resume into those of the first batch after it.

    A mean is a running sum: ``saved + first`` is bitwise the ``sum + first`` that the
    uninterrupted run computes, since floating-point addition is commutative. Entries that the
    first batch did not log are left out, as they would be when they are created later.
    """
    results = trainer.fit_loop.epoch_loop._results
    for key, state in saved.items():
        result = results.get(key)
        if result is None:
            continue
        for name, value in state.items():
            current = getattr(result, name)
            value = value.to(current.device)
            if name == "value" and result.meta.is_max_reduction:
                setattr(result, name, torch.maximum(value, current))
            elif name == "value" and result.meta.is_min_reduction:
                setattr(result, name, torch.minimum(value, current))
            else:
                setattr(result, name, value + current)


def _cpu_copy(value: Any) -> Any:
    if isinstance(value, list):
        return [_cpu_copy(item) for item in value]
    return value.detach().cpu().clone() if isinstance(value, torch.Tensor) else value


# The hooks of each optimizer step, in Lightning's order: every callback's, then the module's.
_STEP_HOOKS = ("on_before_zero_grad", "on_before_backward", "on_after_backward", "on_before_optimizer_step")
# Module methods that Lightning calls around each step; overriding any of them needs Lightning's own path.
_STEP_METHODS = ("optimizer_step", "optimizer_zero_grad", "backward", "configure_gradient_clipping", "clip_gradients")


def direct_step_obstacle(trainer: pl.Trainer) -> str | None:
    """What keeps :class:`DirectStep` from standing in for Lightning's automatic optimization, or None.

    The plain case only: one device, the 32-bit precision plugin, no profiler, one optimizer,
    no gradient accumulation or clipping by the Trainer, and none of the module methods around
    the step overridden. Anything else keeps Lightning's own path.
    """
    module = trainer.lightning_module
    if type(trainer.strategy) is not SingleDeviceStrategy:
        return f"the {type(trainer.strategy).__name__}"
    if type(trainer.precision_plugin) is not Precision:
        return f"the {type(trainer.precision_plugin).__name__} plugin"
    if type(trainer.profiler) is not PassThroughProfiler:
        return f"the {type(trainer.profiler).__name__}"
    if not module.automatic_optimization or len(trainer.optimizers) != 1:
        return "not one optimizer under automatic optimization"
    if trainer.accumulate_grad_batches != 1 or trainer.gradient_clip_val:
        return "gradient accumulation or clipping by the Trainer"
    if trainer.fit_loop.epoch_loop.automatic_optimization._skip_backward:
        return "a skipped backward"
    if trainer.strategy.model is not module:
        return "a strategy that wraps the module"
    overridden = [name for name in _STEP_METHODS if _overrides(module, name, pl.LightningModule)]
    return f"{type(module).__name__}.{overridden[0]}" if overridden else None


class DirectStep:
    """Lightning's automatic optimization of one batch, in the plain case, without its per-batch machinery.

    What ``_AutomaticOptimization.run`` does when nothing is overridden, in the same order with
    the same arguments: ``optimizer.step(closure)``, where the closure runs the module's
    ``training_step`` (what the single-device strategy's ``training_step`` calls, within the
    32-bit precision's empty context), the ``on_before_zero_grad`` hooks, ``zero_grad()``, the
    ``on_before_backward`` hooks, ``backward``, the ``on_after_backward`` hooks, then the
    ``on_before_optimizer_step`` hooks; the optimizer's progress is counted as Lightning counts it.
    It saves Lightning's closure objects and hook dispatch (a profiler context and a hook name set
    per call, for every callback whether or not it implements the hook). Build one with the
    trainer's callbacks of the moment; :func:`direct_step_obstacle` says when one may be used.
    """

    def __init__(self, trainer: pl.Trainer) -> None:
        self.trainer = trainer
        self.module = trainer.lightning_module
        self.progress = trainer.fit_loop.epoch_loop.automatic_optimization.optim_progress.optimizer
        self.hooks = {hook: _implementations(trainer, hook) for hook in _STEP_HOOKS}

    def run(self, optimizer: torch.optim.Optimizer, batch_idx: int, kwargs: OrderedDict) -> dict[str, Any]:
        """The batch's optimizer step; returns what Lightning's does (``{"loss": ..., **extra}``, or ``{}``)."""
        outer_name = self.module._current_fx_name
        results: list[dict[str, Any]] = []
        self.progress.step.increment_ready()
        optimizer.step(closure=partial(self._closure, optimizer, kwargs, results))
        self.progress.step.increment_completed()
        self._name_current_call(outer_name)
        if not results:
            raise MisconfigurationException(
                f"{type(optimizer).__name__}.step did not call its closure: the batch was not trained. "
                "Lightning's automatic optimization needs an optimizer that calls the closure it is given."
            )
        return results[-1]

    def _closure(self, optimizer: torch.optim.Optimizer, kwargs: OrderedDict, results: list) -> torch.Tensor | None:
        module, zero_grad = self.module, self.progress.zero_grad
        with torch.enable_grad():
            self._name_current_call("training_step")
            output = module.training_step(*kwargs.values())
            loss = _loss_of(output)
            zero_grad.increment_ready()
            self._call("on_before_zero_grad", optimizer)
            zero_grad.increment_started()
            optimizer.zero_grad()
            zero_grad.increment_completed()
            if loss is not None:
                self._call("on_before_backward", loss)
                self._name_current_call("backward")
                module.backward(loss)
                self._call("on_after_backward")
        self._call("on_before_optimizer_step", optimizer)
        if loss is None:
            results.append({})
            return None
        loss = loss.detach().clone()
        extra = {key: value for key, value in output.items() if key != "loss"} if isinstance(output, Mapping) else {}
        results.append({"loss": loss, **extra})
        return loss

    def _call(self, hook: str, *args: Any) -> None:
        for fn in self.hooks[hook]:
            self._name_current_call(hook)
            fn(*args)

    def _name_current_call(self, name: str | None) -> None:
        # What `self.log` reads to know where it is called from. A plain value: set without
        # nn.Module.__setattr__, which costs more than the rest of the bookkeeping of a step.
        vars(self.module)["_current_fx_name"] = name


def _loss_of(output: Any) -> torch.Tensor | None:
    """The loss in what ``training_step`` returned; Lightning's errors for what it refuses."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("loss"), torch.Tensor):
        return output["loss"]
    loss = ClosureResult.from_training_step_output(output).closure_loss
    if loss is None:
        Closure.warning_cache.warn("`training_step` returned `None`. If this was on purpose, ignore this warning...")
    return loss


def _implementations(trainer: pl.Trainer, hook: str) -> list[Callable[..., Any]]:
    """The hook of each callback that implements it, then the module's, as ``_call_*_hook`` call them."""
    module = trainer.lightning_module
    calls: list[Callable[..., Any]] = [
        partial(getattr(callback, hook), trainer, module)
        for callback in trainer.callbacks
        if _overrides(callback, hook, Callback)
    ]
    if _overrides(module, hook, pl.LightningModule):
        calls.append(getattr(module, hook))
    return calls


def _overrides(obj: object, name: str, base: type) -> bool:
    method = getattr(obj, name)
    return getattr(method, "__func__", method) is not getattr(base, name)
