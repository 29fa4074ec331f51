"""What ``python -m lit_nnopt new`` prints: the steps that set up the project in a fresh environment."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from lit_nnopt.app import new_project
from lit_nnopt.app.new_project import lit_nnopt_source, next_steps
from tests.helpers import REPO


@pytest.fixture(autouse=True)
def _cookiecutter_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cookiecutter writes a replay of each answer set; keep it out of the user's home."""
    home = tmp_path_factory.getbasetemp() / "cookiecutter-new"
    home.mkdir(exist_ok=True)
    config = home / "config.yaml"
    config.write_text(f"replay_dir: {home / 'replay'}\ncookiecutters_dir: {home / 'templates'}\n")
    monkeypatch.setenv("COOKIECUTTER_CONFIG", str(config))


def test_new_prints_how_to_install_lit_nnopt_before_the_project(tmp_path, capsys):
    project = new_project.main(["--no-input", "--output-dir", str(tmp_path), "project_slug=digits"])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"Created {project}. Next, in a fresh environment:"
    assert [line.strip() for line in printed[1:]] == [
        f"cd {project}",
        "python -m venv .venv",
        ". .venv/bin/activate",
        f"pip install {REPO}",  # lit_nnopt is not on PyPI: `pip install -e .[dev]` alone finds no lit_nnopt
        'pip install -e ".[dev]"',
        "pytest",
        "python -m digits fit --config configs/default.yaml",
    ]


def test_a_requirement_that_says_where_lit_nnopt_lies_needs_no_extra_step(tmp_path):
    steps = next_steps(tmp_path / "p", "lit_nnopt @ git+https://example.org/lit_nnopt.git")
    assert not [step for step in steps if step.startswith("pip install") and "[dev]" not in step]


@pytest.mark.parametrize(
    ("recorded", "source"),
    [
        ({"url": "file:///opt/wheels/lit_nnopt-0.1.0-py3-none-any.whl", "archive_info": {}},
         "/opt/wheels/lit_nnopt-0.1.0-py3-none-any.whl"),
        ({"url": "https://example.org/lit_nnopt.git", "vcs_info": {"vcs": "git", "commit_id": "abc123"}},
         "lit_nnopt @ git+https://example.org/lit_nnopt.git@abc123"),
        (None, None),  # installed from an index: `pip install -e .[dev]` finds it there
    ],
)  # fmt: skip
def test_an_installed_lit_nnopt_is_found_where_pip_recorded_it(monkeypatch, tmp_path, recorded, source):
    monkeypatch.setattr(new_project, "__file__", str(tmp_path / "site-packages" / "lit_nnopt" / "app" / "x.py"))

    class Installed:
        def read_text(self, name: str) -> str | None:
            return json.dumps(recorded) if recorded and name == "direct_url.json" else None

    monkeypatch.setattr(new_project.metadata, "distribution", lambda name: Installed())
    assert lit_nnopt_source() == source


def test_the_clone_is_found_from_the_running_package():
    assert Path(lit_nnopt_source()) == REPO


@pytest.mark.slow  # the generated project's CLI in subprocesses
def test_the_generated_fit_prints_a_test_command_that_runs_as_printed(tmp_path, mnist_dir):
    project = new_project.main(["--no-input", "--output-dir", str(tmp_path), "project_slug=digits", "example=mnist"])
    env = {**os.environ, "PYTHONPATH": str(project), "PYTHONUNBUFFERED": "1"}
    fit = [
        *("-m", "digits", "fit", "--config", "configs/default.yaml", "--data.data_dir", str(mnist_dir)),
        *("--data.download", "false", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3"),
        *("--trainer.limit_val_batches", "1"),
    ]
    fitted = subprocess.run([sys.executable, *fit], cwd=project, env=env, capture_output=True, text=True, check=False)
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    (printed,) = [line for line in fitted.stdout.splitlines() if line.startswith("Test it with: ")]
    command = shlex.split(printed.removeprefix("Test it with: "))
    assert command[:4] == ["python", "-m", "digits", "test"] and ["--data.data_dir", str(mnist_dir)] == command[6:8]
    tested = subprocess.run(
        [sys.executable, *command[1:], "--trainer.limit_test_batches", "1"],
        cwd=project,  # the printed command, offline: the data folder the fit used
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert "test_acc" in tested.stdout
