"""Checkpoints are read as every supported torch reads them, the floor's included."""

from pathlib import Path

import torch

from lit_nnopt import MNISTClassifier
from lit_nnopt.app.checks import check_checkpoint


def test_a_good_checkpoint_is_not_reported_damaged_where_mmap_needs_a_file_name(
    tmp_path: Path, torch_load_that_maps_only_file_names
):
    model = MNISTClassifier()
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    check_checkpoint(str(path), MNISTClassifier(), fitting=False)
