"""configs/sweep.yaml: a valid Bayesian sweep whose agent command lines parse with our CLI."""

import pytest
from wandb.sdk.launch.sweeps import utils as sweep_utils

from tests.helpers import CONFIGS, REPO, resolved_config

SWEEP = CONFIGS / "sweep.yaml"
# Where each swept value must land in the resolved config.
TARGETS = {
    "optimizer.lr": ("optimizer", "init_args", "lr"),
    "optimizer.weight_decay": ("optimizer", "init_args", "weight_decay"),
    "model.net.dropout": ("model", "net", "init_args", "dropout"),
    "data.batch_size": ("data", "batch_size"),
}


@pytest.fixture(scope="module")
def spec() -> dict:
    return sweep_utils.load_sweep_config(str(SWEEP))  # what `wandb sweep` reads


def test_sweep_is_bayesian_on_val_acc_over_the_four_hyperparameters(spec):
    assert spec["method"] == "bayes"
    assert spec["metric"] == {"name": "val_acc", "goal": "maximize"}
    assert set(spec["parameters"]) == set(TARGETS)
    for name, parameter in spec["parameters"].items():
        if "values" in parameter:
            assert len(parameter["values"]) > 1, name
        else:
            assert parameter["distribution"] in {"uniform", "log_uniform_values"}, name
            assert 0 <= parameter["min"] < parameter["max"], name


def _corner(spec: dict, end: str) -> dict:
    """One value per parameter: every minimum (end="min") or every maximum ("max")."""
    chosen = {}
    for name, parameter in spec["parameters"].items():
        values = parameter.get("values") or [parameter["min"], parameter["max"]]
        chosen[name] = values[0] if end == "min" else values[-1]
    return chosen


def agent_command(spec: dict, values: dict) -> list[str]:
    """The command line `wandb agent` runs for these values (wandb_agent.Agent._command_run)."""
    sweep_vars = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    sweep_vars.update(interpreter=["python"], env=["/usr/bin/env"])
    command = []
    for chunk in sweep_utils.create_sweep_command(list(spec["command"])):
        chunk = str(chunk)
        if chunk.startswith("${") and chunk.endswith("}"):
            command += sweep_vars.get(chunk[2:-1]) or []
        else:
            command.append(chunk)
    return command


def test_agent_runs_lit_nnopt_fit_on_the_adam_config(spec):
    command = agent_command(spec, _corner(spec, "min"))
    assert command[:7] == ["/usr/bin/env", "python", "-m", "lit_nnopt", "fit", "--config", "configs/adam.yaml"]
    assert (REPO / command[6]).is_file()  # the agent runs from the repository root


@pytest.mark.parametrize("end", ["min", "max"])
def test_agent_command_line_parses_and_sets_every_swept_value(spec, end, monkeypatch):
    monkeypatch.chdir(REPO)
    values = _corner(spec, end)
    config = resolved_config(agent_command(spec, values)[4:])
    for name, path in TARGETS.items():
        landed = config
        for key in path:
            landed = landed[key]
        assert landed == pytest.approx(values[name]), name
    assert config["optimizer"]["class_path"] == "torch.optim.Adam"  # the rest still comes from adam.yaml
