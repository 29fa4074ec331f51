"""The epoch metrics: their values, and torchmetrics' bookkeeping kept by the cheaper update."""

import copy
import pickle

import pytest
import torch

from lit_nnopt.metrics import Accuracy, BatchMetric, MeanLoss


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (torch.randn(n, 10, generator=generator), torch.randint(0, 10, (n,), generator=generator)) for n in (64, 64, 17)
    ]


def test_accuracy_is_the_fraction_of_samples_whose_largest_logit_is_the_label():
    accuracy = Accuracy()
    for logits, labels in _batches():
        accuracy.update(logits, labels)
    logits, labels = (torch.cat(parts) for parts in zip(*_batches(), strict=True))
    assert accuracy.compute().item() == pytest.approx((logits.argmax(1) == labels).float().mean().item())


def test_mean_loss_weights_each_batch_by_its_samples():
    mean = MeanLoss()
    losses = [(torch.tensor(1.0), 64), (torch.tensor(4.0), 16)]
    for loss, count in losses:
        mean.update(loss, count)
    assert mean.compute().item() == pytest.approx((1.0 * 64 + 4.0 * 16) / 80)


@pytest.mark.parametrize("metric", [Accuracy(), MeanLoss()], ids=["Accuracy", "MeanLoss"])
def test_update_counts_and_clears_the_cached_result_as_torchmetrics_does(metric: BatchMetric):
    args = (torch.eye(3), torch.tensor([0, 1, 1])) if isinstance(metric, Accuracy) else (torch.tensor(2.0), 3)
    assert metric.update_count == 0
    metric.update(*args)
    first = metric.compute()
    assert metric.update_count == 1 and torch.equal(metric._computed, first)
    metric.update(*args)
    assert metric.update_count == 2 and metric._computed is None
    metric.reset()
    assert metric.update_count == 0


def test_the_cheaper_update_is_the_one_torchmetrics_installs():
    # torchmetrics wraps `update` in its private `_wrap_update`; if it stops doing so, the
    # counting above is no longer ours and this test says where to look.
    assert Accuracy().update.__code__.co_name == "counted_update"


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
    metric = Accuracy()
    metric.update(logits * 2, torch.tensor([0, 1, 2, 3]))
    assert not metric.correct.requires_grad and metric.correct.grad_fn is None
