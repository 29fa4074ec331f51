"""The two layers: the library never imports the application, and the drop-ins load nothing heavy."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lit_nnopt"
APPLICATION = PACKAGE / "app"
# The entry point of `python -m lit_nnopt` starts the application; it is not part of the library.
ENTRY_POINT = PACKAGE / "__main__.py"


def _imported_names(path: Path) -> set[str]:
    """Modules a file imports, at the top or inside functions, and module names it holds as strings."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("lit_nnopt."):
            names.add(node.value)
    return names


def _library_files() -> list[Path]:
    return [
        path
        for path in PACKAGE.rglob("*.py")
        if APPLICATION not in path.parents and path != ENTRY_POINT and "project_template" not in path.parts
    ]


@pytest.mark.parametrize("path", _library_files(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_the_library_never_imports_the_application(path: Path):
    reaching_up = sorted(
        name for name in _imported_names(path) if name == "lit_nnopt.app" or name.startswith("lit_nnopt.app.")
    )
    assert not reaching_up, f"{path.relative_to(PACKAGE)} imports the application: {reaching_up}"


def test_the_application_folder_exists_and_holds_the_cli():
    # A guard for the test above: without the folder it would pass vacuously.
    assert (APPLICATION / "cli.py").is_file()
    assert len(_library_files()) >= 10


# Loaded by Lightning or torchmetrics themselves when installed, so only those lit_nnopt adds count.
_HEAVY = ["lit_nnopt.app", "wandb", "matplotlib", "cookiecutter", "jsonargparse", "rich", "tensorboard"]

_PROBE = """
import json, sys
import lightning.pytorch, torchmetrics
before = set(sys.modules)
import {module}
{touch}
added = sorted(name for name in set(sys.modules) - before
               if any(name == heavy or name.startswith(heavy + ".") for heavy in {heavy!r}))
print(json.dumps(added))
"""


@pytest.mark.parametrize(
    ("module", "touch"),
    [
        ("lit_nnopt.callbacks", "lit_nnopt.callbacks.EarlyStopping, lit_nnopt.callbacks.StepsPerExecution"),
        ("lit_nnopt.optim", "lit_nnopt.optim.ExponentialDecay"),
        ("lit_nnopt", "lit_nnopt.MNISTClassifier, lit_nnopt.MNISTDataModule, lit_nnopt.AtomicCheckpointIO"),
    ],
)
def test_importing_the_library_loads_no_application_module(module: str, touch: str):
    code = _PROBE.format(module=module, touch=touch, heavy=_HEAVY)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
