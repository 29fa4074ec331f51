"""A quiet console: no warning or tip that lit_nnopt's own defaults cause, short parser errors.

Each message silenced here is named with the reason it says nothing a user can act on. A
warning about the user's own choices (their data, their config) still shows.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import re
import sys
import warnings
from typing import Any, NoReturn

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.cli import LightningArgumentParser

# `rank_zero_info` logs through whichever of these Lightning imported last.
_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
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

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"lit_nnopt: error: {explain(message, parser)}\nSee `{prog} --help` for the options.\n")
        sys.exit(2)


def explain(message: str, parser: Any = None) -> str:
    """A jsonargparse error as its reason and the nearest valid name; other messages shortened."""
    for rewrite in (_unknown_option, _class_path_error, _line_without_colon):
        better = rewrite(message, parser)
        if better:
            return better
    return _shorten(message)


def _unknown_option(message: str, parser: Any) -> str | None:
    match = re.search(r"unrecognized arguments: (--[\w.-]+)|does not accept option '([\w.-]+)'", message)
    if match is None or parser is None:
        return None
    given = match.group(1) or f"--{match.group(2)}"
    options = set(re.findall(r"(--[\w.-]+)", parser.format_help()))
    close = difflib.get_close_matches(given, sorted(options), n=1, cutoff=0.75)
    first = message.strip().splitlines()[0]
    if not close:
        return first
    key = close[0] if match.group(1) else close[0].removeprefix("--")
    return f"{first}. Did you mean {key}?"


def _class_path_error(message: str, parser: Any) -> str | None:
    match = re.search(r'Parser key "([\w.]+)":\s*\n\s*- Expected a path but (\S+) either not accessible', message)
    if match is None:
        return None
    key, value = match.groups()
    reasons = re.findall(r"Problem with given class_path '[^']+':\s*\n\s*([^\n]+)", message)
    reason = reasons[0].strip() if reasons else "it is not an importable dotted path (module.Class)"
    subtypes = re.findall(r"<class '([\w.]+)'>", message.split("Subtypes:", 1)[-1].split("\n", 1)[0])
    suggestion = _nearest_class(value, subtypes)
    hint = f" Did you mean {suggestion}?" if suggestion else ""
    return f"`--{key} {value}`: {reason}.{hint}"


def _nearest_class(value: str, subtypes: list[str]) -> str | None:
    """The importable dotted path nearest to ``value``: a misspelt part replaced by its closest name."""
    parts = value.split(".")
    if len(parts) == 1:  # a bare name: look where the expected base classes live
        modules = {subtype.rsplit(".", 2)[0] for subtype in subtypes if subtype.count(".") >= 2}
        candidates = [f"{module}.{name}" for module in sorted(modules) for name in _public_names(module)]
        close = difflib.get_close_matches(value, [c.rsplit(".", 1)[1] for c in candidates], n=1)
        return next((c for c in candidates if close and c.endswith(f".{close[0]}")), None)
    for index in range(1, len(parts)):
        module = ".".join(parts[:index])
        names = _public_names(module)
        if parts[index] in names:
            continue
        close = difflib.get_close_matches(parts[index], names, n=1)
        return ".".join([*parts[:index], close[0], *parts[index + 1 :]]) if close else None
    return None


def _public_names(module: str) -> list[str]:
    try:
        imported = importlib.import_module(module)
    except Exception:  # ImportError, or anything a module raises on import: nothing to suggest from there
        return []
    return [name for name in dir(imported) if not name.startswith("_")]


def _line_without_colon(message: str, parser: Any) -> str | None:
    match = re.search(r'Parser key "([\w.]+)":\s*\n\s*Unable to load config [\'"](.+?)[\'"]\s*$', message, re.M)
    if match is None:
        return None
    key, text = match.groups()
    first, _, rest = text.partition(" ")
    fix = f" (`{first}: {rest}`)" if rest and re.fullmatch(r"[\w.-]+", first) else ""
    return (
        f"`{key}` in the config is the text {text!r}, not a section of keys: a YAML line needs a colon and a "
        f"space after its key{fix}."
    )


def _shorten(message: str, max_lines: int = 6) -> str:
    """The first lines of a parser message: for a union type jsonargparse lists every failed branch."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    if len(lines) <= max_lines:
        return "\n".join(lines)
    return "\n".join(lines[:max_lines] + [f"  ... ({len(lines) - max_lines} more lines)"])
