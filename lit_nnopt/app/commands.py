"""The commands of ``python -m lit_nnopt`` besides LightningCLI's fit, validate, test and predict."""

EXTRA_COMMANDS = {
    "compare": "Train several configs and compare them in a table and a plot.",
    "tune": "Search a config's hyperparameters with Optuna; write the best as a config.",
    "new": "Start a new Lightning project from lit_nnopt's cookiecutter template.",
    "bench": "Time lit_nnopt against a hand-written training loop, on the CPU or a GPU.",
}
