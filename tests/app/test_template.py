"""The cookiecutter template and ``python -m lit_nnopt new``.

Projects are generated in-process (cookiecutter only: milliseconds). The generated project
is not installed: its own tests and its CLI run in a subprocess with the current
environment and ``PYTHONPATH`` set to the project's root, so ``import <slug>`` finds it.
"""

from __future__ import annotations

import glob
import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lit_nnopt.app.main import main as cli_main
from lit_nnopt.app.new_project import TemplateAnswerError, parse_answers, template_variables
from lit_nnopt.app.new_project import main as new_main

REPO = Path(__file__).resolve().parents[2]
RUFF = Path(sys.executable).with_name("ruff")
CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")
ALWAYS = {
    ".gitignore", "README.md", "pyproject.toml", "configs/default.yaml",
    "tests/conftest.py", "tests/test_cli.py", "tests/test_data.py", "tests/test_model.py",
}  # fmt: skip
PACKAGE = {"__init__.py", "__main__.py", "cli.py", "data.py", "model.py"}


@pytest.fixture(autouse=True)
def _cookiecutter_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cookiecutter writes a replay of each answer set; keep it out of the user's home."""
    home = tmp_path_factory.getbasetemp() / "cookiecutter"
    home.mkdir(exist_ok=True)
    config = home / "config.yaml"
    config.write_text(f"replay_dir: {home / 'replay'}\ncookiecutters_dir: {home / 'templates'}\n")
    monkeypatch.setenv("COOKIECUTTER_CONFIG", str(config))


def generate(output_dir: Path, *answers: str, overwrite: bool = False) -> Path:
    """``python -m lit_nnopt new --no-input`` in-process; returns the project folder."""
    argv = ["--no-input", "--output-dir", str(output_dir), *answers] + (["--overwrite"] if overwrite else [])
    return new_main(argv)


def run_generated(project: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python ARGS`` in the generated project, which is importable through PYTHONPATH only."""
    env = {**os.environ, "PYTHONPATH": str(project), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, *args], check=False, cwd=project, env=env, capture_output=True, text=True, timeout=timeout
    )


def files_of(project: Path) -> set[str]:
    return {path.relative_to(project).as_posix() for path in project.rglob("*") if path.is_file()}


# -- the generated project runs ------------------------------------------------------------


@pytest.mark.slow  # the generated project in a subprocess
def test_the_generated_project_passes_its_own_tests(tmp_path):
    project = generate(tmp_path, "project_slug=digits", "example=mnist", "use_wandb=yes", "github_actions=yes")
    result = run_generated(project, "-m", "pytest", "-q", "-p", "no:cacheprovider")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert re.search(r"\b\d+ passed\b", summary) and "skipped" not in summary, summary


@pytest.mark.slow  # the generated project in a subprocess
@pytest.mark.parametrize("example", ["skeleton", "mnist"])
def test_the_generated_cli_fits_with_fast_dev_run(tmp_path, request, example):
    project = generate(tmp_path, "project_slug=sketch", f"example={example}")
    data_args = []
    if example == "mnist":  # the real MNIST, as the generated README tells users to run it
        data_args = ["--data.data_dir", str(request.getfixturevalue("mnist_dir")), "--data.download", "false"]
    result = run_generated(
        project, "-m", "sketch", "fit", "--config", "configs/default.yaml", "--trainer.fast_dev_run", "true", *data_args
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "`Trainer.fit` stopped: `max_steps=1` reached." in result.stdout + result.stderr


# -- every option that changes files -------------------------------------------------------

LICENSES = itertools.cycle(["MIT", "BSD-3-Clause", "Apache-2.0", "none"])
COMBINATIONS = [
    (example, wandb, actions, next(LICENSES))
    for example, wandb, actions in itertools.product(["mnist", "skeleton"], [True, False], [True, False])
]


@pytest.mark.parametrize(("example", "wandb", "actions", "license_"), COMBINATIONS)
def test_each_option_combination_generates_its_files(tmp_path, example, wandb, actions, license_):
    answers = [
        "project_name=Image Sorter", f"example={example}", f"use_wandb={'yes' if wandb else 'no'}",
        f"github_actions={'yes' if actions else 'no'}", f"license={license_}", "python_version=3.12",
    ]  # fmt: skip
    project = generate(tmp_path, *answers)
    assert project == tmp_path / "image_sorter"

    expected = ALWAYS | {f"image_sorter/{name}" for name in PACKAGE}
    expected |= {"configs/wandb.yaml", "tests/test_wandb.py"} if wandb else set()
    expected |= {".github/workflows/ci.yml"} if actions else set()
    expected |= {"LICENSE"} if license_ != "none" else set()
    assert files_of(project) == expected

    config = yaml.safe_load((project / "configs/default.yaml").read_text())
    data_class = "lit_nnopt.MNISTDataModule" if example == "mnist" else "image_sorter.data.SyntheticDataModule"
    assert config["data"]["class_path"] == data_class
    callbacks = [callback["class_path"] for callback in config["trainer"]["callbacks"]]
    assert callbacks == [
        "lit_nnopt.callbacks.GradientClipping",
        "lit_nnopt.callbacks.ReduceLROnPlateau",
        "lit_nnopt.callbacks.EarlyStopping",
        "lit_nnopt.callbacks.LearningRateMonitor",
    ]
    assert config["trainer"]["callbacks"][2]["init_args"]["restore_best_weights"] is True
    _check_pyproject(project, wandb, license_)
    _check_readme(project, example, wandb, actions)
    if wandb:
        loggers = yaml.safe_load((project / "configs/wandb.yaml").read_text())["trainer"]["logger"]
        assert loggers[1]["init_args"]["project"] == "image_sorter"
    if actions:
        workflow = yaml.safe_load((project / ".github/workflows/ci.yml").read_text())
        assert workflow["jobs"]["test"]["steps"][1]["with"]["python-version"] == "3.12"
    if license_ != "none":
        _check_license(project / "LICENSE", license_)
    for source in project.rglob("*.py"):
        compile(source.read_text(), str(source), "exec")
    lint = subprocess.run([RUFF, "check", "--no-cache", "."], check=False, cwd=project, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    style = subprocess.run(
        [RUFF, "format", "--check", "--no-cache", "."], check=False, cwd=project, capture_output=True, text=True
    )
    assert style.returncode == 0, style.stdout + style.stderr


def _check_pyproject(project: Path, wandb: bool, license_: str) -> None:
    tomllib = pytest.importorskip("tomllib")
    meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    assert meta["name"] == "image_sorter" and meta["requires-python"] == ">=3.12"
    assert meta["dependencies"][0] == "lit_nnopt>=0.1"
    assert ("wandb>=0.17" in meta["dependencies"]) is wandb
    assert meta.get("license") == (None if license_ == "none" else license_)


def _check_readme(project: Path, example: str, wandb: bool, actions: bool) -> None:
    readme = (project / "README.md").read_text()
    assert readme.startswith("# Image Sorter\n")
    assert "python -m image_sorter fit --config configs/default.yaml" in readme
    assert ("lit_nnopt.MNISTDataModule" in readme) is (example == "mnist")
    assert ("## Weights & Biases" in readme) is wandb
    assert (".github/workflows/ci.yml" in readme) is actions
    assert "{{" not in readme and "{%" not in readme


def _check_license(path: Path, license_: str) -> None:
    text = path.read_text()
    first_line = {"MIT": "MIT License", "BSD-3-Clause": "Copyright (c) ", "Apache-2.0": ""}[license_]
    assert text.splitlines()[0].startswith(first_line)
    if license_ == "Apache-2.0":
        assert "Apache License\n                           Version 2.0, January 2004" in text
    else:
        assert re.search(r"Copyright \(c\) 20\d\d Your Name\n", text)
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_the_github_workflow_follows_the_github_schema(tmp_path):
    project = generate(tmp_path, "github_actions=yes")
    if not CHECK_JSONSCHEMA.exists():
        pytest.skip("check-jsonschema is not installed (pip install -e '.[dev]')")
    workflow = project / ".github/workflows/ci.yml"
    result = subprocess.run(
        [CHECK_JSONSCHEMA, "--builtin-schema", "vendor.github-workflows", str(workflow)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slug", "reason", "suggestion"),
    [
        ("My Project", "must be a lowercase Python identifier", "my_project"),
        ("2fast", "must be a lowercase Python identifier", "project_2fast"),
        ("class", "is a Python keyword", "class_project"),
        ("json", "would shadow the module 'json'", "json_project"),
        ("lit_nnopt", "would shadow the module 'lit_nnopt'", "lit_nnopt_project"),
    ],
)
def test_a_bad_slug_is_refused_with_a_clear_message(tmp_path, capfd, slug, reason, suggestion):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["new", "--no-input", "--output-dir", str(tmp_path), f"project_slug={slug}"])
    assert exit_info.value.code == 1
    stderr = capfd.readouterr().err
    assert f"project_slug {slug!r} cannot name the project's package: it {reason}" in stderr
    assert f"e.g. project_slug={suggestion}." in stderr
    assert "lit_nnopt: error: the template refused these answers" in stderr
    assert list(tmp_path.iterdir()) == []


def test_a_requirement_that_is_not_lit_nnopt_is_refused(tmp_path, capfd):
    with pytest.raises(SystemExit):
        cli_main(["new", "--no-input", "--output-dir", str(tmp_path), "lit_nnopt_requirement=torch>=2"])
    assert "lit_nnopt_requirement 'torch>=2' is not usable" in capfd.readouterr().err


def test_an_existing_project_is_refused_unless_overwrite_is_given(tmp_path, capfd):
    project = generate(tmp_path, "project_slug=again")
    readme = project / "README.md"
    readme.write_text("edited by hand\n")
    (project / "notes.txt").write_text("mine\n")

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["new", "--no-input", "--output-dir", str(tmp_path), "project_slug=again"])
    assert exit_info.value.code == 1
    stderr = capfd.readouterr().err
    assert f'"{project}" directory already exists; nothing was generated. Pass --overwrite' in stderr
    assert readme.read_text() == "edited by hand\n"

    assert generate(tmp_path, "project_slug=again", overwrite=True) == project
    assert readme.read_text().startswith("# My Lightning Project\n")
    assert (project / "notes.txt").read_text() == "mine\n"  # files the template does not write are kept


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("license=GPL", "`license` can be MIT, BSD-3-Clause, Apache-2.0, none, got 'GPL'."),
        ("use_wandb=maybe", "`use_wandb` is yes or no (also true/false, 1/0), got 'maybe'."),
        ("colour=blue", "'colour' is not a variable of the template; it has project_name, project_slug,"),
        ("project_slug", "'project_slug' is not a key=value answer; write e.g. project_slug=my_project."),
    ],
)
def test_answers_are_checked_against_the_template_variables(pair, message):
    with pytest.raises(TemplateAnswerError, match=re.escape(message)):
        parse_answers([pair], template_variables())


def test_answers_the_template_accepts_pass_through_unchanged():
    pairs = ["project_name=A = B", "use_wandb=Yes", "python_version=3.13"]
    assert parse_answers(pairs, template_variables()) == {
        "project_name": "A = B",
        "use_wandb": "Yes",
        "python_version": "3.13",
    }


# -- packaging -----------------------------------------------------------------------------


def test_every_template_file_is_in_the_package_data():
    """A wheel carries only what pyproject's package-data globs match (Python's glob skips dotfiles)."""
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["lit_nnopt"]
    package_dir = REPO / "lit_nnopt"
    shipped = {
        Path(match).as_posix()
        for pattern in patterns
        for match in glob.glob(pattern, root_dir=package_dir, recursive=True)
        if (package_dir / match).is_file()
    }
    template = {
        path.relative_to(package_dir).as_posix()
        for path in (package_dir / "project_template").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    missing = template - shipped
    assert not missing, f"[tool.setuptools.package-data] lit_nnopt globs miss {sorted(missing)}"
