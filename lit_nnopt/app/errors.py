"""Errors rewritten as one paragraph that says what was wrong and how to fix it.

Three sources: a constructor's "`name` must ..." raised while LightningCLI builds the classes
(:func:`config_error` names the config key it came from), jsonargparse's parser errors
(:func:`explain_parser_error`: the reason first, and the nearest valid option or class), and
any other exception that reaches ``main`` (:func:`explain_error`: the fix for a torch and
torchvision of different builds, or a GPU asked for where there is none).
"""

from __future__ import annotations

import difflib
import importlib
import re
from typing import Any


class ConfigError(ValueError):
    """A configuration value is out of range; raised before anything is trained or written."""


def config_error(error: ValueError, config: Any) -> ConfigError:
    """A constructor's "`name` must ..." error, with ``name`` replaced by its key in ``config``.

    The library's classes check their own arguments; the CLI only says where in the config the
    value came from, so that each rule has one home. jsonargparse reports a constructor's error
    inside its own (one line per type it tried); the constructor's line says what is wrong.
    """
    match = re.search(r"`(\w+)` ((?:must|can|needs) [^\n]*)", str(error))
    plain = config.as_dict() if hasattr(config, "as_dict") else config
    paths = list(_keys_named(match.group(1), plain)) if match else []
    if not paths:
        return ConfigError(str(error))
    path, class_path, value = next(
        ((p, c, v) for p, c, v in paths if repr(v) in str(error) or str(v) in str(error)), paths[0]
    )
    if "[" in path:  # an entry of a list, which the command line cannot address by index
        return ConfigError(f"`{path}` of {class_path} {match.group(2).rstrip('.')}. Change it in the config file.")
    return ConfigError(f"`{path}` {match.group(2).rstrip('.')}. Set e.g. `--{path} <value>`.")


def _keys_named(name: str, node: Any, path: str = "", class_path: str | None = None) -> Any:
    """``(path, class_path, value)`` of every ``init_args`` entry called ``name`` in a parsed config."""
    if hasattr(node, "items"):
        items = list(node.items())
        if path.endswith("init_args") and name in dict(items):
            yield f"{path}.{name}", class_path, dict(items)[name]
        owner = node.get("class_path") if hasattr(node, "get") else None
        for key, value in items:
            yield from _keys_named(name, value, f"{path}.{key}" if path else str(key), owner or class_path)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _keys_named(name, value, f"{path}[{index}]", class_path)


def explain_error(error: Exception) -> str:
    """An error as one paragraph that names the fix, where the host libraries' own message names none."""
    text = str(error)
    if "torchvision::nms does not exist" in text:
        return _build_mismatch()
    if "No supported gpu backend found" in text or ("CUDAAccelerator" in text and "not available" in text):
        return _no_gpu()
    return text


def _build_mismatch() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = f"torch {version('torch')} and torchvision {version('torchvision')}"
    except PackageNotFoundError:
        installed = "torch and torchvision"
    return (
        f"{installed} come from different builds (torchvision's compiled operators, such as "
        "torchvision::nms, do not load into this torch). Reinstall the two together from one index, e.g. "
        "`pip install --force-reinstall torch torchvision --index-url https://download.pytorch.org/whl/cpu` "
        "(or the CUDA index your machine needs), so that pip picks the torchvision built for that torch."
    )


def _no_gpu() -> str:
    import torch

    why = (
        f"this torch ({torch.__version__}) is a CPU-only build"
        if torch.version.cuda is None
        else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device; check `nvidia-smi` and "
        "CUDA_VISIBLE_DEVICES"
    )
    cuda_build = (
        "; on a machine with an NVIDIA GPU, install a CUDA build of torch (https://pytorch.org/get-started/locally/)"
        if torch.version.cuda is None
        else ""
    )
    return (
        f"`--trainer.accelerator gpu` asks for a GPU and there is none to use: {why}. Train on the CPU with "
        f"`--trainer.accelerator cpu`, or `auto`, which takes a GPU where there is one{cuda_build}."
    )


def explain_parser_error(message: str, parser: Any = None) -> str:
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
