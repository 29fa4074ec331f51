"""Installs that work: declared dependencies, the generated project's ranges, a wheel in a fresh venv."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

from lit_nnopt.app.new_project import main as new_main
from tests.helpers import REPO

PACKAGE = REPO / "lit_nnopt"
# Import names whose distribution is named otherwise.
DISTRIBUTION_OF = {"yaml": "pyyaml", "docstring_parser": "jsonargparse"}


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    return {Requirement(requirement).name.lower().replace("_", "-") for requirement in requirements}


def _third_party_imports(paths: list[Path]) -> set[str]:
    found = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top != "lit_nnopt":
                    found.add(DISTRIBUTION_OF.get(top, top).lower().replace("_", "-"))
    return found


def _sources(application: bool) -> list[Path]:
    app = PACKAGE / "app"
    return [
        path
        for path in PACKAGE.rglob("*.py")
        if "project_template" not in path.parts and ((app in path.parents) == application)
    ]


def test_the_library_imports_only_its_declared_dependencies():
    undeclared = _third_party_imports(_sources(application=False)) - _names(_project()["dependencies"])
    assert not undeclared, f"the library imports {sorted(undeclared)}, missing from [project] dependencies"


def test_the_application_imports_only_the_library_and_the_cli_extra():
    project = _project()
    declared = _names(project["dependencies"]) | _names(project["optional-dependencies"]["cli"])
    undeclared = _third_party_imports(_sources(application=True)) - declared
    assert not undeclared, f"the application imports {sorted(undeclared)}, missing from the `cli` extra"


def test_the_library_needs_none_of_the_application_packages():
    library = _names(_project()["dependencies"])
    assert not library & {"wandb", "matplotlib", "cookiecutter", "rich", "jsonargparse", "optuna", "sqlalchemy"}


def test_without_the_cli_extra_the_command_names_the_install_command(monkeypatch, capsys):
    from lit_nnopt.app import main as entry

    real_find_spec = entry.importlib.util.find_spec
    monkeypatch.setattr(
        entry.importlib.util, "find_spec", lambda name: None if name == "cookiecutter" else real_find_spec(name)
    )
    with pytest.raises(SystemExit) as stop:
        entry.main(["new", "--no-input"])
    assert stop.value.code == 1
    error = capsys.readouterr().err
    assert "cookiecutter is not installed" in error
    assert 'pip install "lit_nnopt[cli]"' in error
    assert len(error.strip().splitlines()) == 1


def _admitted(requirement: Requirement, probes: list[Version]) -> set[Version]:
    return {version for version in probes if requirement.specifier.contains(version, prereleases=True)}


@pytest.mark.parametrize("use_wandb", ["yes", "no"])
def test_the_generated_project_asks_for_versions_lit_nnopt_supports(tmp_path, monkeypatch, use_wandb):
    monkeypatch.setenv("COOKIECUTTER_CONFIG", str(tmp_path / "no-user-config.yaml"))
    (tmp_path / "no-user-config.yaml").write_text(f"replay_dir: {tmp_path / 'replay'}\n")
    project = new_main(["--no-input", "--output-dir", str(tmp_path), "project_slug=demo", f"use_wandb={use_wandb}"])
    generated = [
        Requirement(line) for line in tomllib.loads((project / "pyproject.toml").read_text())["project"]["dependencies"]
    ]
    ours = {requirement.name: requirement for requirement in map(Requirement, _project()["dependencies"])}
    ours.update({r.name: r for r in map(Requirement, _project()["optional-dependencies"]["cli"])})
    names = {requirement.name for requirement in generated}
    assert "lit_nnopt" in names
    assert ("wandb" in names) == (use_wandb == "yes")
    assert "matplotlib" not in names
    for requirement in generated:
        if requirement.name not in ours:
            continue
        bounds = {spec.version for r in (requirement, ours[requirement.name]) for spec in r.specifier}
        probes = sorted({Version(v) for v in bounds} | {Version(v + ".post9") for v in bounds} | {Version("0.0.1")})
        extra = _admitted(requirement, probes) - _admitted(ours[requirement.name], probes)
        assert not extra, (
            f"{requirement} admits {sorted(map(str, extra))}, which lit_nnopt's {ours[requirement.name]} excludes"
        )


# -- a wheel in a fresh virtual environment ---------------------------------------------------


def _fresh_venv(tmp_path: Path) -> Path:
    """A new venv that sees this environment's packages (not lit_nnopt) instead of downloading gigabytes.

    Without its own pip and setuptools, which would shadow this environment's newer ones.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    shared = tmp_path / "shared-site-packages"
    shared.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(("lit_nnopt", "__editable__", "_lit_nnopt")):
            (shared / entry.name).symlink_to(entry)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "shared.pth").write_text(f"import site; site.addsitedir({str(shared)!r})\n")
    return python


def _run(python: Path, *args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(
        [str(python), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**env, "WANDB_MODE": "offline", "PIP_NO_INDEX": "1"},
    )


@pytest.mark.slow
def test_a_wheel_installs_in_a_fresh_venv_and_runs_fit_new_and_the_generated_projects_tests(tmp_path, mnist_dir):
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("lit_nnopt-*.whl")
    python = _fresh_venv(tmp_path)
    work = tmp_path / "work"
    work.mkdir()

    installed = _run(python, "-m", "pip", "install", "--no-deps", str(wheel), cwd=work)
    assert installed.returncode == 0, installed.stderr[-2000:]
    where = _run(python, "-c", "import lit_nnopt; print(lit_nnopt.__file__)", cwd=work)
    assert str(tmp_path / "venv") in where.stdout, where.stdout + where.stderr

    fit = _run(
        python,
        "-m",
        "lit_nnopt",
        "fit",
        "--config",
        str(REPO / "configs" / "adam.yaml"),
        "--data.data_dir",
        str(mnist_dir),
        "--data.download",
        "false",
        "--trainer.fast_dev_run",
        "true",
        "--trainer.logger",
        "false",
        cwd=work,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]

    new = _run(python, "-m", "lit_nnopt", "new", "--no-input", "--output-dir", str(work), "project_slug=demo", cwd=work)
    assert new.returncode == 0, new.stderr[-3000:]
    project = work / "demo"
    # The generated README's install command, with lit_nnopt already installed from the wheel.
    project_install = _run(python, "-m", "pip", "install", "--no-build-isolation", "-e", ".[dev]", cwd=project)
    assert project_install.returncode == 0, project_install.stdout[-2000:] + project_install.stderr[-2000:]
    tests = _run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=project)
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert " passed" in tests.stdout
