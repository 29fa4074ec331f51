"""Every private name of Lightning that lit_nnopt uses, in one place, behind a version guard.

Only the speed path of :class:`~lit_nnopt.callbacks.StepsPerExecution` needs them: running a
group of batches inside one Lightning training step means doing, between the batches, what
Lightning's training epoch loop does around each one, and no public hook runs there. Each
name, and why:

- ``fit_loop._data_fetcher``: the iterator the epoch loop draws its batches from. A group's
  later batches are drawn from it, so that they come in the loader's own order, whatever the
  loader, with no second iterator (which would draw another shuffle seed).
- ``epoch_loop.automatic_optimization.run``, replaced on the instance for one fit: the one place
  where Lightning hands a batch to the optimizer; a group runs its batches there.
- ``epoch_loop.batch_progress``, ``update_lr_schedulers``, ``done``, ``max_steps``,
  ``batch_idx``, ``total_batch_idx`` and ``_batches_that_stepped``: the counters, the stepping of
  per-step LR schedulers and the logger step, kept per batch as the loop keeps them.
- ``trainer._logger_connector`` (``on_batch_start``, ``update_train_step_metrics``): what the
  loop does for each batch's logged values.
- ``LightningModule._on_before_batch_transfer``: the conversion the loop applies to each batch
  before its device transfer.
- ``WandbLogger._wandb_init`` and ``WandbLogger._experiment``, for lit_nnopt's W&B logger
  (:func:`drop_wandb_anonymous_setting`, :func:`forget_wandb_run`): no constructor argument or
  method reaches them.
- For :class:`DirectStep`: ``LightningModule._current_fx_name`` (where ``self.log`` is called
  from), ``automatic_optimization._skip_backward`` and ``optim_progress``, and the closure's
  output rules (``ClosureResult``).

Their meaning was verified, by the bitwise tests of ``tests/callbacks/test_steps_per_execution.py`` and
the W&B logger's tests run in CI, on the Lightning minor versions in :data:`VERIFIED_LIGHTNING`.
On any other version :func:`unverified_lightning` says so, StepsPerExecution runs Lightning's
own loop instead (one batch per step, the same weights, without the speed-up), and the W&B
helpers do nothing.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from functools import partial
from types import ModuleType
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lit_nnopt._host import NAMESPACES, namespace_of

# The (major, minor) versions of Lightning (either namespace) whose loops the grouped path was checked against.
VERIFIED_LIGHTNING = ((2, 4), (2, 5), (2, 6))


def unverified_lightning(trainer: pl.Trainer) -> str | None:
    """What keeps the grouped path off with this trainer's Lightning, or None on a verified version."""
    return _unverified(namespace_of(trainer))


def _unverified(namespace: ModuleType) -> str | None:
    package = namespace.__name__.split(".")[0]
    version = str(getattr(namespace, "__version__", None) or getattr(__import__(package), "__version__", "unknown"))
    match = re.match(r"(\d+)\.(\d+)", version)
    if match and (int(match[1]), int(match[2])) in VERIFIED_LIGHTNING:
        return None
    verified = ", ".join(f"{major}.{minor}" for major, minor in VERIFIED_LIGHTNING)
    return f"{package} {version} is not a version its grouped path was verified on ({verified})"


def ungroupable(trainer: pl.Trainer) -> str | None:
    """What keeps this fit from running groups of batches at all (the version aside), or None."""
    fetcher = trainer.fit_loop._data_fetcher
    if type(fetcher).__name__ == "_DataLoaderIterDataFetcher":
        return "a `training_step` that takes `dataloader_iter` and draws its own batches"
    return None


class GroupedSteps:
    """Runs up to ``steps`` batches in each of Lightning's training steps, each batch with its own optimizer step.

    :meth:`install` replaces, for this fit, the ``run`` of the epoch loop's automatic
    optimization: after the batch that Lightning fetched, the group's other batches are drawn
    from the loop's own data fetcher and run with the bookkeeping the loop does around a batch.
    A group ends after ``steps`` batches counted from the epoch's start (so a resumed run
    groups alike), before a batch where Lightning validates, at the epoch's end, and where the
    loop would be done (``max_steps``, a stop).
    """

    def __init__(self, trainer: pl.Trainer, steps: int, default_batch_handling: bool) -> None:
        self.trainer = trainer
        self.steps = steps
        self.default_batch_handling = default_batch_handling
        self.optimization = trainer.fit_loop.epoch_loop.automatic_optimization
        self.run_one_batch = self.optimization.run

    def install(self) -> None:
        self.optimization.run = self.run_group

    def remove(self) -> None:
        vars(self.optimization).pop("run", None)  # the class' method again

    def run_group(self, optimizer: torch.optim.Optimizer, batch_idx: int, kwargs: OrderedDict) -> Any:
        """Lightning's automatic optimization of each batch of a group, with the loop's bookkeeping between them."""
        trainer = self.trainer
        loop = trainer.fit_loop.epoch_loop
        fetcher = trainer.fit_loop._data_fetcher
        step_schedulers = any(config.interval == "step" for config in trainer.lr_scheduler_configs)
        device = trainer.strategy.root_device
        run_one_batch = DirectStep(trainer).run if direct_step_obstacle(trainer) is None else self.run_one_batch
        # Lightning's `global_step` under automatic optimization, read without its chain of properties.
        steps_taken = self.optimization.optim_progress.optimizer.step.total
        output = run_one_batch(optimizer, batch_idx, kwargs)
        for _ in range(self._followers(batch_idx)):
            if fetcher.done:
                break
            # Inside a group the loop can only be done by `max_steps` or a stop: ask it only then.
            max_steps_reached = loop.max_steps != -1 and steps_taken.completed >= loop.max_steps
            if (trainer.should_stop or max_steps_reached) and loop.done:
                break
            _close_batch(trainer, step_schedulers)
            batch, _, _ = next(fetcher)
            loop.batch_progress.is_last_batch = fetcher.done
            if not (self.default_batch_handling and _on_device(batch, device)):
                batch = _transfer(trainer, batch)
            loop.batch_progress.increment_ready()
            trainer._logger_connector.on_batch_start(batch)
            loop.batch_progress.increment_started()
            batch_idx = loop.batch_idx
            output = run_one_batch(optimizer, batch_idx, _with_batch(kwargs, batch, batch_idx))
        return output

    def _followers(self, batch_idx: int) -> int:
        """How many batches may follow ``batch_idx`` in its group: up to the group's end or the next validation."""
        trainer = self.trainer
        left = self.steps - 1 - batch_idx % self.steps
        every = trainer.val_check_batch
        if isinstance(every, int) and every > 0:
            loop = trainer.fit_loop.epoch_loop
            # Lightning's count for validation: batches of the epoch, or of the whole fit without an epoch cadence.
            counted = loop.total_batch_idx if trainer.check_val_every_n_epoch is None else batch_idx
            left = min(left, every - 1 - counted % every)
        return left


def _close_batch(trainer: pl.Trainer, step_schedulers: bool) -> None:
    """What Lightning's training epoch loop does after a batch's optimizer step, less the per-batch hooks.

    ``accumulate_grad_batches`` is 1 (larger is refused at setup): every batch steps the optimizer.
    ``step_schedulers``: whether a scheduler is stepped per optimizer step.
    """
    loop = trainer.fit_loop.epoch_loop
    loop.batch_progress.increment_processed()
    if step_schedulers:
        loop.update_lr_schedulers("step", update_plateau_schedulers=False)
    loop.batch_progress.increment_completed()
    # Lightning's logging cadence (`should_update_logs`), checked here first: most batches log nothing.
    every = trainer.log_every_n_steps
    if trainer.fast_dev_run or trainer.should_stop or (every and (loop._batches_that_stepped + 1) % every == 0):
        trainer._logger_connector.update_train_step_metrics()
    loop._batches_that_stepped += 1


def _transfer(trainer: pl.Trainer, batch: Any) -> Any:
    """The conversion and device transfer that Lightning applies to each batch it fetches."""
    batch = trainer.precision_plugin.convert_input(batch)
    batch = trainer.lightning_module._on_before_batch_transfer(batch, dataloader_idx=0)
    return trainer.strategy.batch_to_device(batch, dataloader_idx=0)


def _on_device(batch: Any, device: torch.device) -> bool:
    # The common case only, checked cheaply: a tuple or list of tensors.
    return isinstance(batch, (tuple, list)) and all(
        isinstance(item, torch.Tensor) and item.device == device for item in batch
    )


def _with_batch(kwargs: OrderedDict, batch: Any, batch_idx: int) -> OrderedDict:
    step_kwargs = OrderedDict(kwargs)
    step_kwargs["batch"] = batch
    if "batch_idx" in step_kwargs:
        step_kwargs["batch_idx"] = batch_idx
    return step_kwargs


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
    host = namespace_of(trainer)
    module = trainer.lightning_module
    if type(trainer.strategy) is not host.strategies.SingleDeviceStrategy:
        return f"the {type(trainer.strategy).__name__}"
    if type(trainer.precision_plugin) is not host.plugins.precision.Precision:
        return f"the {type(trainer.precision_plugin).__name__} plugin"
    if type(trainer.profiler) is not host.profilers.PassThroughProfiler:
        return f"the {type(trainer.profiler).__name__}"
    if not module.automatic_optimization or len(trainer.optimizers) != 1:
        return "not one optimizer under automatic optimization"
    if trainer.accumulate_grad_batches != 1 or trainer.gradient_clip_val:
        return "gradient accumulation or clipping by the Trainer"
    if trainer.fit_loop.epoch_loop.automatic_optimization._skip_backward:
        return "a skipped backward"
    if trainer.strategy.model is not module:
        return "a strategy that wraps the module"
    overridden = [name for name in _STEP_METHODS if _overrides(module, name, "LightningModule")]
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
            loss = _loss_of(self.trainer, output)
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


def _loss_of(trainer: pl.Trainer, output: Any) -> torch.Tensor | None:
    """The loss in what ``training_step`` returned; Lightning's errors for what it refuses."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("loss"), torch.Tensor):
        return output["loss"]
    automatic = namespace_of(trainer).loops.optimization.automatic
    loss = automatic.ClosureResult.from_training_step_output(output).closure_loss
    if loss is None:
        automatic.Closure.warning_cache.warn(
            "`training_step` returned `None`. If this was on purpose, ignore this warning..."
        )
    return loss


def _implementations(trainer: pl.Trainer, hook: str) -> list[Callable[..., Any]]:
    """The hook of each callback that implements it, then the module's, as ``_call_*_hook`` call them."""
    module = trainer.lightning_module
    calls: list[Callable[..., Any]] = [
        partial(getattr(callback, hook), trainer, module)
        for callback in trainer.callbacks
        if _overrides(callback, hook, "Callback")
    ]
    if _overrides(module, hook, "LightningModule"):
        calls.append(getattr(module, hook))
    return calls


def _overrides(obj: object, name: str, base: str) -> bool:
    """Whether ``obj`` has its own ``name``, other than that of the class ``base`` of every installed namespace."""
    method = getattr(obj, name)
    function = getattr(method, "__func__", method)
    return all(function is not getattr(getattr(namespace, base), name) for namespace in NAMESPACES)


def drop_wandb_anonymous_setting(logger: Any) -> None:
    """Leave out the ``anonymous`` setting that ``WandbLogger`` always hands to ``wandb.init``.

    wandb deprecated the setting and prints a warning whenever it is passed, ``None`` included.
    On an unverified Lightning the setting stays, and wandb prints its warning.
    """
    if _unverified(namespace_of(logger)) is None:
        logger._wandb_init.pop("anonymous", None)


def forget_wandb_run(logger: Any) -> None:
    """Make ``WandbLogger`` start a new run at its next use, rather than return the one it finished.

    On an unverified Lightning the logger keeps the finished run: a later fit with the same
    logger object would log into it.
    """
    if _unverified(namespace_of(logger)) is None:
        logger._experiment = None
