"""Conventions every callback keeps (issue 15, finding 8 and the goals): one logger, rank 0 only.

``@override`` on every overriding method is checked package-wide, in ``tests/library/test_overrides.py``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from unittest import mock

import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

import lit_nnopt.callbacks as callbacks
from lit_nnopt.callbacks import EarlyStopping, ReduceLROnPlateau
from tests.helpers.callbacks import ScriptedTrainer, capture_logs


def test_the_callbacks_write_nothing_but_through_their_module_logger():
    # Events of training go to the module's logger; a mistake in the configuration is a Python
    # warning (rank_zero_warn), as in Lightning.
    folder = Path(callbacks.__file__).parent
    for path in folder.glob("*.py"):
        source = "\n".join(line for line in path.read_text().splitlines() if not re.match(r"\s*(>>>|\.\.\.) ", line))
        assert not re.search(r"sys\.std(err|out)|\bprint\(|Console\(|rank_zero_info\(", source), path.name
        if re.search(r"\blog\.(info|warning|debug)\(", source):
            assert "log = logging.getLogger(__name__)" in source, path.name


def test_early_stopping_logs_from_rank_zero_only_by_default(monkeypatch, caplog):
    logs = capture_logs(monkeypatch, caplog)
    stopper = EarlyStopping("val_loss")
    for rank in (0, 1):
        stopper._log_info(mock.Mock(global_rank=rank, world_size=2), "bar", stopper.log_rank_zero_only)
    assert [(r.name, r.getMessage()) for r in logs.records] == [("lit_nnopt.callbacks.early_stopping", "[rank: 0] bar")]


def test_plateau_logs_nothing_on_other_ranks(monkeypatch, caplog):
    logs = capture_logs(monkeypatch, caplog)
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    plateau, trainer = ReduceLROnPlateau(patience=0, verbose=True), ScriptedTrainer(optimizers=[optimizer])
    trainer.callback_metrics = {"val_loss": torch.tensor(1.0)}
    plateau.on_validation_end(trainer, None)
    plateau.on_validation_end(trainer, None)
    assert plateau.reductions and not [r for r in logs.records if r.levelno >= logging.INFO]
