"""``python -m lit_nnopt new``: start a Lightning project from lit_nnopt's cookiecutter template.

The template is ``lit_nnopt/app/project_template`` (shipped with the package); the same folder
works with cookiecutter itself: ``cookiecutter <lit_nnopt repository> --directory
lit_nnopt/app/project_template``. Answers given as ``key=value`` are checked here against
``cookiecutter.json``; the slug is checked by the template's pre-generation hook, so both
ways of generating refuse the same names.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

TEMPLATE_DIR = Path(__file__).resolve().parent / "project_template"
_YES = ("1", "true", "t", "yes", "y", "on")
_NO = ("0", "false", "f", "no", "n", "off")


class TemplateAnswerError(ValueError):
    """A ``key=value`` answer names no template variable, or gives a value it cannot take."""


def template_variables() -> dict[str, Any]:
    """The template's variables and their defaults (a list: the choices, the first is the default)."""
    context = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())
    return {key: value for key, value in context.items() if not key.startswith("_")}


def parse_answers(pairs: list[str], variables: dict[str, Any]) -> dict[str, str]:
    """``["key=value", ...]`` as a dict, each key a template variable and each value one it accepts.

    Raises:
        TemplateAnswerError: a pair without ``=``, an unknown key, a value outside a choice
            list or a yes/no variable given something else.
    """
    answers: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise TemplateAnswerError(f"{pair!r} is not a key=value answer; write e.g. project_slug=my_project.")
        if key not in variables:
            raise TemplateAnswerError(f"{key!r} is not a variable of the template; it has {', '.join(variables)}.")
        _check_value(key, value, variables[key])
        answers[key] = value
    return answers


def _check_value(key: str, value: str, default: Any) -> None:
    if isinstance(default, list) and value not in default:
        raise TemplateAnswerError(f"`{key}` can be {', '.join(default)}, got {value!r}.")
    if isinstance(default, bool) and value.lower() not in _YES + _NO:
        raise TemplateAnswerError(f"`{key}` is yes or no (also true/false, 1/0), got {value!r}.")


def _shown(default: Any) -> str:
    if isinstance(default, list):
        return " | ".join(default)
    if isinstance(default, bool):
        return "yes | no" if default else "no | yes"
    return "(derived from the answers above)" if "{{" in str(default) else str(default)


def _parser(variables: dict[str, Any]) -> argparse.ArgumentParser:
    lines = ["template variables (default first):"]
    lines += [f"  {key:<22}{_shown(default)}" for key, default in variables.items()]
    lines += ["", "Example: python -m lit_nnopt new --no-input project_name='Digits' example=mnist use_wandb=yes"]
    parser = argparse.ArgumentParser(
        prog="python -m lit_nnopt new",
        description="Start a new Lightning project from lit_nnopt's cookiecutter template.",
        epilog="\n".join(lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("answers", nargs="*", metavar="key=value", help="answers that replace the defaults")
    parser.add_argument("--output-dir", type=Path, default=Path("."), help="where the project folder goes (default: .)")
    parser.add_argument("--no-input", action="store_true", help="ask nothing: use the answers given, else the defaults")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="generate into an existing project folder, replacing the files the template writes",
    )
    return parser


def generate(
    answers: dict[str, str], output_dir: Path = Path("."), no_input: bool = False, overwrite: bool = False
) -> Path:
    """Generate a project into ``output_dir`` and return its folder.

    Raises:
        FileExistsError: the project folder exists and ``overwrite`` is false.
        TemplateAnswerError: the template's pre-generation hook refused the answers (it
            printed why on stderr).
    """
    from cookiecutter.exceptions import FailedHookException, OutputDirExistsException
    from cookiecutter.main import cookiecutter

    # Cookiecutter logs a failed hook with its traceback; without a handler of its own that
    # reaches stderr through logging's last resort, after the hook's own clear message.
    logging.getLogger("cookiecutter").addHandler(logging.NullHandler())
    try:
        project = cookiecutter(
            str(TEMPLATE_DIR),
            no_input=no_input,
            extra_context=answers,
            output_dir=str(output_dir),
            overwrite_if_exists=overwrite,
        )
    except OutputDirExistsException as error:
        where = str(error).removeprefix("Error: ")
        raise FileExistsError(
            f"{where}; nothing was generated. Pass --overwrite to generate into it anyway (the files the "
            "template writes are replaced, others are kept), or choose another --output-dir or project_slug."
        ) from None
    except FailedHookException:
        raise TemplateAnswerError("the template refused these answers (why is printed above).") from None
    return Path(project)


def lit_nnopt_source() -> str | None:
    """Where pip can install the running lit_nnopt from, as a ``pip install`` argument; None for a package index.

    The clone it runs from (an editable install), else the file, folder or VCS URL pip recorded
    when it installed it (``direct_url.json``, PEP 610).
    """
    clone = Path(__file__).resolve().parents[2]
    if (clone / "pyproject.toml").is_file() and 'name = "lit_nnopt"' in (clone / "pyproject.toml").read_text():
        return str(clone)
    try:
        recorded = metadata.distribution("lit_nnopt").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    origin = json.loads(recorded) if recorded else {}
    url = origin.get("url")
    if not url:
        return None
    vcs = origin.get("vcs_info")
    if vcs:
        commit = vcs.get("commit_id")
        return f"lit_nnopt @ {vcs.get('vcs', 'git')}+{url}" + (f"@{commit}" if commit else "")
    return unquote(urlparse(url).path) if url.startswith("file:") else url


def next_steps(project: Path, requirement: str) -> list[str]:
    """The commands that set up, test and train a generated project in a fresh environment.

    ``lit_nnopt`` is not on PyPI: unless ``requirement`` names where to get it (``lit_nnopt @
    URL``), it is installed first from where the running one came from.
    """
    steps = [f"cd {shlex.quote(str(project))}", "python -m venv .venv", ". .venv/bin/activate"]
    source = None if "@" in requirement else lit_nnopt_source()
    if source is not None:
        steps.append(f"pip install {shlex.quote(source)}")
    return steps + ['pip install -e ".[dev]"', "pytest", f"python -m {project.name} fit --config configs/default.yaml"]


def main(argv: list[str] | None = None) -> Path:
    """Entry point of ``python -m lit_nnopt new``; returns the generated project's folder."""
    variables = template_variables()
    args = _parser(variables).parse_args(argv)
    answers = parse_answers(args.answers, variables)
    project = generate(answers, args.output_dir, no_input=args.no_input, overwrite=args.overwrite)
    requirement = answers.get("lit_nnopt_requirement", str(variables["lit_nnopt_requirement"]))
    steps = next_steps(project, requirement)
    print(f"Created {project}. Next, in a fresh environment:\n" + "\n".join(f"  {step}" for step in steps))
    return project
