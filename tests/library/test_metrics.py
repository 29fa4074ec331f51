"""The epoch metrics: their values against NumPy, and torchmetrics' own bookkeeping, untouched."""

import copy
import math
import pickle

import numpy as np
import pytest
import torch

from lit_nnopt.metrics import Accuracy, MeanLoss


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (torch.randn(n, 10, generator=generator), torch.randint(0, 10, (n,), generator=generator)) for n in (64, 64, 17)
    ]


def test_accuracy_is_the_fraction_of_samples_whose_largest_logit_is_the_label():
    accuracy = Accuracy()
    for logits, labels in _batches():
        accuracy.update(logits, labels)
    logits, labels = (np.concatenate([part.numpy() for part in parts]) for parts in zip(*_batches(), strict=True))
    assert accuracy.compute().item() == pytest.approx(np.mean(np.argmax(logits, axis=1) == labels))


def test_mean_loss_weights_each_batch_by_its_samples():
    mean, losses, counts = MeanLoss(), np.array([1.0, 4.0, 2.5]), np.array([64, 16, 7])
    for loss, count in zip(losses, counts, strict=True):
        mean.update(torch.tensor(loss, dtype=torch.float32), int(count))
    assert mean.compute().item() == pytest.approx(np.average(losses, weights=counts))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_batch_loss_makes_the_epochs_loss_non_finite(bad):
    # torchmetrics' MeanMetric drops NaN values by default: a diverged epoch would look finite.
    mean = MeanLoss()
    mean.update(torch.tensor(1.0), 64)
    mean.update(torch.tensor(bad), 64)
    assert not math.isfinite(mean.compute().item())


@pytest.mark.parametrize(
    ("metric", "first", "second"),
    [
        (Accuracy(), (torch.eye(3), torch.tensor([0, 1, 1])), (torch.eye(3), torch.tensor([0, 0, 0]))),
        (MeanLoss(), (torch.tensor(2.0), 3), (torch.tensor(5.0), 3)),
    ],
    ids=["Accuracy", "MeanLoss"],
)
def test_torchmetrics_counts_updates_and_recomputes_after_one(metric, first, second):
    assert metric.update_count == 0
    metric.update(*first)
    before = metric.compute()
    metric.update(*second)
    assert metric.update_count == 2 and not torch.equal(metric.compute(), before)
    metric.reset()
    assert metric.update_count == 0


def test_update_is_torchmetrics_own_wrapper():
    # No private override: torchmetrics' wrapper (counting, cache reset, device checks) runs.
    overrides = [
        f"{klass.__name__}._wrap_update"
        for metric in (Accuracy, MeanLoss)
        for klass in metric.__mro__
        if klass.__module__.startswith("lit_nnopt") and "_wrap_update" in vars(klass)
    ]
    assert not overrides


@pytest.mark.parametrize(
    "duplicate", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))], ids=["deepcopy", "pickle"]
)
def test_a_copy_counts_its_own_updates(duplicate):
    original = Accuracy()
    original.update(torch.eye(3), torch.tensor([0, 1, 1]))
    clone = duplicate(original)
    clone.update(torch.eye(3), torch.tensor([0, 1, 2]))
    assert (original.update_count, clone.update_count) == (1, 2)
    assert clone.compute().item() == pytest.approx(5 / 6)
    assert original.compute().item() == pytest.approx(2 / 3)


def test_update_leaves_the_graph_of_its_inputs_alone():
    logits = torch.randn(4, 10, requires_grad=True)
    loss = (logits**2).mean()
    accuracy, mean = Accuracy(), MeanLoss()
    accuracy.update(logits * 2, torch.tensor([0, 1, 2, 3]))
    mean.update(loss, 4)
    assert all(not state.requires_grad for state in (accuracy.correct, mean.loss_sum))
    loss.backward()  # the graph is still whole
    assert logits.grad is not None
