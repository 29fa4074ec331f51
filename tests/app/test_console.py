"""The console stays quiet about what lit_nnopt's own defaults cause, and loud about the rest."""

from __future__ import annotations

import logging
import warnings

import pytest

from lit_nnopt.app.console import quiet_known_noise

SIGNAL_LOGGER = "lightning.pytorch.trainer.connectors.signal_connector"
RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"


@pytest.fixture
def quiet(monkeypatch):
    monkeypatch.setattr(warnings, "filters", list(warnings.filters))  # filterwarnings edits this list
    for name in (SIGNAL_LOGGER, RANK_ZERO_LOGGER):
        monkeypatch.setattr(logging.getLogger(name), "filters", [])
    quiet_known_noise()


@pytest.mark.parametrize(
    "logger, message",
    [
        (SIGNAL_LOGGER, "[rank: 0] Received SIGTERM: 15"),
        (RANK_ZERO_LOGGER, "💡 Tip: For seamless cloud logging and experiment tracking, try installing litlogger"),
        (RANK_ZERO_LOGGER, "Trainer already configured with model summary callbacks: [RichModelSummary]."),
        (RANK_ZERO_LOGGER, "EarlyStopping: fit was interrupted; no check yet"),
    ],
)
def test_lightning_lines_our_defaults_cause_are_dropped(quiet, caplog, logger, message):
    with caplog.at_level(logging.INFO):
        logging.getLogger(logger).info(message)
    assert caplog.records == []


def test_other_lines_still_show(quiet, caplog):
    with caplog.at_level(logging.INFO):
        logging.getLogger(RANK_ZERO_LOGGER).info("EarlyStopping: fit was interrupted; best val_acc 0.9 at epoch 2")
        logging.getLogger(SIGNAL_LOGGER).info("Requeued SLURM job: 12")
    assert len(caplog.records) == 2


@pytest.mark.parametrize(
    "message",
    [
        "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and treespec.is_leaf()`",
        "The number of training batches (47) is smaller than the logging interval Trainer(log_every_n_steps=50).",
        "The dirpath has changed from 'runs/a/checkpoints' to 'runs/b/checkpoints', therefore ...",
    ],
)
def test_warnings_our_defaults_cause_are_dropped_and_others_are_not(quiet, message):
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn(message, UserWarning, stacklevel=1)
        warnings.warn("Your own warning", UserWarning, stacklevel=1)
    assert [str(warning.message) for warning in caught] == ["Your own warning"]
