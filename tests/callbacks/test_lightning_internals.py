"""The quarantine of Lightning's private names: used on the versions they were verified on, left alone elsewhere."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
from lightning.pytorch.loggers import WandbLogger

from lit_nnopt import _lightning_internals


@pytest.mark.parametrize("version, verified", [("2.4.0", True), ("2.5.6", True), ("2.6.6", True), ("2.7.0", False)])
def test_the_w_and_b_helpers_touch_wandb_logger_only_where_verified(monkeypatch, tmp_path, version, verified):
    monkeypatch.setattr(pl, "__version__", version)
    logger = WandbLogger(save_dir=tmp_path, offline=True)
    finished_run = object()
    logger._experiment = finished_run
    assert "anonymous" in logger._wandb_init, "what WandbLogger hands to wandb.init, whatever it is asked"
    _lightning_internals.drop_wandb_anonymous_setting(logger)
    _lightning_internals.forget_wandb_run(logger)
    assert ("anonymous" not in logger._wandb_init) == verified
    assert (logger._experiment is None) == verified
    assert verified or logger._experiment is finished_run
