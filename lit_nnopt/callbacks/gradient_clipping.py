"""Gradient clipping as a callback: global norm, per tensor, by value, AGC and AutoClip."""

from __future__ import annotations

import bisect
import fnmatch
from collections import deque
from collections.abc import Iterable
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from lit_nnopt._host import Callback, host_classes
from lit_nnopt.callbacks.monitor import state_key_of

_MODES = ("norm", "per_tensor_norm", "value", "agc", "autoclip")
_ON_NONFINITE = ("skip", "raise")
# The arguments each mode reads; giving one to another mode is an error, not silently ignored.
_MODE_ARGS = {
    "norm": ("max_norm",),
    "per_tensor_norm": ("max_norm",),
    "value": ("clip_value",),
    "agc": ("agc_clipping", "agc_eps", "agc_exclude"),
    "autoclip": ("autoclip_percentile", "autoclip_history"),
}
_REQUIRED = {"norm": "max_norm", "per_tensor_norm": "max_norm", "value": "clip_value"}
_BOUNDS = {
    "max_norm": (lambda value: value > 0, "> 0"),
    "clip_value": (lambda value: value > 0, "> 0"),
    "agc_clipping": (lambda value: value > 0, "> 0"),
    "agc_eps": (lambda value: value > 0, "> 0"),
    "autoclip_percentile": (lambda value: 0 < value <= 100, "in (0, 100]"),
    "autoclip_history": (lambda value: value >= 1, ">= 1"),
}
# Added to a norm before dividing by it, as torch.nn.utils.clip_grad_norm_ does.
_NORM_EPS = 1e-6
# Strategies that shard the gradients, so that a norm computed on one rank is not the whole's.
_SHARDING_STRATEGIES = host_classes("strategies", "FSDPStrategy") + host_classes("strategies", "DeepSpeedStrategy")


def total_norm(tensors: list[Tensor]) -> Tensor:
    """The L2 norm of all ``tensors`` taken together, as if they were one vector."""
    # At least float32: a half-precision norm overflows at 65504 and would read as non-finite.
    norms = [torch.linalg.vector_norm(t, dtype=torch.promote_types(t.dtype, torch.float32)) for t in tensors]
    return torch.linalg.vector_norm(torch.stack([norm.to(norms[0].device) for norm in norms]))


def unitwise_norm(tensor: Tensor) -> Tensor:
    """AGC's norm of each output unit: over all dimensions but the first; whole biases and gains."""
    dtype = torch.promote_types(tensor.dtype, torch.float32)
    if tensor.ndim <= 1:
        return torch.linalg.vector_norm(tensor, dtype=dtype)
    return torch.linalg.vector_norm(tensor, dim=tuple(range(1, tensor.ndim)), keepdim=True, dtype=dtype)


class _NormHistory:
    """The gradient norms seen so far (the last ``size`` of them), with their percentiles."""

    def __init__(self, size: int | None, values: Iterable[float] = ()) -> None:
        self.order: deque[float] = deque(maxlen=size)
        self.sorted: list[float] = []
        for value in values:
            self.add(value)

    def add(self, value: float) -> None:
        if self.order.maxlen is not None and len(self.order) == self.order.maxlen:
            del self.sorted[bisect.bisect_left(self.sorted, self.order[0])]
        self.order.append(value)
        bisect.insort(self.sorted, value)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile with linear interpolation, as ``numpy.percentile``."""
        position = q / 100.0 * (len(self.sorted) - 1)
        low = int(position)
        high = min(low + 1, len(self.sorted) - 1)
        return self.sorted[low] + (self.sorted[high] - self.sorted[low]) * (position - low)


class GradientClipping(Callback):
    """Clip gradients before each optimizer step, and log the norm before and after.

    Modes:

    - ``norm``: scale all gradients together so their global L2 norm is at most ``max_norm``,
      exactly as ``Trainer(gradient_clip_val=max_norm)`` and ``torch.nn.utils.clip_grad_norm_``.
    - ``per_tensor_norm``: scale each gradient tensor separately to norm at most ``max_norm``
      (Keras' ``clipnorm``).
    - ``value``: clamp each element to ``[-clip_value, clip_value]`` (Keras' ``clipvalue``).
    - ``agc``: unit-wise adaptive gradient clipping (Brock et al. 2021, "High-Performance
      Large-Scale Image Recognition Without Normalization"): the gradient of each output unit
      (a row of a weight: all dimensions but the first; a whole bias) is scaled so that its norm
      is at most ``agc_clipping * max(||unit weights||, agc_eps)``. The paper leaves the final
      linear layer unclipped: name it in ``agc_exclude``.
    - ``autoclip``: AutoClip (Seetharaman et al. 2020): the global norm is clipped at the
      ``autoclip_percentile``-th percentile of the global norms seen so far (this step's
      included), as ``numpy.percentile``. The history is kept per optimizer and checkpointed.

    It clips once per optimizer step (so after all the micro-batches of gradient accumulation),
    where ``Trainer(gradient_clip_val=...)`` does: after every ``on_before_optimizer_step``
    hook, the callbacks' and then the module's, which therefore see the gradients before
    clipping, as Lightning documents; under mixed precision with a gradient scaler, after
    Lightning has unscaled them. (For that, while fit runs, the module's
    ``on_before_optimizer_step`` is wrapped, on the instance, in one that clips after it; fit's
    end unwraps it.) Under DDP the gradients are already averaged over ranks there, so every
    rank clips alike. Strategies that shard gradients (FSDP, DeepSpeed) are refused: a rank
    would see only its shard's norm.

    A non-finite gradient norm either skips the step (the gradients are dropped, so the
    optimizer leaves the weights and its state alone) and counts it in ``nonfinite_steps``, or
    raises ``FloatingPointError`` with the step number. With a gradient scaler (``16-mixed``)
    non-finite gradients are how the scaler finds that its scale is too high: the scaler skips
    that step itself and lowers the scale, so such steps are counted but never raise.

    Logged each step (``log_norms=True``): ``grad_clip/norm_before``, ``grad_clip/norm_after``,
    ``grad_clip/threshold`` (autoclip), and per epoch ``grad_clip/clipped``, the fraction of
    steps in which anything was clipped. With several optimizers each key ends in
    ``/optimizer_<index>``. Counters (all optimizers together): ``steps``, ``clipped_steps``,
    ``nonfinite_steps``.

    Args:
        mode: one of ``norm``, ``per_tensor_norm``, ``value``, ``agc``, ``autoclip``.
        max_norm: the largest norm, for ``norm`` and ``per_tensor_norm``.
        clip_value: the largest absolute value, for ``value``.
        agc_clipping: AGC's clipping factor lambda (default 0.01).
        agc_eps: AGC's floor on the weight norm (default 1e-3), so zero-initialised units
            can still move.
        agc_exclude: parameter names (``fnmatch`` patterns, e.g. ``"net.head.*"``) that AGC
            leaves alone.
        autoclip_percentile: AutoClip's percentile p, in (0, 100] (default 10).
        autoclip_history: keep only the last this many norms (default: all, as the paper).
        on_nonfinite: ``"skip"`` or ``"raise"``.
        log_norms: log the metrics above.

    Raises:
        ValueError: for an unknown mode, a missing or out-of-range argument, or an argument
            that the chosen mode does not use.
        MisconfigurationException: when fit starts, if ``Trainer(gradient_clip_val=...)`` is
            set too, with a sharding strategy, or if an ``agc_exclude`` pattern matches no
            parameter; at the first step, with a fused optimizer under a gradient scaler.

    Example::

        >>> import lightning.pytorch as pl
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> from lit_nnopt.callbacks import GradientClipping
        >>> clipping = GradientClipping(mode="norm", max_norm=0.01)
        >>> trainer = pl.Trainer(max_steps=3, callbacks=[clipping], limit_val_batches=0,
        ...     logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(BoringModel())
        >>> clipping.steps, clipping.clipped_fraction, round(trainer.callback_metrics["grad_clip/norm_after"].item(), 4)
        (3, 1.0, 0.01)
    """

    def __init__(
        self,
        mode: Literal["norm", "per_tensor_norm", "value", "agc", "autoclip"] = "norm",
        max_norm: float | None = None,
        clip_value: float | None = None,
        agc_clipping: float | None = None,
        agc_eps: float | None = None,
        agc_exclude: list[str] | None = None,
        autoclip_percentile: float | None = None,
        autoclip_history: int | None = None,
        on_nonfinite: Literal["skip", "raise"] = "skip",
        log_norms: bool = True,
    ) -> None:
        given = {
            "max_norm": max_norm,
            "clip_value": clip_value,
            "agc_clipping": agc_clipping,
            "agc_eps": agc_eps,
            "agc_exclude": agc_exclude,
            "autoclip_percentile": autoclip_percentile,
            "autoclip_history": autoclip_history,
        }
        _check_arguments(mode, on_nonfinite, given)
        self.mode = mode
        self.max_norm = max_norm
        self.clip_value = clip_value
        self.agc_clipping = 0.01 if agc_clipping is None else agc_clipping
        self.agc_eps = 1e-3 if agc_eps is None else agc_eps
        self.agc_exclude = list(agc_exclude or [])
        self.autoclip_percentile = 10.0 if autoclip_percentile is None else autoclip_percentile
        self.autoclip_history = autoclip_history
        self.on_nonfinite = on_nonfinite
        self.log_norms = log_norms
        self.steps = 0
        self.clipped_steps = 0
        self.nonfinite_steps = 0
        self._histories: dict[int, _NormHistory] = {}
        self._wrapped: tuple[pl.LightningModule, Any] | None = None

    @property
    @override
    def state_key(self) -> str:
        return state_key_of(self, mode=self.mode)

    @property
    def clipped_fraction(self) -> float:
        """The fraction of optimizer steps (with finite gradients) in which anything was clipped."""
        finite_steps = self.steps - self.nonfinite_steps
        return self.clipped_steps / finite_steps if finite_steps else 0.0

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.gradient_clip_val:
            raise MisconfigurationException(
                f"GradientClipping(mode={self.mode!r}) and Trainer(gradient_clip_val={trainer.gradient_clip_val})"
                " would both clip the gradients. Use one: remove `gradient_clip_val` from the Trainer (for the"
                " same effect, GradientClipping(mode='norm' or 'value', ...)), or remove the callback."
            )
        if isinstance(trainer.strategy, _SHARDING_STRATEGIES):
            raise MisconfigurationException(
                f"GradientClipping does not support {type(trainer.strategy).__name__}: it shards the gradients,"
                " so each rank would clip by the norm of its own shard. Use the strategy's own clipping."
            )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_agc_exclude(pl_module)
        module_hook = pl_module.on_before_optimizer_step

        def on_before_optimizer_step(optimizer: Optimizer) -> None:
            module_hook(optimizer)
            self.clip_gradients(trainer, pl_module, optimizer)

        self._wrapped = (pl_module, pl_module.__dict__.get("on_before_optimizer_step"))
        pl_module.on_before_optimizer_step = on_before_optimizer_step

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._unwrap()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._unwrap()

    def _unwrap(self) -> None:
        if self._wrapped is None:
            return
        (pl_module, previous), self._wrapped = self._wrapped, None
        if previous is None:
            del pl_module.on_before_optimizer_step
        else:
            pl_module.on_before_optimizer_step = previous

    def _check_agc_exclude(self, pl_module: pl.LightningModule) -> None:
        names = [name for name, _ in pl_module.named_parameters()]
        unmatched = [p for p in self.agc_exclude if not any(fnmatch.fnmatchcase(name, p) for name in names)]
        if unmatched:
            raise MisconfigurationException(
                f"GradientClipping: `agc_exclude` patterns {unmatched} match no parameter of"
                f" {type(pl_module).__name__}, whose parameters are named like {names[:4]}. Fix the patterns"
                f" (fnmatch syntax: `{names[0].rpartition('.')[0]}.*` names the first layer's parameters)."
            )

    def clip_gradients(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer) -> None:
        """Clip the gradients of ``optimizer``'s parameters in place, count and log; called before each step."""
        _check_unscaled(trainer, optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        before = total_norm(grads)
        self.steps += 1
        if not torch.isfinite(before):
            self._skip_or_raise(trainer, pl_module, params, before)
            return
        clipped = self._clip(trainer, pl_module, optimizer, params, before)
        self.clipped_steps += int(clipped)
        if self.log_norms:
            name = _metric_names(trainer, optimizer)
            pl_module.log(name("norm_before"), before, on_step=True, on_epoch=False, batch_size=1)
            after = total_norm(grads) if clipped else before
            pl_module.log(name("norm_after"), after, on_step=True, on_epoch=False, batch_size=1)
            pl_module.log(name("clipped"), float(clipped), on_step=False, on_epoch=True, batch_size=1)

    def _clip(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        optimizer: Optimizer,
        params: list[Tensor],
        norm: Tensor,
    ) -> bool:
        """Clip the gradients of ``params`` in place; whether anything was clipped."""
        grads = [p.grad for p in params]
        if self.mode == "norm":
            return _scale_to_norm(grads, norm, self.max_norm)
        if self.mode == "per_tensor_norm":
            clipped = [_scale_to_norm([grad], total_norm([grad]), self.max_norm) for grad in grads]
            return any(clipped)
        if self.mode == "value":
            clipped = bool(torch.stack([grad.abs().amax() for grad in grads]).amax() > self.clip_value)
            for grad in grads:
                grad.clamp_(-self.clip_value, self.clip_value)
            return clipped
        if self.mode == "agc":
            return self._agc(pl_module, params)
        threshold = self._autoclip_threshold(trainer, optimizer, norm)
        if self.log_norms:
            name = _metric_names(trainer, optimizer)("threshold")
            pl_module.log(name, threshold, on_step=True, on_epoch=False, batch_size=1)
        return _scale_to_norm(grads, norm, threshold)

    def _agc(self, pl_module: pl.LightningModule, params: list[Tensor]) -> bool:
        names = {id(param): name for name, param in pl_module.named_parameters()}
        triggered = []
        for param in params:
            name = names.get(id(param), "")
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in self.agc_exclude):
                continue
            max_norm = unitwise_norm(param.detach()).clamp_min(self.agc_eps) * self.agc_clipping
            grad_norm = unitwise_norm(param.grad)
            trigger = grad_norm > max_norm
            param.grad.mul_(torch.where(trigger, max_norm / grad_norm.clamp_min(_NORM_EPS), 1.0))
            triggered.append(trigger.any())
        return bool(torch.stack(triggered).any()) if triggered else False

    def _autoclip_threshold(self, trainer: pl.Trainer, optimizer: Optimizer, norm: Tensor) -> float:
        index = trainer.optimizers.index(optimizer)
        history = self._histories.setdefault(index, _NormHistory(self.autoclip_history))
        history.add(norm.item())
        return history.percentile(self.autoclip_percentile)

    def _skip_or_raise(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, params: list[Tensor], norm: Tensor
    ) -> None:
        self.nonfinite_steps += 1
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if self.on_nonfinite == "raise" and scaler is None:
            raise FloatingPointError(
                f"GradientClipping: the gradient norm is {norm.item()} at step {trainer.global_step} (epoch"
                f" {trainer.current_epoch}). Lower the learning rate, find the batch that causes it, or pass"
                " on_nonfinite='skip' to skip such steps."
            )
        # Without gradients the optimizer steps over every parameter: weights and state stay as they are.
        for param in params:
            param.grad = None
        if self.log_norms:
            pl_module.log(
                "grad_clip/nonfinite_steps", float(self.nonfinite_steps), on_step=True, on_epoch=False, batch_size=1
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "clipped_steps": self.clipped_steps,
            "nonfinite_steps": self.nonfinite_steps,
            "autoclip_histories": {index: list(history.order) for index, history in self._histories.items()},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = state_dict.get("steps", 0)
        self.clipped_steps = state_dict.get("clipped_steps", 0)
        self.nonfinite_steps = state_dict.get("nonfinite_steps", 0)
        histories = state_dict.get("autoclip_histories", {})
        self._histories = {
            int(index): _NormHistory(self.autoclip_history, values) for index, values in histories.items()
        }


def _metric_names(trainer: pl.Trainer, optimizer: Optimizer):
    """``grad_clip/<key>``, with ``/optimizer_<index>`` appended when there are several optimizers."""
    several = len(trainer.optimizers) > 1
    suffix = f"/optimizer_{trainer.optimizers.index(optimizer)}" if several else ""
    return lambda key: f"grad_clip/{key}{suffix}"


def _scale_to_norm(grads: list[Tensor], norm: Tensor, max_norm: float) -> bool:
    """Scale ``grads`` whose joint norm is ``norm`` down to ``max_norm``, as clip_grad_norm_ does.

    Only a norm above ``max_norm`` counts as clipped (clip_grad_norm_ also shrinks a norm equal to
    ``max_norm`` by its ``1e-6`` guard, which AutoClip hits whenever this step's norm is the percentile).
    """
    if not norm > max_norm:
        return False
    coefficient = max_norm / (norm + _NORM_EPS)
    for grad in grads:
        grad.mul_(coefficient.to(grad.device, grad.dtype))
    return True


def _check_arguments(mode: str, on_nonfinite: str, given: dict[str, Any]) -> None:
    if mode not in _MODES:
        raise ValueError(f"`mode` can be {', '.join(_MODES)}, got {mode!r}.")
    if on_nonfinite not in _ON_NONFINITE:
        raise ValueError(f"`on_nonfinite` can be {', '.join(_ON_NONFINITE)}, got {on_nonfinite!r}.")
    unused = [name for name, value in given.items() if value is not None and name not in _MODE_ARGS[mode]]
    if unused:
        raise ValueError(
            f"GradientClipping(mode={mode!r}) does not use {', '.join(unused)}; it takes"
            f" {', '.join(_MODE_ARGS[mode])}. Remove them or pick the mode they belong to."
        )
    required = _REQUIRED.get(mode)
    if required and given[required] is None:
        raise ValueError(f"GradientClipping(mode={mode!r}) needs `{required}`, e.g. {required}=1.0.")
    for name, (in_range, bound) in _BOUNDS.items():
        if given[name] is not None and not in_range(given[name]):
            raise ValueError(f"`{name}` must be {bound}, got {given[name]}.")


def _check_unscaled(trainer: pl.Trainer, optimizer: Optimizer) -> None:
    if getattr(trainer.precision_plugin, "scaler", None) is not None and getattr(
        optimizer, "_step_supports_amp_scaling", False
    ):
        raise MisconfigurationException(
            f"GradientClipping cannot clip for {type(optimizer).__name__}: under a gradient scaler it unscales"
            " the gradients inside its own step (a fused optimizer), so they are still scaled when the callback"
            " runs. Create the optimizer with fused=False."
        )
