"""A quiet console: no warning or tip that lit_nnopt's own defaults cause, short parser errors.

Each message silenced here is named with the reason it says nothing a user can act on. A
warning about the user's own choices (their data, their config) still shows.
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any, NoReturn

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.cli import LightningArgumentParser
from typing_extensions import override

from lit_nnopt.app.errors import explain_parser_error

# `rank_zero_info` logs through whichever of these Lightning imported last: the separately
# installed `pytorch_lightning`, where lit_nnopt's callbacks import it too, has its own.
_RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
)
# (logger name, text in the message): Lightning's info lines that lit_nnopt makes moot.
_SILENCED_LOG_LINES = (
    # An advertisement for another product, on every command.
    *((name, "💡 Tip") for name in _RANK_ZERO_LOGGERS),
    # lit_nnopt adds a RichModelSummary itself; Lightning says so on every command.
    *((name, "Trainer already configured with model summary") for name in _RANK_ZERO_LOGGERS),
    # EarlyStopping's farewell when fit failed before its first check (a data error): nothing to report.
    *((name, "EarlyStopping: fit was interrupted; no check yet") for name in _RANK_ZERO_LOGGERS),
    # InterruptCheckpoint hands Ctrl-C to Lightning's SIGTERM flag, and says what happened itself.
    ("lightning.pytorch.trainer.connectors.signal_connector", "Received SIGTERM"),
)
# Regular expressions matching the start of the warnings that lit_nnopt's defaults cause.
_SILENCED_WARNINGS = (
    # Lightning 2.6's own use of a torch API deprecated in torch 2.14; nothing for a user to change.
    r".*`isinstance\(treespec, LeafSpec\)` is deprecated",
    # Epoch metrics reach the loggers at each epoch's end whatever the interval; a run of fewer
    # steps per epoch than log_every_n_steps (50) loses only the per-step curve of train_loss_step.
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    # An evaluation of a checkpoint from another folder: its ModelCheckpoint state is not used.
    r"The dirpath has changed from",
)


class _DropLines(logging.Filter):
    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    @override
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(start in message[:200] for start in self.starts)


def quiet_known_noise() -> None:
    """Silence the warnings and info lines listed above, once per process."""
    for pattern in _SILENCED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    by_logger: dict[str, list[str]] = {}
    for name, start in _SILENCED_LOG_LINES:
        by_logger.setdefault(name, []).append(start)
    for name, starts in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(existing, _DropLines) for existing in logger.filters):
            logger.addFilter(_DropLines(tuple(starts)))


class LineKeepingHelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help, with the description and epilog printed line for line, not refilled."""

    @override
    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


class ConciseArgumentParser(LightningArgumentParser):
    """A LightningArgumentParser whose errors are the reason, a "did you mean" and a ``--help`` hint.

    jsonargparse prints the full usage (78 lines for ``fit``) before a one-line error such as
    an unknown key, which scrolls the error out of sight; for a class path it cannot import it
    lists every type of a union it tried, with the reason last. Here the reason comes first,
    with the nearest valid option or class (difflib). Long options must be spelled out: argparse's
    prefix matching would take ``--trainer.max_epoch`` for ``--trainer.max_epochs``, while the
    same typo in a YAML file is refused.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    @override
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        reason = explain_parser_error(message, parser)
        sys.stderr.write(f"lit_nnopt: error: {reason}\nSee `{prog} --help` for the options.\n")
        sys.exit(2)
