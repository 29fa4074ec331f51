"""Search-space files of ``tune``: which ``fit`` options a search varies, and over what range.

A search space is a YAML mapping from a ``fit`` option, written as on the command line without
its dashes, to its range::

    optimizer.lr: {low: 1.0e-4, high: 1.0e-1, log: true}    # a float, sampled on a log scale
    model.net.dropout: {low: 0.0, high: 0.5}                # a float, uniform
    model.net.hidden_sizes: {choices: [[64], [128], [256]]} # one of a list
    data.batch_size: {low: 32, high: 256, step: 32}         # an int: low, high (and step) are whole numbers

Each trial of ``tune`` is ``fit --config CONFIG --<option> <value> ...``, so an option is any
that ``fit`` takes with that config: :func:`check_against_config` asks ``fit`` itself.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_RANGE_KEYS = {"low", "high", "log", "step"}
_EXAMPLE = "optimizer.lr: {low: 1.0e-4, high: 1.0e-1, log: true}"


class SearchSpaceError(ValueError):
    """A search-space file that ``tune`` cannot search: exit status 2, nothing trained."""


@dataclass(frozen=True)
class Dimension:
    """One option of a search space and its range: ``choices``, or ``low`` to ``high``."""

    option: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] | None = None

    @property
    def is_int(self) -> bool:
        """Whether the range holds whole numbers only (``low``, ``high`` and any ``step`` written as integers)."""
        whole = (self.low, self.high) if self.step is None else (self.low, self.high, self.step)
        return self.choices is None and all(isinstance(bound, int) for bound in whole)

    def suggest(self, trial: Any) -> Any:
        """This dimension's value for an Optuna ``trial``."""
        if self.choices is not None:
            return self.decode(trial.suggest_categorical(self.option, [_encoded(choice) for choice in self.choices]))
        if self.is_int:
            return trial.suggest_int(self.option, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.option, float(self.low), float(self.high), step=self.step, log=self.log)

    def decode(self, stored: Any) -> Any:
        """The value of the study's ``stored`` parameter: a list or a mapping among ``choices`` is kept as JSON."""
        return json.loads(stored) if self.choices is not None and not _is_scalar(self.choices[0]) else stored

    def sample_value(self) -> Any:
        """A value inside the range, to check that ``fit`` takes the option."""
        return self.choices[0] if self.choices is not None else self.low


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _encoded(choice: Any) -> Any:
    """A choice as Optuna stores it: scalars as they are, anything else (``[128]``) as JSON text."""
    return choice if _is_scalar(choice) else json.dumps(choice)


def load_search_space(path: Path) -> list[Dimension]:
    """The dimensions of a search-space file, in the file's order.

    Raises:
        SearchSpaceError: if the file is missing, is not a mapping of options to ranges, or a range is malformed.
    """
    import yaml

    if not path.is_file():
        raise SearchSpaceError(
            f"search space {path} not found: give a YAML file of `option: range` lines, e.g. `{_EXAMPLE}` "
            "(configs/spaces/ holds one per technique)."
        )
    text = path.read_text()
    try:
        content = yaml.safe_load(text)
        repeated = _repeated_key(yaml.compose(text))
    except yaml.YAMLError as error:
        raise SearchSpaceError(f"search space {path} is not valid YAML: {_yaml_problem(error)}.") from None
    if not isinstance(content, dict) or not content:
        raise SearchSpaceError(
            f"search space {path} names no option: it is a mapping of `fit` options to ranges, e.g. `{_EXAMPLE}`."
        )
    if repeated is not None:
        # YAML would keep the last range and drop the other without a word.
        key, line = repeated
        raise SearchSpaceError(f"search space {path} names `{key}` twice (again on line {line}): keep one of them.")
    return [_dimension(path, str(option), value) for option, value in content.items()]


def _repeated_key(node: Any) -> tuple[str, int] | None:
    """The first key written twice in one mapping of a composed YAML ``node``, with the line of its repeat."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.value in seen:
                return key.value, key.start_mark.line + 1
            seen.add(key.value)
            found = _repeated_key(value)
            if found is not None:
                return found
    return None


def _yaml_problem(error: Exception) -> str:
    """What PyYAML found wrong, and where, on one line (its own message spans several, with a caret)."""
    problem = getattr(error, "problem", None) or getattr(error, "context", None)
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    if problem is None or mark is None:
        return " ".join(str(error).split())
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _dimension(path: Path, option: str, spec: Any) -> Dimension:
    where = f"`{option}` in search space {path}"
    if not isinstance(spec, dict):
        raise SearchSpaceError(
            f"{where} is {spec!r}, not a range: write `{{low: L, high: H}}` (add `log: true` for a log scale) "
            "or `{choices: [A, B, ...]}`."
        )
    unknown = set(spec) - _RANGE_KEYS - {"choices"}
    if unknown:
        raise SearchSpaceError(
            f"{where} has {', '.join(sorted(map(str, unknown)))}, which a range does not take: a range has "
            "`low`, `high` and optionally `log` and `step`, or `choices` alone."
        )
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
            raise SearchSpaceError(f"{where}: `choices` takes a non-empty list and no other key, e.g. `[32, 64, 128]`.")
        if len({_is_scalar(choice) for choice in choices}) > 1:
            raise SearchSpaceError(f"{where}: `choices` are all plain values or all lists, not a mix.")
        return Dimension(option, choices=tuple(choices))
    low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
    if not (_is_number(low) and _is_number(high)):
        raise SearchSpaceError(f"{where} needs numbers `low` and `high`, e.g. `{{low: 1.0e-4, high: 1.0e-1}}`.")
    if low >= high:
        raise SearchSpaceError(f"{where}: `low` ({low}) must be below `high` ({high}).")
    if not isinstance(log, bool):
        raise SearchSpaceError(f"{where}: `log` is true or false, not {log!r}.")
    if log and low <= 0:
        raise SearchSpaceError(f"{where}: a log scale needs `low` above 0 (it is {low}).")
    if log and step is not None:
        raise SearchSpaceError(f"{where}: a range takes `log` or `step`, not both.")
    if step is not None and not (_is_number(step) and 0 < step <= high - low):
        raise SearchSpaceError(
            f"{where}: `step` ({step!r}) is the distance between the values tried, a number above 0 and at most "
            f"`high` - `low` ({high - low}); e.g. `{{low: 32, high: 256, step: 32}}`."
        )
    return Dimension(option, low=low, high=high, log=log, step=step)


def option_args(params: Mapping[str, Any]) -> list[str]:
    """``fit`` options that set ``params``: ``--optimizer.lr=0.01``; lists and the like as JSON."""
    return [f"--{option}={_cli_value(value)}" for option, value in params.items()]


def _cli_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def check_against_config(dimensions: Sequence[Dimension], config: Path, overrides: Sequence[str], space: Path) -> None:
    """Ask ``fit`` to parse ``config`` with every dimension set: an option it does not take fails here, not in a trial.

    Raises:
        SearchSpaceError: naming what ``fit`` said, for an option the config cannot take (an
            unknown name, or an argument its optimizer or network does not have).
    """
    params = {dimension.option: dimension.sample_value() for dimension in dimensions}
    check = resolved_config(config, overrides, params)
    if check.returncode != 0:
        # jsonargparse's own words, on one line, without its pointer to `--help`.
        said = [line.strip() for line in check.stderr.splitlines() if line.strip() and not line.startswith("See ")]
        reason = " ".join(said) or f"exit status {check.returncode}"
        raise SearchSpaceError(
            f"search space {space} does not fit {config}: `fit --config {config} {' '.join(option_args(params))}` "
            f"fails with: {reason.removeprefix('lit_nnopt: error: ')}. Fix or remove that option in {space}; each "
            "option is one `fit` takes with this config (see `python -m lit_nnopt fit --config "
            f"{config} --print_config`)."
        )


def resolved_config(
    config: Path, overrides: Sequence[str], params: Mapping[str, Any]
) -> subprocess.CompletedProcess[str]:
    """``fit --print_config`` of ``config`` with ``overrides`` and ``params``: the whole config ``fit`` would run."""
    command = [sys.executable, "-m", "lit_nnopt", "fit", "--config", str(config), *overrides, *option_args(params)]
    return subprocess.run([*command, "--print_config"], capture_output=True, text=True)
