"""Keras' ``steps_per_execution`` for any LightningModule: Lightning's per-batch work once per group of batches."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.precision.precision import Precision as FabricPrecision
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loops.utilities import _is_max_limit_reached
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.model_helpers import is_overridden
from typing_extensions import override

from lit_nnopt._lightning_internals import DirectStep, direct_step_obstacle


class GroupedBatches:
    """Serves any iterable of batches as groups of ``steps`` consecutive batches.

    Each item it yields is the group's first batch, as the iterable served it, so that
    Lightning's hooks and batch transfer see ordinary batches; :meth:`pop_followers` hands over
    the group's other batches, which are drawn from the iterable only when they are run (or
    when the next group is fetched): a fit that stops inside a group leaves a resumable loader
    at the next batch to run. At most ``max_batches()`` batches are served per iteration
    (Lightning's ``limit_train_batches``, counted in batches). Every other attribute
    (``state_dict``, ``sampler``, ``dataset``...) is the wrapped iterable's.
    """

    def __init__(self, batches: Iterable, steps: int, max_batches: Callable[[], int | None] = lambda: None) -> None:
        self.batches = batches
        self.steps = steps
        self.max_batches = max_batches
        self._followers: deque[_Followers] = deque()

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name == "batches":  # not set yet (copy, pickle): no recursion into __getattr__
            raise AttributeError(name)
        return getattr(self.batches, name)

    def __iter__(self) -> Iterator[Any]:
        self._followers.clear()
        limit = self.max_batches()
        served = 0
        iterator = iter(self.batches)
        while limit is None or served < limit:
            first = next(iterator, _END)
            if first is _END:
                return
            size = self.steps if limit is None else min(self.steps, limit - served)
            followers = _Followers(iterator, size - 1)
            self._followers.append(followers)
            yield first
            followers.draw_all()  # before the next group's first batch, in the iterable's order
            served += 1 + followers.drawn

    def pop_followers(self) -> _Followers:
        """The rest of the oldest group not yet run (Lightning may fetch a group ahead)."""
        return self._followers.popleft() if self._followers else _Followers(iter(()), 0)


_END = object()


class _Followers:
    """The batches of a group after its first, drawn from the iterator when asked for."""

    def __init__(self, iterator: Iterator[Any], count: int) -> None:
        self._iterator = iterator
        self._undrawn = count
        self._waiting: deque[Any] = deque()
        self.drawn = 0

    def __len__(self) -> int:
        """The batches left, at most: the loader may end first."""
        return len(self._waiting) + self._undrawn

    def __iter__(self) -> Iterator[Any]:
        while (batch := self.pop()) is not _END:
            yield batch

    def pop(self) -> Any:
        if not self._waiting:
            self._draw()
        return self._waiting.popleft() if self._waiting else _END

    def draw_all(self) -> None:
        while self._undrawn:
            self._draw()

    def _draw(self) -> None:
        if not self._undrawn:
            return
        batch = next(self._iterator, _END)
        self._undrawn = self._undrawn - 1 if batch is not _END else 0
        if batch is not _END:
            self._waiting.append(batch)
            self.drawn += 1


class StepsPerExecution(Callback):
    """Runs ``steps`` batches per Lightning training step, each with its own optimizer step.

    Keras' ``compile(steps_per_execution=N)`` for any LightningModule under automatic
    optimization, without changing it. The train loader's batches come in groups of ``steps``;
    each batch of a group goes through Lightning's own automatic optimization (``training_step``,
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

    Args:
        steps: batches per Lightning training step; 1 changes nothing.

    Raises:
        ValueError: ``steps`` is not a positive integer.
        MisconfigurationException: at fit start, for a module under manual optimization, with
            ``Trainer(gradient_clip_val=...)`` or ``accumulate_grad_batches > 1``, with a
            ``val_check_interval`` that falls inside a group, a ReduceLROnPlateau scheduler
            stepped every step, or more than one train dataloader.

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
        self._run_one_batch: Any = None
        self._default_batch_handling = False

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
        optimization = trainer.fit_loop.epoch_loop.automatic_optimization
        self._default_batch_handling = _default_batch_handling(trainer)
        self._run_one_batch = optimization.run
        optimization.run = self._run_group
        self._group_train_loader(trainer)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.steps > 1:  # the loader may have been reloaded (`reload_dataloaders_every_n_epochs`)
            self._group_train_loader(trainer)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._run_one_batch is not None:
            del trainer.fit_loop.epoch_loop.automatic_optimization.run  # the class' method again
            self._run_one_batch = None
        loader = trainer.fit_loop._combined_loader
        if loader is not None and any(isinstance(batches, GroupedBatches) for batches in loader.flattened):
            loader.flattened = [
                getattr(b, "batches", b) if isinstance(b, GroupedBatches) else b for b in loader.flattened
            ]

    def _group_train_loader(self, trainer: pl.Trainer) -> None:
        fit_loop = trainer.fit_loop
        loader = fit_loop._combined_loader
        if loader is None or all(isinstance(batches, GroupedBatches) for batches in loader.flattened):
            return
        if len(loader.flattened) != 1:
            raise MisconfigurationException(
                f"StepsPerExecution groups the batches of one train dataloader; this fit has "
                f"{len(loader.flattened)}. Combine them into one, or remove the StepsPerExecution callback."
            )

        def max_batches() -> int | None:
            # Batches left in this epoch: `limit_train_batches`, counted in batches, less those already run.
            limit = trainer.num_training_batches
            done = fit_loop.epoch_loop.batch_progress.current.ready
            return None if limit == float("inf") else int(limit) - done

        loader.flattened = [GroupedBatches(loader.flattened[0], self.steps, max_batches)]
        iter(fit_loop._data_fetcher)  # the iterator Lightning made before is over the ungrouped loader

    def _run_group(self, optimizer: torch.optim.Optimizer, batch_idx: int, kwargs: OrderedDict) -> Any:
        """Lightning's automatic optimization of each batch of a group, with the loop's bookkeeping between them."""
        trainer = self._run_one_batch.__self__.trainer  # the automatic optimization loop's
        loop = trainer.fit_loop.epoch_loop
        fetcher = trainer.fit_loop._data_fetcher
        (grouped,) = trainer.fit_loop._combined_loader.flattened
        followers = grouped.pop_followers()
        step_schedulers = any(config.interval == "step" for config in trainer.lr_scheduler_configs)
        device = trainer.strategy.root_device
        run_one_batch = self._run_one_batch
        if direct_step_obstacle(trainer) is None:
            run_one_batch = DirectStep(trainer).run
        # Lightning counted the group as one fetched batch: from here on it counts batches.
        last_group = fetcher.done if fetcher.length is None else fetcher.fetched + len(followers) >= fetcher.length
        loop.batch_progress.is_last_batch = last_group and not followers
        # Lightning's `global_step` under automatic optimization, read without its chain of properties.
        steps_taken = loop.automatic_optimization.optim_progress.optimizer.step.total
        output = run_one_batch(optimizer, batch_idx, kwargs)
        while followers:
            # Inside a group the loop can only be done by `max_steps` or a stop: ask it only then.
            maybe_done = trainer.should_stop or _is_max_limit_reached(steps_taken.completed, loop.max_steps)
            if maybe_done and loop.done:
                break
            batch = followers.pop()
            if batch is _END:
                break
            _close_batch(trainer, step_schedulers)
            if not (self._default_batch_handling and _on_device(batch, device)):
                batch = _transfer(trainer, batch)
            fetcher.fetched += 1
            if fetcher.length is not None:
                fetcher.done = fetcher.fetched >= fetcher.length
            loop.batch_progress.is_last_batch = last_group and not followers
            loop.batch_progress.increment_ready()
            trainer._logger_connector.on_batch_start(batch)
            loop.batch_progress.increment_started()
            batch_idx = loop.batch_idx
            output = run_one_batch(optimizer, batch_idx, _with_batch(kwargs, batch, batch_idx))
        return output

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}


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


def _default_batch_handling(trainer: pl.Trainer) -> bool:
    """Whether Lightning's conversion and transfer leave a batch already on the device as it is."""
    hooks = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")
    owners = [(trainer.lightning_module, pl.LightningModule)]
    if trainer.datamodule is not None:
        owners.append((trainer.datamodule, pl.LightningDataModule))
    overridden = any(is_overridden(hook, owner, parent) for hook in hooks for owner, parent in owners)
    return not overridden and type(trainer.precision_plugin).convert_input is FabricPrecision.convert_input


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
    if isinstance(trainer.val_check_interval, int) and trainer.val_check_interval % steps:
        raise MisconfigurationException(
            f"`Trainer(val_check_interval={trainer.val_check_interval})` falls inside a group of "
            f"StepsPerExecution(steps={steps}), where validation cannot run. Use a multiple of {steps} "
            "batches, or a fraction of the epoch."
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
