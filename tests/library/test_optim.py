"""lit_nnopt.optim against its formulas, and the L2 / weight-decay equivalences the README states."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.cli import instantiate_class

from lit_nnopt.app.cli import LitNNOptCLI
from lit_nnopt.networks import MLP
from lit_nnopt.optim import ExponentialDecay, KerasSGD, WarmupCosineDecay
from tests.helpers import CONFIGS


def _optimizer(*lrs: float, momentum: float = 0.0) -> torch.optim.SGD:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, momentum=momentum)


def _lrs_over(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[list[float]]:
    """The learning rates in force at each of ``steps`` optimizer steps."""
    seen = []
    for _ in range(steps):
        seen.append([group["lr"] for group in scheduler.optimizer.param_groups])
        scheduler.optimizer.step()
        scheduler.step()
    return seen


# -- ExponentialDecay --------------------------------------------------------------------


@pytest.mark.parametrize("staircase", [False, True])
def test_exponential_decay_follows_keras_formula(staircase: bool) -> None:
    scheduler = ExponentialDecay(_optimizer(0.1, 0.02), decay_steps=4, decay_rate=0.5, staircase=staircase)
    for step, lrs in enumerate(_lrs_over(scheduler, 13)):
        exponent = math.floor(step / 4) if staircase else step / 4
        assert lrs == pytest.approx([0.1 * 0.5**exponent, 0.02 * 0.5**exponent], rel=1e-12)


def test_exponential_decay_tutorial_values_after_twenty_epochs() -> None:
    # ExponentialDecay(0.001, 10000, 0.9) after 20 epochs of 750 steps: barely a decay.
    scheduler = ExponentialDecay(_optimizer(0.001), decay_steps=10000, decay_rate=0.9)
    _lrs_over(scheduler, 15000)
    assert scheduler.get_last_lr()[0] == pytest.approx(0.001 * 0.9**1.5, rel=1e-12)


def test_exponential_decay_resumes_from_its_state_dict() -> None:
    first = ExponentialDecay(_optimizer(0.1), decay_steps=3, decay_rate=0.7)
    _lrs_over(first, 5)
    optimizer = _optimizer(0.1)
    resumed = ExponentialDecay(optimizer, decay_steps=3, decay_rate=0.7)
    optimizer.load_state_dict(first.optimizer.state_dict())  # as Lightning resumes: optimizer, then scheduler
    resumed.load_state_dict(first.state_dict())
    assert _lrs_over(resumed, 4) == _lrs_over(first, 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"decay_steps": 0, "decay_rate": 0.9}, "decay_steps"), ({"decay_steps": 10, "decay_rate": 0.0}, "decay_rate")],
)
def test_exponential_decay_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ExponentialDecay(_optimizer(0.1), **kwargs)


# -- WarmupCosineDecay -------------------------------------------------------------------


def test_warmup_cosine_follows_its_formula() -> None:
    scheduler = WarmupCosineDecay(_optimizer(1.0), warmup_steps=4, total_steps=12, min_lr=0.1, warmup_start_factor=0.2)
    lrs = [group[0] for group in _lrs_over(scheduler, 15)]
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])  # linear from 0.2 * lr to lr
    assert lrs[8] == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert lrs[6] == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2)
    assert lrs[12:] == pytest.approx([0.1, 0.1, 0.1])  # the floor, and it stays there


def test_warmup_cosine_without_warmup_starts_at_the_peak() -> None:
    scheduler = WarmupCosineDecay(_optimizer(0.5), warmup_steps=0, total_steps=10)
    lrs = [group[0] for group in _lrs_over(scheduler, 11)]
    assert lrs[0] == pytest.approx(0.5)
    assert lrs[10] == pytest.approx(0.0)
    assert all(later < earlier for earlier, later in itertools.pairwise(lrs))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"warmup_steps": -1, "total_steps": 10}, "warmup_steps"),
        ({"warmup_steps": 10, "total_steps": 10}, "total_steps"),
        ({"warmup_steps": 1, "total_steps": 10, "warmup_start_factor": 1.5}, "warmup_start_factor"),
        ({"warmup_steps": 1, "total_steps": 10, "min_lr": 0.2}, "min_lr"),
    ],
)
def test_warmup_cosine_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WarmupCosineDecay(_optimizer(0.1), **kwargs)


# -- KerasSGD ------------------------------------------------------------------------------


def _trajectory(make_optimizer, lrs: list[float], seed: int = 0) -> list[torch.Tensor]:
    """Train a small linear model with the same data and lr sequence; its weights after each step."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(5, 3)
    inputs, targets = torch.randn(32, 5), torch.randn(32, 3)
    optimizer = make_optimizer(model.parameters())
    weights = []
    for lr in lrs:
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer.step()
        weights.append(model.weight.detach().clone())
    return weights


@pytest.mark.parametrize("nesterov", [False, True])
def test_keras_sgd_equals_torch_sgd_while_lr_is_constant(nesterov: bool) -> None:
    lrs = [0.05] * 20
    keras = _trajectory(lambda p: KerasSGD(p, lr=0.05, momentum=0.9, nesterov=nesterov), lrs)
    torch_sgd = _trajectory(lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=nesterov), lrs)
    for ours, theirs in zip(keras, torch_sgd, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_keras_sgd_differs_from_torch_sgd_once_lr_changes() -> None:
    lrs = [0.05] * 10 + [0.005] * 10
    keras = _trajectory(lambda p: KerasSGD(p, lr=0.05, momentum=0.9), lrs)
    torch_sgd = _trajectory(lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), lrs)
    torch.testing.assert_close(keras[9], torch_sgd[9], rtol=1e-5, atol=1e-6)
    assert (keras[10] - torch_sgd[10]).abs().max() > 1e-3


def _scalar_steps(optimizer_class, lrs: list[float], grads: list[float], **kwargs) -> float:
    weight = torch.nn.Parameter(torch.tensor([1.0]))
    optimizer = optimizer_class([weight], lr=lrs[0], **kwargs)
    for lr, grad in zip(lrs, grads, strict=True):
        optimizer.param_groups[0]["lr"] = lr
        weight.grad = torch.tensor([grad])
        optimizer.step()
    return weight.item()


def test_momentum_formulas_by_hand_with_a_changing_lr() -> None:
    lrs, grads, m = [0.1, 0.01], [2.0, -1.0], 0.9
    velocity = -lrs[0] * grads[0]  # Keras: velocity = m * velocity - lr * g; w = w + velocity
    keras_weight = 1.0 + velocity
    velocity = m * velocity - lrs[1] * grads[1]
    keras_weight += velocity
    buffer = grads[0]  # PyTorch: buf = m * buf + g; w = w - lr * buf
    torch_weight = 1.0 - lrs[0] * buffer
    buffer = m * buffer + grads[1]
    torch_weight -= lrs[1] * buffer
    assert _scalar_steps(KerasSGD, lrs, grads, momentum=m) == pytest.approx(keras_weight)
    assert _scalar_steps(torch.optim.SGD, lrs, grads, momentum=m) == pytest.approx(torch_weight)
    assert keras_weight != pytest.approx(torch_weight)


def test_keras_sgd_nesterov_and_weight_decay_by_hand() -> None:
    lr, m, wd = 0.1, 0.9, 0.5
    # Nesterov, two steps: w = w + m * velocity - lr * g.
    velocity, weight = -lr * 2.0, 1.0
    weight += m * velocity - lr * 2.0
    velocity = m * velocity - lr * 3.0
    weight += m * velocity - lr * 3.0
    assert _scalar_steps(KerasSGD, [lr, lr], [2.0, 3.0], momentum=m, nesterov=True) == pytest.approx(weight)
    # Decoupled decay without momentum: w = w - lr * wd * w - lr * g.
    assert _scalar_steps(KerasSGD, [lr], [2.0], weight_decay=wd) == pytest.approx(1.0 - lr * wd - lr * 2.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"nesterov": True}, "nesterov"),
        ({"weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_keras_sgd_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KerasSGD([torch.nn.Parameter(torch.zeros(1))], **kwargs)


# -- L2 in the loss versus weight decay -----------------------------------------------------


def _train_mlp(l2: float, make_optimizer, steps: int = 5) -> torch.Tensor:
    torch.manual_seed(0)
    net = MLP(hidden_sizes=[16], l2=l2)
    inputs, labels = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    hidden = net.layers[1].weight
    others = [param for param in net.parameters() if param is not hidden]
    optimizer = make_optimizer([{"params": [hidden]}, {"params": others, "weight_decay": 0.0}])
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(inputs), labels) + net.regularization_loss()
        loss.backward()
        optimizer.step()
    return torch.cat([param.detach().flatten() for param in net.parameters()])


def test_keras_l2_is_sgd_weight_decay_of_twice_lambda() -> None:
    lam = 0.01
    with_l2 = _train_mlp(lam, lambda groups: torch.optim.SGD(groups, lr=0.1))
    with_decay = _train_mlp(0.0, lambda groups: torch.optim.SGD(groups, lr=0.1, weight_decay=2 * lam))
    torch.testing.assert_close(with_l2, with_decay, rtol=1e-5, atol=1e-7)


def test_under_adam_l2_is_coupled_decay_not_adamw() -> None:
    lam = 0.01
    with_l2 = _train_mlp(lam, lambda groups: torch.optim.Adam(groups, lr=0.01))
    coupled = _train_mlp(0.0, lambda groups: torch.optim.Adam(groups, lr=0.01, weight_decay=2 * lam))
    decoupled = _train_mlp(0.0, lambda groups: torch.optim.AdamW(groups, lr=0.01, weight_decay=2 * lam))
    torch.testing.assert_close(with_l2, coupled, rtol=1e-4, atol=1e-6)
    assert (with_l2 - decoupled).abs().max() > 1e-3


# -- schedulers stepped per optimizer step from YAML ---------------------------------------


def _reference_lr(config: Path, steps: int, frequency: int) -> float:
    """The lr after ``steps`` optimizer steps of the config's optimizer and scheduler, outside Lightning."""
    spec = yaml.safe_load(config.read_text())
    optimizer = instantiate_class([torch.nn.Parameter(torch.zeros(1))], spec["optimizer"])
    scheduler = instantiate_class(optimizer, spec["lr_scheduler"])
    for step in range(1, steps + 1):
        optimizer.step()
        if step % frequency == 0:
            scheduler.step()
    return optimizer.param_groups[0]["lr"]


@pytest.mark.parametrize("name", ["exponential_decay", "warmup_cosine", "onecycle"])
@pytest.mark.parametrize("frequency", [1, 4])
def test_yaml_schedulers_step_per_optimizer_step(
    name: str, frequency: int, mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lit_nnopt"])  # LightningCLI warns when args and pytest's argv both exist
    config = CONFIGS / f"{name}.yaml"
    steps = 12
    cli = LitNNOptCLI(
        args=[
            "fit",
            "--config",
            str(config),
            "--data.data_dir",
            str(mnist_dir),
            "--model.lr_scheduler_frequency",
            str(frequency),
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            str(steps),
            "--trainer.limit_val_batches",
            "1",
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
        ]
    )
    # Per epoch (Lightning's default) the scheduler would have stepped once at most.
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(
        _reference_lr(config, steps, frequency), rel=1e-9
    )
    assert cli.trainer.lr_scheduler_configs[0].interval == "step"
