import csv
import shlex
from pathlib import Path

import pytest
import torch
{% if cookiecutter.example == "mnist" -%}
from lit_nnopt import MNISTDataModule, callbacks
{%- else -%}
from lit_nnopt import callbacks
{%- endif %}

from {{ cookiecutter.project_slug }}.cli import build_cli, main
from {{ cookiecutter.project_slug }}.data import SyntheticDataModule
from {{ cookiecutter.project_slug }}.model import Classifier


def _callback(trainer, kind):
    (found,) = [callback for callback in trainer.callbacks if isinstance(callback, kind)]
    return found


def test_the_default_config_builds_the_model_the_data_and_the_lit_nnopt_callbacks(configs):
    cli = build_cli(["--config", str(configs / "default.yaml")], run=False)
    assert isinstance(cli.model, Classifier) and cli.model.hparams.hidden_size == 128
{%- if cookiecutter.example == "mnist" %}
    assert isinstance(cli.datamodule, MNISTDataModule)
{%- else %}
    assert isinstance(cli.datamodule, SyntheticDataModule)
{%- endif %}
    assert _callback(cli.trainer, callbacks.EarlyStopping).restore_best_weights is True
    for kind in (callbacks.ReduceLROnPlateau, callbacks.GradientClipping, callbacks.LearningRateMonitor):
        _callback(cli.trainer, kind)


def test_fit_trains_logs_the_learning_rate_and_saves_a_checkpoint_that_reloads(configs, quick_fit_args):
    cli = build_cli(["fit", "--config", str(configs / "default.yaml"), *quick_fit_args])
    assert isinstance(cli.datamodule, SyntheticDataModule)
    assert cli.trainer.current_epoch == 2
    log_dir = Path(cli.trainer.log_dir)
    with open(log_dir / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    assert {"val_loss", "val_acc", "train_loss", "lr-Adam"} <= set(rows[0])
    assert [float(row["val_acc"]) for row in rows if row["val_acc"]][-1] > 0.5  # chance is 0.1
    assert (log_dir / "config.yaml").is_file()
    reloaded = Classifier.load_from_checkpoint(cli.trainer.checkpoint_callback.best_model_path)
    assert reloaded.hparams.hidden_size == cli.model.hparams.hidden_size


def test_fit_names_the_best_checkpoint_which_holds_the_restored_weights(configs, quick_fit_args, capsys):
    cli = build_cli(["fit", "--config", str(configs / "default.yaml"), *quick_fit_args])
    best = cli.trainer.checkpoint_callback.best_model_path
    out = capsys.readouterr().out
    # The fit's own config and options, so that the printed line tests the same data and model.
    test_args = ["test", "--config", str(configs / "default.yaml"), *quick_fit_args, "--ckpt_path", best]
    assert "Test it with: " + shlex.join(["python", "-m", "{{ cookiecutter.project_slug }}", *test_args]) in out
    saved = torch.load(best, weights_only=True)["state_dict"]
    in_memory = cli.model.state_dict()  # what EarlyStopping(restore_best_weights=True) left
    assert saved.keys() == in_memory.keys()
    assert all(torch.equal(saved[name], in_memory[name]) for name in saved)


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluating_without_a_checkpoint_is_refused_in_one_paragraph(configs, capsys, subcommand):
    with pytest.raises(SystemExit) as stop:
        main([subcommand, "--config", str(configs / "default.yaml")])
    err = capsys.readouterr().err
    assert stop.value.code == 1
    assert f"`{subcommand}` needs trained weights and no --ckpt_path was given" in err
    assert "Traceback" not in err
