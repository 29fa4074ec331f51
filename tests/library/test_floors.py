"""The floors that pyproject.toml declares are the versions CI tests (.ci/floor-constraints.txt)."""

from __future__ import annotations

import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from tests.helpers import REPO

FLOOR_CONSTRAINTS = REPO / ".ci" / "floor-constraints.txt"


def _pins() -> dict[str, Version]:
    lines = [line.strip() for line in FLOOR_CONSTRAINTS.read_text().splitlines()]
    pins = [Requirement(line) for line in lines if line and not line.startswith("#")]
    return {pin.name: Version(next(iter(pin.specifier)).version) for pin in pins}


def _floor(requirement: Requirement) -> Version | None:
    return next((Version(spec.version) for spec in requirement.specifier if spec.operator == ">="), None)


def test_each_floor_of_the_library_is_the_tested_version():
    assert "optuna" in _pins(), "tune and compare --storage need optuna 5's RetryHeartbeatStaleTrialCallback"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # The application's packages are pinned where lit_nnopt leans on a version's API (optuna's storage callbacks).
    extras = [Requirement(line) for name in ("cli", "dev") for line in project["optional-dependencies"][name]]
    requirements = [Requirement(line) for line in project["dependencies"]] + [r for r in extras if r.name in _pins()]
    pins = _pins()
    floors = {r.name: _floor(r) for r in requirements if r.name != "typing_extensions"}
    assert set(floors) == set(pins), "every library dependency is pinned at its floor, and the extras' named ones"
    for name, floor in floors.items():
        pinned = pins[name]
        # `torch>=2.4` is tested as 2.4.1: the floor's release, to the floor's precision.
        assert pinned.release[: len(floor.release)] == floor.release, f"{name}>={floor} but CI tests {pinned}"
    assert pins["pytorch-lightning"] == pins["lightning"]


def test_ci_runs_the_default_tier_on_the_floor_set():
    script = (REPO / ".ci" / "run").read_text()
    floor_part = script[script.index(".ci-floor-venv") :]
    assert 'pip install -q -e ".[dev]" -c .ci/floor-constraints.txt' in floor_part
    assert floor_part.index("python -m pytest\n") < floor_part.index("python -m pytest -m slow")
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    versions = [entry["versions"] for entry in workflow["jobs"]["test"]["strategy"]["matrix"]["include"]]
    assert versions[:2] == ["newest", "floor"]
