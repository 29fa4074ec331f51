"""The benchmark's reference: the tutorial's recipe as an expert writes it in plain PyTorch, without a framework.

``run_reference`` is the ``reference`` row of ``python -m lit_nnopt bench``: ``configs/adam.yaml``'s
work written by hand. ``load_split`` and ``train_by_hand`` serve ``benchmarks/gpu.py`` too, for
its hand-written loop of ``configs/cnn.yaml``. Nothing here imports Lightning.
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: `bench --help` starts at once
    import torch

MNIST_TRAIN_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")


@dataclass
class Split:
    """The tutorial's 48,000 / 12,000 split of MNIST's training file, as float tensors on one device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor


def load_split(data_dir: str, device: torch.device, seed: int = 42, standardize: bool = True) -> Split:
    """The training file split 48,000 / 12,000 by a seeded permutation, as float, placed on ``device`` once.

    Pixels are scaled to [0, 1], then, with ``standardize``, standardized as ``data.standardize:
    true`` does: zero mean, unit variance over the training part.
    """
    import torch

    from lit_nnopt.idx import parse_idx, read_bytes

    raw = Path(data_dir) / "MNIST" / "raw"
    images = parse_idx(read_bytes(raw / MNIST_TRAIN_FILES[0])).unsqueeze(1).to(device).float().div_(255)
    labels = parse_idx(read_bytes(raw / MNIST_TRAIN_FILES[1])).to(device).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).to(device)
    val, train = order[:12000], order[12000:]
    if standardize:
        images = (images - images[train].mean()) / images[train].std()
    return Split(images[train], labels[train], images[val], labels[val])


def train_by_hand(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    split: Split,
    epochs: int,
    batch_size: int,
    epoch_scheduler: Any = None,
    step_scheduler: Any = None,
    limit_batches: int | None = None,
    limit_val_batches: int | None = None,
) -> tuple[list[float], float]:
    """An expert's loop on tensors already on the device: seconds per epoch (validation included), last val_acc.

    It does the work lit_nnopt's ``MNISTClassifier`` does: per epoch, the mean training loss and
    accuracy, accumulated on the device batch by batch, and the validation loss and accuracy, in
    batches of 1,000 (lit_nnopt's ``eval_batch_size``). Batches are ``index_select`` rows of the
    split, drawn on its device; the loop syncs with the host once per epoch, and the clock is read
    only after ``torch.cuda.synchronize()`` on a GPU.
    """
    import torch
    from torch.nn import functional as F

    device = split.train_x.device
    _synchronize(device)
    stamps = [time.perf_counter()]
    accuracy = 0.0
    for _ in range(epochs):
        net.train()
        train_loss, train_correct = torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device)
        trained = 0
        for index in torch.randperm(len(split.train_y), device=device).split(batch_size)[:limit_batches]:
            x, y = split.train_x.index_select(0, index), split.train_y.index_select(0, index)
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step_scheduler is not None:
                step_scheduler.step()
            train_loss += loss.detach() * len(y)
            train_correct += (logits.detach().argmax(1) == y).sum()
            trained += len(y)
        if epoch_scheduler is not None:
            epoch_scheduler.step()
        net.eval()
        with torch.no_grad():
            batches = list(zip(split.val_x.split(1000), split.val_y.split(1000), strict=True))[:limit_val_batches]
            val_loss, val_correct = torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device)
            for x, y in batches:
                logits = net(x)
                val_loss += F.cross_entropy(logits, y, reduction="sum")
                val_correct += (logits.argmax(1) == y).sum()
        validated = sum(len(y) for _, y in batches)
        accuracy = val_correct.item() / validated
        print(
            f"train_loss {train_loss.item() / trained:.4f} train_acc {train_correct.item() / trained:.4f} "
            f"val_loss {val_loss.item() / validated:.4f} val_acc {accuracy:.4f}",
            file=sys.stderr,
        )
        _synchronize(device)
        stamps.append(time.perf_counter())
    return [b - a for a, b in itertools.pairwise(stamps)], accuracy


def _synchronize(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def torch_device(accelerator: str) -> torch.device:
    """``cpu`` or ``gpu`` (the current CUDA device) as a torch device."""
    import torch

    return torch.device("cuda" if accelerator == "gpu" else "cpu")


def run_reference(
    data_dir: str, epochs: int, accelerator: str = "cpu", limit_batches: int | None = None
) -> list[float]:
    """A minimal hand-written loop of ``configs/adam.yaml``'s recipe: what an expert writes without a framework.

    The same work as lit_nnopt's run: the MLP with Keras' initialisation, fused Adam (lit_nnopt
    asks for ``fused=True`` by default) at lr 0.002, decayed by 0.85 per epoch, standardized
    inputs, batch 64. The split is placed on the device as float once, before training. It
    imports neither Lightning nor lit_nnopt's Lightning parts: only the IDX reader, the MLP and
    the thread rule the CLI follows (fewer torch threads on a busy machine), so both sides
    run with the same threads.
    """
    import torch

    from lit_nnopt.app.environment import fit_threads_to_free_cpus
    from lit_nnopt.networks import MLP

    fit_threads_to_free_cpus()
    device = torch_device(accelerator)
    torch.manual_seed(0)
    split = load_split(data_dir, device)
    net = MLP([128], dropout=0.2, init="keras").to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.002, fused=True)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.85)
    epoch_seconds, _ = train_by_hand(net, optimizer, split, epochs, 64, scheduler, limit_batches=limit_batches)
    return epoch_seconds
