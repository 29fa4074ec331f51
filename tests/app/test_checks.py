"""The checks of a checkpoint before a run: what is not one, a damaged one, another network or optimizer;
read as every supported torch reads them, the floor's included.
"""

from pathlib import Path

import pytest
import torch

from lit_nnopt import MLP, MNISTClassifier
from lit_nnopt.app.checks import CheckpointError, check_checkpoint


def test_a_good_checkpoint_is_not_reported_damaged_where_mmap_needs_a_file_name(
    tmp_path: Path, torch_load_that_maps_only_file_names
):
    model = MNISTClassifier()
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    check_checkpoint(str(path), MNISTClassifier(), fitting=False)


def _checkpoint_of(model: MNISTClassifier, path: Path) -> Path:
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


def _not_a_checkpoint(path: Path, kind: str) -> Path:
    if kind == "folder":
        path.mkdir()
    elif kind == "yaml":
        path.write_text("trainer:\n  max_epochs: 3\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "no-state-dict":
        torch.save({"weights": torch.ones(2)}, path)
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "does not exist"),
        ("folder", "is a folder"),
        ("yaml", "not written by torch.save"),
        ("empty", "not written by torch.save"),
        ("no-state-dict", "holds no `state_dict`"),
    ],
)
def test_a_path_that_is_not_a_checkpoint_is_refused(tmp_path, kind, message):
    path = _not_a_checkpoint(tmp_path / "model.ckpt", kind)
    with pytest.raises(CheckpointError, match=message):
        check_checkpoint(str(path), MNISTClassifier(), fitting=False)


def test_a_truncated_checkpoint_is_refused(tmp_path):
    path = _checkpoint_of(MNISTClassifier(), tmp_path / "whole.ckpt")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        check_checkpoint(str(truncated), MNISTClassifier(), fitting=False)


def test_a_checkpoint_of_another_network_names_the_difference(tmp_path):
    path = _checkpoint_of(MNISTClassifier(net=MLP(hidden_sizes=[16])), tmp_path / "small.ckpt")
    with pytest.raises(CheckpointError) as error:
        check_checkpoint(str(path), MNISTClassifier(net=MLP(hidden_sizes=[32])), fitting=False)
    message = str(error.value)
    assert "net.layers.1.weight is (16, 784) in the checkpoint, (32, 784) in the model" in message
    assert "lit_nnopt.networks.MLP(hidden_sizes=[16]" in message and "config.yaml" in message


def test_another_optimizer_is_refused_for_fit_only(tmp_path):
    adam = MNISTClassifier(optimizer={"class_path": "torch.optim.Adam", "init_args": {"lr": 0.001}})
    sgd = MNISTClassifier(optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}})
    sgd.load_state_dict(adam.state_dict())
    path = _checkpoint_of(adam, tmp_path / "adam.ckpt")
    check_checkpoint(str(path), sgd, fitting=False)  # evaluating needs the weights only
    with pytest.raises(CheckpointError, match="optimizer is torch.optim.Adam, this config's is torch.optim.SGD"):
        check_checkpoint(str(path), sgd, fitting=True)
