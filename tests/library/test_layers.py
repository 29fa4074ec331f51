"""The two layers: the library never imports the application, and the drop-ins load nothing heavy."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lit_nnopt"
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
# What each import adds to sys.modules, in one fresh interpreter (one start of Lightning, not three).
_PROBE = """
import importlib, json, sys
import lightning.pytorch, torchmetrics
heavy = {heavy!r}
added = {{}}
for module, names in {imports!r}:
    before = set(sys.modules)
    imported = importlib.import_module(module)
    for name in names:
        getattr(imported, name)
    added[module] = sorted(m for m in set(sys.modules) - before if any(m == h or m.startswith(h + ".") for h in heavy))
print(json.dumps(added))
"""
_IMPORTS = [
    ("lit_nnopt.callbacks", ["EarlyStopping", "StepsPerExecution", "InterruptCheckpoint"]),
    ("lit_nnopt.optim", ["ExponentialDecay"]),
    ("lit_nnopt", ["MNISTClassifier", "MNISTDataModule", "AtomicCheckpointIO", "MLP"]),
]


def test_importing_the_library_loads_no_application_module():
    code = _PROBE.format(heavy=_HEAVY, imports=_IMPORTS)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    added = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(added) == {module for module, _ in _IMPORTS}
    assert added == {module: [] for module, _ in _IMPORTS}


def test_new_and_its_help_start_without_importing_torch_or_lightning():
    code = (
        "import sys\n"
        "from lit_nnopt.app.main import main\n"
        "try:\n"
        "    main(['new', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('torch', 'lightning', 'wandb') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Start a new Lightning project" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"
