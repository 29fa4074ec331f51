"""GradientClipping and GradientNormMonitor on known gradients, against hand and NumPy computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lit_nnopt.callbacks import GradientClipping, GradientNormMonitor
from tests.helpers.callbacks import ScriptedTrainer, quiet_trainer


class Net(nn.Module):
    """Two parameter tensors whose gradients a test sets by hand."""

    def __init__(self, weight: list, bias: list) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(torch.tensor(weight).shape))
        self.bias = nn.Parameter(torch.ones(len(bias)))
        self.weight.grad = torch.tensor(weight, dtype=torch.float32)
        self.bias.grad = torch.tensor(bias, dtype=torch.float32)


def clip(callback: GradientClipping, module: nn.Module, step: int = 0) -> torch.optim.Optimizer:
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    trainer = ScriptedTrainer(module, optimizers=[optimizer])
    trainer.global_step = step
    callback.clip_gradients(trainer, module, optimizer)
    return optimizer


def quiet(**kwargs) -> GradientClipping:
    return GradientClipping(log_norms=False, **kwargs)


def test_norm_scales_all_gradients_to_the_global_norm():
    # |[3, 4]| = 5 and |[0, 0, 12]| = 12: the global norm is 13; clip to 6.5 halves everything.
    net = Net([3.0, 4.0], [0.0, 0.0, 12.0])
    callback = quiet(mode="norm", max_norm=6.5)
    clip(callback, net)
    assert net.weight.grad.tolist() == pytest.approx([1.5, 2.0])
    assert net.bias.grad.tolist() == pytest.approx([0.0, 0.0, 6.0])
    assert (callback.steps, callback.clipped_steps) == (1, 1)
    reference = Net([3.0, 4.0], [0.0, 0.0, 12.0])
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 6.5)
    assert torch.allclose(net.weight.grad, reference.weight.grad) and torch.allclose(net.bias.grad, reference.bias.grad)


def test_norm_leaves_small_gradients_alone():
    net = Net([3.0, 4.0], [0.0])
    callback = quiet(mode="norm", max_norm=5.5)
    clip(callback, net)
    assert net.weight.grad.tolist() == [3.0, 4.0] and callback.clipped_steps == 0


def test_per_tensor_norm_clips_each_tensor_alone_as_keras_clipnorm():
    net = Net([3.0, 4.0], [0.3, 0.4])  # norms 5 and 0.5
    clip(quiet(mode="per_tensor_norm", max_norm=2.5), net)
    assert net.weight.grad.tolist() == pytest.approx([1.5, 2.0])
    assert net.bias.grad.tolist() == pytest.approx([0.3, 0.4])


def test_value_clamps_each_element_as_keras_clipvalue():
    net = Net([-3.0, 0.5], [2.0, -0.25])
    clip(quiet(mode="value", clip_value=1.0), net)
    assert net.weight.grad.tolist() == [-1.0, 0.5] and net.bias.grad.tolist() == [1.0, -0.25]


def test_agc_by_hand():
    net = Net([[1.0, 0.0], [0.0, 1.0]], [1.0, 1.0])
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))  # unit norms 5 and 0
    callback = quiet(mode="agc", agc_clipping=0.1, agc_eps=1e-3)
    clip(callback, net)
    # Row 0: max 0.1 * 5 = 0.5 < |[1, 0]|: scaled to 0.5. Row 1: max 0.1 * max(0, 1e-3) = 1e-4.
    assert net.weight.grad.flatten().tolist() == pytest.approx([0.5, 0.0, 0.0, 1e-4])
    # The bias is one unit: weights [1, 1] (norm sqrt 2) allow 0.1 sqrt 2; its gradient [1, 1] is scaled by 0.1.
    assert net.bias.grad.tolist() == pytest.approx([0.1, 0.1])
    assert callback.clipped_steps == 1


def agc_reference(weight: np.ndarray, grad: np.ndarray, clipping: float, eps: float) -> np.ndarray:
    """Brock et al.'s AGC (nfnets/optim.py), in NumPy with PyTorch's (out, in, ...) layout."""
    axis = None if weight.ndim <= 1 else tuple(range(1, weight.ndim))
    keepdims = weight.ndim > 1
    max_norm = np.maximum(np.sqrt((weight**2).sum(axis=axis, keepdims=keepdims)), eps) * clipping
    grad_norm = np.sqrt((grad**2).sum(axis=axis, keepdims=keepdims))
    clipped = grad * (max_norm / np.maximum(grad_norm, 1e-6))
    return np.where(grad_norm < max_norm, grad, clipped)


def test_agc_matches_a_numpy_reference_on_conv_linear_and_bias():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 5))
    for param in net.parameters():
        param.grad = torch.randn_like(param) * 3
    expected = {
        name: agc_reference(p.detach().numpy(), p.grad.numpy(), clipping=0.05, eps=1e-3)
        for name, p in net.named_parameters()
    }
    clip(quiet(mode="agc", agc_clipping=0.05), net)
    for name, param in net.named_parameters():
        np.testing.assert_allclose(param.grad.numpy(), expected[name], rtol=1e-5, atol=1e-7)


def test_agc_exclude_leaves_named_parameters_alone():
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    for param in net.parameters():
        param.grad = torch.full_like(param, 100.0)
    clip(quiet(mode="agc", agc_exclude=["1.*"]), net)
    assert torch.all(net[1].weight.grad == 100.0) and torch.all(net[1].bias.grad == 100.0)
    assert torch.all(net[0].weight.grad < 100.0)


def test_autoclip_clips_at_the_percentile_of_the_norm_history():
    callback = quiet(mode="autoclip", autoclip_percentile=50)
    net = Net([0.0], [0.0])
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    trainer = ScriptedTrainer(net, optimizers=[optimizer])
    history, after = [], []
    for norm in [1.0, 4.0, 2.0, 8.0]:
        net.weight.grad, net.bias.grad = torch.tensor([norm]), torch.tensor([0.0])
        callback.clip_gradients(trainer, net, optimizer)
        history.append(norm)
        after.append(net.weight.grad.item())
        # The threshold is numpy's percentile over all norms so far, this one included.
        assert after[-1] == pytest.approx(min(norm, np.percentile(history, 50)), rel=1e-5)
    assert after == pytest.approx([1.0, 2.5, 2.0, 3.0], rel=1e-5)
    assert callback.clipped_steps == 2


def test_autoclip_history_window_and_state_round_trip():
    callback = quiet(mode="autoclip", autoclip_percentile=50, autoclip_history=2)
    net = Net([0.0], [0.0])
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    trainer = ScriptedTrainer(net, optimizers=[optimizer])
    for norm in [1.0, 4.0, 2.0]:
        net.weight.grad, net.bias.grad = torch.tensor([norm]), torch.tensor([0.0])
        callback.clip_gradients(trainer, net, optimizer)
    resumed = quiet(mode="autoclip", autoclip_percentile=50, autoclip_history=2)
    resumed.load_state_dict(callback.state_dict())
    net.weight.grad, net.bias.grad = torch.tensor([8.0]), torch.tensor([0.0])
    resumed.clip_gradients(trainer, net, optimizer)
    # The window holds the last two norms, 2 and 8: the median is 5.
    assert net.weight.grad.item() == pytest.approx(5.0, rel=1e-5)
    assert (resumed.steps, resumed.clipped_steps) == (4, 2)


def test_half_precision_gradients_beyond_the_fp16_range_are_not_non_finite():
    net = nn.Linear(2, 1, bias=False).half()
    net.weight.grad = torch.full((1, 2), 300.0, dtype=torch.float16)  # norm 424: its square overflows fp16
    callback = quiet(mode="norm", max_norm=1.0)
    clip(callback, net)
    assert callback.nonfinite_steps == 0
    assert torch.linalg.vector_norm(net.weight.grad.float()).item() == pytest.approx(1.0, rel=1e-3)


def test_non_finite_gradients_skip_the_step_or_raise():
    net = Net([math.inf, 1.0], [0.0])
    callback = quiet(mode="norm", max_norm=1.0)
    optimizer = clip(callback, net)
    assert net.weight.grad is None and net.bias.grad is None and callback.nonfinite_steps == 1
    weights = net.weight.detach().clone()
    optimizer.step()
    assert torch.equal(net.weight, weights)
    with pytest.raises(FloatingPointError, match="gradient norm is nan at step 7"):
        clip(quiet(mode="value", clip_value=1.0, on_nonfinite="raise"), Net([math.nan], [0.0]), step=7)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "global"}, "`mode` can be norm, per_tensor_norm, value, agc, autoclip"),
        ({"mode": "norm"}, r"mode='norm'\) needs `max_norm`"),
        ({"mode": "value", "clip_value": 1.0, "max_norm": 1.0}, r"mode='value'\) does not use max_norm"),
        ({"mode": "norm", "max_norm": 1.0, "agc_clipping": 0.1}, "does not use agc_clipping"),
        ({"mode": "autoclip", "autoclip_percentile": 0}, r"`autoclip_percentile` must be in \(0, 100\]"),
        ({"mode": "norm", "max_norm": -1.0}, "`max_norm` must be > 0"),
        ({"mode": "norm", "max_norm": 1.0, "on_nonfinite": "ignore"}, "`on_nonfinite` can be skip, raise"),
    ],
)
def test_bad_arguments_say_what_is_valid(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GradientClipping(**kwargs)


def test_refuses_the_trainers_own_clipping(tmp_path):
    trainer = quiet_trainer(tmp_path, gradient_clip_val=1.0, callbacks=[GradientClipping(max_norm=1.0)], max_steps=1)
    with pytest.raises(MisconfigurationException, match=r"Trainer\(gradient_clip_val=1.0\) would both clip"):
        trainer.fit(BoringModel())


class StepRecorder(Logger):
    """A logger that keeps every (step, metrics) it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int, dict]] = []

    name = "recorder"
    version = 0

    def log_metrics(self, metrics, step=None) -> None:
        self.records.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def test_grad_norm_monitor_logs_at_the_loggers_cadence(tmp_path):
    recorder = StepRecorder()
    trainer = quiet_trainer(
        tmp_path,
        logger=recorder,
        log_every_n_steps=2,
        max_steps=6,
        limit_val_batches=0,
        callbacks=[GradientNormMonitor()],
    )
    trainer.fit(BoringModel())
    steps = [step for step, metrics in recorder.records if "grad_2.0_norm_total" in metrics]
    # Lightning writes step metrics after steps 2, 4, 6 (step index 1, 3, 5): each computed value is written.
    assert steps == [1, 3, 5]
    last = [metrics for _, metrics in recorder.records if "grad_2.0_norm_total" in metrics][-1]
    per_layer = [last["grad_2.0_norm/layer.weight"], last["grad_2.0_norm/layer.bias"]]
    assert last["grad_2.0_norm_total"] == pytest.approx(math.hypot(*per_layer), rel=1e-5)


class LoggingNet(Net):
    """Records what a callback logs, as a LightningModule's ``log_dict`` would receive it."""

    def __init__(self) -> None:
        super().__init__([3.0], [4.0])
        self.logged: list[dict] = []

    def log_dict(self, values: dict, **kwargs) -> None:
        self.logged.append(values)


def test_grad_norm_monitor_off_computes_nothing():
    net = LoggingNet()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    trainer = ScriptedTrainer(net, optimizers=[optimizer])
    GradientNormMonitor(every_n_steps=0).on_before_optimizer_step(trainer, net, optimizer)
    trainer.global_step = 1  # the 2nd step: not a multiple of 3
    GradientNormMonitor(every_n_steps=3).on_before_optimizer_step(trainer, net, optimizer)
    assert net.logged == []
    trainer.global_step = 2  # the 3rd step logs: the same recorder sees it
    GradientNormMonitor(every_n_steps=3, per_layer=False).on_before_optimizer_step(trainer, net, optimizer)
    assert [{name: float(value) for name, value in logged.items()} for logged in net.logged] == [
        {"grad_2.0_norm_total": 5.0}
    ]


def test_agc_exclude_patterns_must_match_a_parameter(tmp_path):
    trainer = quiet_trainer(tmp_path, max_steps=1, callbacks=[GradientClipping(mode="agc", agc_exclude=["head.*"])])
    with pytest.raises(MisconfigurationException, match=r"\['head.\*'\] match no parameter of BoringModel"):
        trainer.fit(BoringModel())


class SeesGradientsBeforeClipping(BoringModel):
    """Keeps the global gradient norm its own ``on_before_optimizer_step`` sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[float] = []

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        self.seen.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())


def test_the_modules_hook_sees_the_gradients_before_clipping_as_lightning_documents(tmp_path):
    # Issue 15, finding 5: callback hooks run before the module's, so it saw clipped gradients.
    clipping = GradientClipping(mode="norm", max_norm=1e-3)
    model = SeesGradientsBeforeClipping()
    trainer = quiet_trainer(tmp_path, max_steps=3, callbacks=[clipping])
    trainer.fit(model)
    assert clipping.clipped_steps == 3 and all(norm > 1e-2 for norm in model.seen)
    assert trainer.callback_metrics["grad_clip/norm_before"].item() == pytest.approx(model.seen[-1], rel=1e-5)
    assert "on_before_optimizer_step" not in vars(model)  # unwrapped when fit ended


class TwoOptimizers(BoringModel):
    """Manual optimization with two optimizers on two layers, gradients of very different sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.other = nn.Linear(32, 2)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        first, second = self.optimizers()
        for optimizer, layer, scale in ((first, self.layer, 1.0), (second, self.other, 100.0)):
            optimizer.zero_grad()
            self.manual_backward(layer(batch).sum() * scale)
            optimizer.step()

    def configure_optimizers(self):
        return torch.optim.SGD(self.layer.parameters(), lr=0.1), torch.optim.SGD(self.other.parameters(), lr=0.1)


def test_each_optimizer_logs_under_its_own_keys(tmp_path):
    # Issue 15, finding 7: both logged grad_clip/norm_before, the second overwriting the first.
    clipping = GradientClipping(mode="norm", max_norm=1e9)
    trainer = quiet_trainer(tmp_path, max_steps=2, callbacks=[clipping, GradientNormMonitor(every_n_steps=1)])
    trainer.fit(TwoOptimizers())
    metrics = trainer.callback_metrics
    first, second = metrics["grad_clip/norm_before/optimizer_0"], metrics["grad_clip/norm_before/optimizer_1"]
    assert second > 10 * first and "grad_clip/norm_before" not in metrics
    assert {"grad_2.0_norm_total/optimizer_0", "grad_2.0_norm_total/optimizer_1"} <= set(metrics)
