"""The ``--config`` files of a command line, checked before anything heavier is imported."""

from __future__ import annotations

import os
from pathlib import Path

import yaml


class ConfigFileError(ValueError):
    """A ``--config`` file is not a YAML mapping."""


def config_files(argv: list[str]) -> list[str]:
    """The existing files named by ``--config`` in ``argv`` (a ``--config`` value may also be inline YAML)."""
    values = [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]
    values += [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"]
    return [value for value in values if Path(value).is_file()]


def check_config_file(path: str | os.PathLike) -> None:
    """Refuse a ``--config`` file that is not a YAML mapping, naming the file and the problem.

    Raises:
        ConfigFileError: if the file is not UTF-8 text, not YAML, or not a mapping of keys.
    """
    try:
        content = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        reason = "it is not text (not UTF-8)"
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = f"it is not valid YAML{where} ({getattr(error, 'problem', None) or error})"
    except OSError as error:
        reason = f"it cannot be read ({error.strerror or error})"
    else:
        if content is None or isinstance(content, dict):
            return
        reason = f"it holds a YAML {type(content).__name__}, not a mapping of keys"
    raise ConfigFileError(
        f"--config {path} is not a lit_nnopt config: {reason}. A config is a YAML mapping with keys such as "
        "`trainer:`, `model:`, `data:` and `optimizer:` (see configs/adam.yaml); "
        "`python -m lit_nnopt fit --print_config` prints a complete one."
    )
