"""The documentation is tested: its snippets run, its configs parse, its reference is complete.

- Every ```python block of README.md and docs/**/*.md runs, and every ```yaml block is
  parsed by the CLI's own parser, as ``python -m lit_nnopt fit --config FILE --print_config``
  would; so is every config in configs/.
- The ``Example::`` blocks of the docstrings in the API reference run (doctests and plain
  Python), are parsed (YAML configs) or have their ``python -m lit_nnopt`` flags parsed (commands).
- Every public name has an API reference entry under its public path.
- The README's ``python -m lit_nnopt`` commands parse, and it shows the commands CI runs.

A block that must not run has ``<!-- skip: the reason -->`` on the line right above its fence.
The strict docs build (``mkdocs build --strict``) runs in .ci/run and the GitHub workflow.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import re
import shlex
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

from tests.helpers import ALL_CONFIGS, REPO

DOCS = REPO / "docs"
REFERENCE = DOCS / "reference"
DOC_FILES = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<language>[\w-]*)\s*$")
SKIP = re.compile(r"^\s*<!--\s*skip:\s*(?P<reason>\S.*?)\s*-->\s*$")
# The most blocks the docs may mark as not run: skipping is the exception.
MAX_SKIPPED_BLOCKS = 3
CONFIG_SECTIONS = {"seed_everything", "trainer", "model", "data", "optimizer", "lr_scheduler", "checkpoint"}
CLI_SUBCOMMANDS = {"fit", "validate", "test", "predict"}


@dataclass(frozen=True)
class Snippet:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    skip_reason: str | None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def fenced_blocks(path: Path) -> list[Snippet]:
    """The fenced code blocks of a Markdown file, with the skip reason written above each."""
    lines = path.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening or not opening["language"]:
            index += 1
            continue
        end = next((k for k in range(index + 1, len(lines)) if lines[k].strip() == "```"), None)
        assert end is not None, f"{path.relative_to(REPO)}:{index + 1}: a code fence is never closed"
        above = lines[index - 1] if index > 0 else ""
        skip = SKIP.match(above)
        code = textwrap.dedent("\n".join(lines[index + 1 : end]))
        blocks.append(Snippet(path, index + 1, opening["language"], code, skip["reason"] if skip else None))
        index = end + 1
    return blocks


ALL_BLOCKS = [block for path in DOC_FILES for block in fenced_blocks(path)]


def _params(language: str) -> list[Any]:
    return [
        pytest.param(
            block, id=block.name, marks=[pytest.mark.skip(reason=block.skip_reason)] if block.skip_reason else []
        )
        for block in ALL_BLOCKS
        if block.language == language
    ]


def parse_with_cli(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    """``python -m lit_nnopt ARGS --print_config`` in this process; returns the printed config."""
    from lit_nnopt.__main__ import main

    # LightningCLI reads sys.argv too when given args; here it would hold pytest's.
    with mock.patch.object(sys, "argv", ["lit_nnopt"]), pytest.raises(SystemExit) as exit_status:
        main([*args, "--print_config"])
    captured = capsys.readouterr()
    assert exit_status.value.code in (0, None), f"the CLI refused it:\n{captured.err[-3000:]}"
    printed = yaml.safe_load(captured.out)
    assert isinstance(printed, dict) and "trainer" in printed, f"no config was printed:\n{captured.out[-2000:]}"
    return printed


def _check_config(capsys: pytest.CaptureFixture[str], config: Path, expected: dict) -> None:
    printed = parse_with_cli(capsys, "fit", "--config", str(config))
    for section in expected.keys() & CONFIG_SECTIONS - {"trainer"}:
        assert section in printed, f"`{section}` is missing from the parsed config"
    for callback in (expected.get("trainer") or {}).get("callbacks") or []:
        parsed_paths = [entry.get("class_path") for entry in printed["trainer"].get("callbacks") or []]
        assert callback["class_path"] in parsed_paths or _same_class(callback["class_path"], parsed_paths)


def _same_class(class_path: str, parsed_paths: list[str]) -> bool:
    """A public path (``lit_nnopt.callbacks.X``) is printed as the class's defining module's path."""
    target = resolve(class_path)
    return any(resolve(path) is target for path in parsed_paths if path)


def resolve(dotted: str) -> Any:
    """The object at a dotted path, through the longest importable module prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute)
        return found
    raise ImportError(f"nothing importable at {dotted}")


@pytest.mark.parametrize("block", _params("python"))
def test_python_snippet_runs(block: Snippet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # whatever a snippet writes (logs, checkpoints) stays out of the repository
    exec(compile(block.code, block.name, "exec"), {"__name__": "__doc_snippet__"})


@pytest.mark.parametrize("block", _params("yaml"))
def test_yaml_snippet_parses_with_the_cli(block: Snippet, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snippet = yaml.safe_load(block.code)
    if isinstance(snippet, dict) and snippet and all("." in str(key) for key in snippet):
        _check_search_space(block, tmp_path)
        return
    assert isinstance(snippet, dict) and snippet.keys() <= CONFIG_SECTIONS, (
        f"{block.name}: not a lit_nnopt config (top-level keys {sorted(snippet)}); mark it <!-- skip: why -->"
    )
    config = tmp_path / "snippet.yaml"
    config.write_text(block.code)
    _check_config(capsys, config, snippet)


def _check_search_space(block: Snippet, tmp_path: Path) -> None:
    """A search space of ``tune`` (``fit`` options as keys): each range is valid and ``fit`` takes each option."""
    from lit_nnopt.app.search_space import check_against_config, load_search_space

    space = tmp_path / "space.yaml"
    space.write_text(block.code)
    check_against_config(load_search_space(space), REPO / "configs" / "adam.yaml", [], space)


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda path: path.stem)
def test_config_file_parses_with_the_cli(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _check_config(capsys, config, yaml.safe_load(config.read_text()))


def test_snippets_are_found_and_skips_are_few() -> None:
    languages = {block.language for block in ALL_BLOCKS}
    assert {"python", "yaml", "bash"} <= languages, f"the snippet finder found only {sorted(languages)}"
    skipped = [block.name for block in ALL_BLOCKS if block.skip_reason]
    assert len(skipped) <= MAX_SKIPPED_BLOCKS, f"too many blocks are not run: {skipped}"


# The API reference and the docstring examples.


def reference_entries() -> list[str]:
    """The dotted paths of the ``::: path`` entries of docs/reference/."""
    return [
        match[1]
        for page in sorted(REFERENCE.glob("*.md"))
        for match in re.finditer(r"^:::\s*(\S+)", page.read_text(), re.M)
    ]


def test_every_public_name_has_a_reference_entry_under_its_public_path() -> None:
    import lit_nnopt
    import lit_nnopt.app
    import lit_nnopt.callbacks

    public = [f"lit_nnopt.{name}" for name in lit_nnopt.__all__]
    public += [f"lit_nnopt.callbacks.{name}" for name in lit_nnopt.callbacks.__all__]
    public += [f"lit_nnopt.app.{name}" for name in lit_nnopt.app.__all__]
    entries = reference_entries()
    documented = {id(resolve(entry)) for entry in entries}
    # A name exported twice (lit_nnopt.StepsPerExecution is lit_nnopt.callbacks.StepsPerExecution) needs one entry.
    missing = sorted(name for name in set(public) - set(entries) if id(resolve(name)) not in documented)
    assert not missing, f"add a `::: NAME` entry to a page of docs/reference/ for: {missing}"


def docstring_examples() -> list[Any]:
    """The ``Example::`` blocks of the docstrings of every object in the API reference."""
    examples = []
    for entry in reference_entries():
        documented = resolve(entry)
        if documented.__module__.split(".")[0] != "lit_nnopt":
            continue  # re-exported from Lightning: its examples are Lightning's to test
        lines = (inspect.getdoc(documented) or "").splitlines()
        for index, line in enumerate(lines):
            if line.strip() in ("Example::", "Examples::"):
                body = []
                for following in lines[index + 1 :]:
                    if following.strip() and not following.startswith(" "):
                        break
                    body.append(following)
                examples.append(pytest.param(entry, textwrap.dedent("\n".join(body)).strip(), id=entry))
    return examples


@pytest.mark.parametrize(("entry", "example"), docstring_examples())
def test_docstring_example(
    entry: str, example: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    parsed = _yaml_or_none(example)
    if example.startswith(">>>"):
        _run_doctest(entry, example, tmp_path, monkeypatch)
    elif isinstance(parsed, dict):
        config = tmp_path / "example.yaml"
        config.write_text(example)
        _check_config(capsys, config, parsed)
    elif example.startswith("python -m lit_nnopt"):
        monkeypatch.chdir(REPO)  # the commands name configs/ as a user in the repository would
        for command in example.splitlines():
            arguments = shlex.split(command, comments=True)[3:]
            assert arguments and arguments[0] in CLI_SUBCOMMANDS, f"{entry}: cannot check `{command}`"
            parse_with_cli(capsys, *arguments)
    else:
        import lightning.pytorch as pl
        import torch

        monkeypatch.chdir(tmp_path)
        # What the examples take as given: a Trainer, torch, and a model to optimize.
        namespace = {
            "Trainer": pl.Trainer,
            "torch": torch,
            "model": torch.nn.Linear(4, 2),
            entry.rsplit(".", 1)[1]: resolve(entry),
        }
        exec(compile(example, f"{entry} docstring", "exec"), namespace)


def _run_doctest(entry: str, example: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # where a Trainer without default_root_dir writes
    test = doctest.DocTestParser().get_doctest(example, {}, entry, None, 0)
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    result = runner.run(test, out=report.append)
    assert result.attempted > 0, f"{entry}: no doctest was found"
    assert result.failed == 0, f"{entry}: {result.failed} of {result.attempted} examples failed:\n" + "".join(report)


def _yaml_or_none(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def test_docstring_examples_are_found() -> None:
    found = {param.values[0] for param in docstring_examples()}
    assert {
        "lit_nnopt.callbacks.EarlyStopping",
        "lit_nnopt.app.RunPictures",
        "lit_nnopt.callbacks.InterruptCheckpoint",
    } <= found


# The README as a front page.


def test_readme_is_a_front_page_with_the_commands_ci_runs() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250, "README.md is a front page: move details to docs/"
    ci_commands = [
        line.replace(" -q", "")
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line.startswith(("pip install", "python -m pytest"))
    ]
    assert len(ci_commands) >= 2, "the CI script's install and test commands were not found"
    for command in ci_commands:
        assert command in readme, f"README.md must show the command CI runs: {command}"


def test_readme_links_point_to_files_that_exist() -> None:
    readme = (REPO / "README.md").read_text()
    targets = re.findall(r"\]\((?!https?://)([^)#\s]+)", readme)
    assert targets, "no relative links found in README.md"
    missing = [target for target in targets if not (REPO / target).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def readme_cli_commands() -> list[str]:
    """The ``python -m lit_nnopt fit|validate|test|predict`` commands of the README's bash blocks."""
    commands = []
    for block in fenced_blocks(REPO / "README.md"):
        if block.language != "bash":
            continue
        for command in block.code.replace("\\\n", " ").splitlines():
            words = shlex.split(command, comments=True)
            if words[:3] == ["python", "-m", "lit_nnopt"] and words[3:4] and words[3] in CLI_SUBCOMMANDS:
                commands.append(command)
    return commands


def test_readme_commands_parse_with_the_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    commands = readme_cli_commands()
    assert {shlex.split(command)[3] for command in commands} >= {"fit", "test"}, f"found only {commands}"
    monkeypatch.chdir(REPO)  # the commands name configs/ as a user in a clone would
    for command in commands:
        parse_with_cli(capsys, *shlex.split(command, comments=True)[3:])
