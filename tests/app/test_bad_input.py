"""Bad input fails before training, with its exit status and a message that says what to fix, and no traceback.

Unknown keys, wrong types, lr <= 0, a missing data folder and damaged IDX files are in
test_cli.py. Here ``main()`` runs in this process: the same code path as ``python -m
lit_nnopt`` up to its exit status, without paying for a new interpreter per case.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_nnopt.app.errors import ConfigError, explain_error
from lit_nnopt.app.main import DEBUG_ENV, main
from lit_nnopt.model import MNISTClassifier
from lit_nnopt.networks import MLP
from tests.helpers import CONFIGS, REPO, link_mnist

ADAM = str(CONFIGS / "adam.yaml")
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # root ignores file permissions


@pytest.fixture(autouse=True)
def _command_line(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lit_nnopt"])  # not pytest's: LightningCLI reads it too


def _main(capfd, *args: str) -> tuple[int, str]:
    """Exit status and stderr of ``python -m lit_nnopt ARGS``."""
    with pytest.raises(SystemExit) as stop:
        main(list(args))
    stderr = capfd.readouterr().err
    assert "Traceback" not in stderr
    return stop.value.code, stderr


def _fit(capfd, tmp_path: Path, *args: str, config: str = ADAM) -> tuple[int, str]:
    # No logger: a W&B run started in this process would outlive the test.
    return _main(
        capfd,
        "fit",
        "--config",
        config,
        "--trainer.default_root_dir",
        str(tmp_path / "runs"),
        "--trainer.logger",
        "false",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "5",
        *args,
    )


@pytest.mark.parametrize("dropout", ["1.0", "-0.1"])
def test_dropout_outside_0_1(capfd, tmp_path, dropout):
    code, stderr = _fit(capfd, tmp_path, "--model.net.init_args.dropout", dropout)
    assert code == 1
    assert f"`model.net.init_args.dropout` must lie in [0, 1), got {float(dropout)}" in stderr


def test_negative_patience_of_a_callback(capfd, tmp_path):
    early_stopping = str(CONFIGS / "early_stopping.yaml")  # its only callback: the one the option addresses
    code, stderr = _fit(capfd, tmp_path, "--trainer.callbacks.init_args.patience", "-1", config=early_stopping)
    assert code == 1
    assert (
        "`trainer.callbacks[0].init_args.patience` of lit_nnopt.callbacks.EarlyStopping must be >= 0, got -1" in stderr
    )


def test_negative_patience_of_a_scheduler(capfd, tmp_path):
    code, stderr = _fit(
        capfd,
        tmp_path,
        "--lr_scheduler",
        "torch.optim.lr_scheduler.ReduceLROnPlateau",
        "--lr_scheduler.patience",
        "-2",
        config=str(CONFIGS / "sgd.yaml"),
    )
    assert code == 1
    assert "`lr_scheduler.init_args.patience` of torch.optim.lr_scheduler.ReduceLROnPlateau must be >= 0" in stderr


@pytest.mark.parametrize("val_split", ["0", "1", "1.5"])
def test_val_split_outside_0_1(capfd, tmp_path, val_split):
    code, stderr = _fit(capfd, tmp_path, "--data.val_split", val_split)
    assert code == 1
    assert "`val_split` must lie strictly between 0 and 1" in stderr


@pytest.mark.parametrize("batch_size", ["0", "-64"])
def test_batch_size_not_positive(capfd, tmp_path, batch_size):
    code, stderr = _fit(capfd, tmp_path, "--data.batch_size", batch_size)
    assert code == 1
    assert f"`batch_size` must be a positive number of samples, got {batch_size}" in stderr


def test_eval_batch_size_larger_than_the_validation_split(capfd, tmp_path, mnist_dir):
    code, stderr = _fit(
        capfd, tmp_path, "--data.data_dir", str(mnist_dir), "--data.eval_batch_size", "5000", "--data.val_split", "0.05"
    )
    assert code == 1
    assert "`eval_batch_size` 5000 is larger than the val split (3000 samples)" in stderr
    assert "Epoch 0" not in capfd.readouterr().out


# -- data folder ------------------------------------------------------------------------------


def test_empty_data_dir(capfd, tmp_path):
    (tmp_path / "data").mkdir()
    code, stderr = _fit(capfd, tmp_path, "--data.data_dir", str(tmp_path / "data"), "--data.download", "false")
    assert code == 1
    assert "files missing: train-images-idx3-ubyte" in stderr and "--data.data_dir" in stderr


def test_a_data_file_that_is_not_gzip(capfd, tmp_path, mnist_dir):
    raw = link_mnist(mnist_dir, tmp_path / "data")
    (raw / "train-labels-idx1-ubyte.gz").unlink()
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(b"<html>404 Not Found</html>")
    code, stderr = _fit(capfd, tmp_path, "--data.data_dir", str(tmp_path / "data"))
    assert code == 1
    assert "train-labels-idx1-ubyte.gz" in stderr and "damaged or incomplete" in stderr


@pytest.mark.skipif(AS_ROOT, reason="root reads files whatever their permissions")
def test_an_unreadable_data_file(capfd, tmp_path, mnist_dir):
    raw = link_mnist(mnist_dir, tmp_path / "data")
    labels = raw / "t10k-labels-idx1-ubyte.gz"
    labels.unlink()
    labels.write_bytes(gzip.compress(b"\0" * 16))
    labels.chmod(0)
    code, stderr = _fit(capfd, tmp_path, "--data.data_dir", str(tmp_path / "data"))
    assert code == 1
    assert "Could not read" in stderr and "Permission denied" in stderr


# -- checkpoints ------------------------------------------------------------------------------


def _save(path: Path, model: MNISTClassifier, **hparams) -> Path:
    """A checkpoint as validate reads it: weights and hyperparameters."""
    saved = {"state_dict": model.state_dict(), "pytorch-lightning_version": "2.6.6"}
    if hparams.get("with_hparams", True):
        saved["hyper_parameters"] = {**dict(model.hparams), **hparams.get("extra", {})}
    torch.save(saved, path)
    return path


def _adam_mlp() -> MNISTClassifier:
    """adam.yaml's model, as the CLI builds it."""
    return MNISTClassifier(
        net=MLP(hidden_sizes=[128], dropout=0.2, init="keras"),
        optimizer={"class_path": "torch.optim.Adam", "init_args": {"lr": 0.002}},
        lr_scheduler={"class_path": "torch.optim.lr_scheduler.ExponentialLR", "init_args": {"gamma": 0.85}},
    )


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_a_missing_checkpoint(capfd, tmp_path, subcommand):
    code, stderr = _main(
        capfd,
        subcommand,
        "--config",
        ADAM,
        "--trainer.default_root_dir",
        str(tmp_path),
        "--ckpt_path",
        str(tmp_path / "nope.ckpt"),
    )
    assert code == 1
    assert f"--ckpt_path {tmp_path / 'nope.ckpt'} does not exist" in stderr


@pytest.mark.parametrize(
    "content, message",
    [(b"trainer: {}\n", "not written by torch.save"), (b"PK\x03\x04 cut short", "truncated or damaged")],
)
def test_a_file_that_is_not_a_checkpoint(capfd, tmp_path, content, message):
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    code, stderr = _main(
        capfd, "validate", "--config", ADAM, "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(path)
    )
    assert code == 1
    assert message in stderr


def test_a_checkpoint_of_another_network_is_evaluated_as_trained_and_says_so(capfd, tmp_path, mnist_dir):
    checkpoint = _save(tmp_path / "mlp.ckpt", _adam_mlp())
    main(
        [
            "validate",
            "--config",
            str(CONFIGS / "cnn.yaml"),
            "--data.data_dir",
            str(mnist_dir),
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.logger",
            "false",
            "--trainer.limit_val_batches",
            "2",
            "--ckpt_path",
            str(checkpoint),
        ]
    )
    stderr = capfd.readouterr().err
    assert "lit_nnopt: the model is built from the checkpoint's hyperparameters, net lit_nnopt.networks.MLP(" in stderr
    assert "not from the config's lit_nnopt.CNN(channels=[32, 64]" in stderr


def test_a_checkpoint_of_another_model_class(capfd, tmp_path):
    checkpoint = _save(tmp_path / "other.ckpt", _adam_mlp(), extra={"dropout_rate": 0.5})
    code, stderr = _main(
        capfd, "validate", "--config", ADAM, "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(checkpoint)
    )
    assert code == 1
    assert "was written by another model: MNISTClassifier takes no dropout_rate" in stderr


def test_a_checkpoint_without_hyperparameters_that_does_not_fit(capfd, tmp_path):
    checkpoint = _save(tmp_path / "bare.ckpt", _adam_mlp(), with_hparams=False)
    code, stderr = _main(
        capfd,
        "validate",
        "--config",
        str(CONFIGS / "cnn.yaml"),
        "--trainer.default_root_dir",
        str(tmp_path),
        "--ckpt_path",
        str(checkpoint),
    )
    assert code == 1
    assert f"{checkpoint} does not fit this config: the model has net.features.0.weight" in stderr
    assert "--config <run folder>/config.yaml" in stderr


def test_resuming_with_another_optimizer(capfd, tmp_path):
    checkpoint = _save(tmp_path / "adam.ckpt", _adam_mlp())
    code, stderr = _main(
        capfd,
        "fit",
        "--config",
        str(CONFIGS / "sgd.yaml"),
        "--trainer.default_root_dir",
        str(tmp_path),
        "--ckpt_path",
        str(checkpoint),
    )
    assert code == 1
    assert "the checkpoint's optimizer is torch.optim.Adam, this config's is torch.optim.SGD" in stderr


def test_ckpt_path_last_without_a_run_to_resume(capfd, tmp_path):
    code, stderr = _main(
        capfd, "validate", "--config", ADAM, "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", "last"
    )
    assert code == 1
    assert f"--ckpt_path last: no run of this config under {tmp_path / 'lit_nnopt'} has a last.ckpt" in stderr


# -- where the run writes ---------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--trainer.default_root_dir", "--checkpoint.dirpath"])
def test_a_run_folder_below_a_file(capfd, tmp_path, option):
    (tmp_path / "a_file").write_text("")
    args = ["--trainer.default_root_dir", str(tmp_path / "runs"), option, str(tmp_path / "a_file" / "runs")]
    code, stderr = _main(capfd, "fit", "--config", ADAM, *args)
    assert code == 1
    assert f"Cannot write the run's files to {tmp_path / 'a_file' / 'runs'}: {tmp_path / 'a_file'} is a file" in stderr
    assert f"Set `{option}` to a folder you can write to" in stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(AS_ROOT, reason="root writes to any folder whatever its permissions")
def test_a_read_only_run_folder(capfd, tmp_path):
    (tmp_path / "locked").mkdir(mode=0o555)
    locked_runs = str(tmp_path / "locked" / "runs")
    code, stderr = _main(capfd, "fit", "--config", ADAM, "--trainer.default_root_dir", locked_runs)
    assert code == 1
    assert "is not writable" in stderr


# -- the config file --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", "it is not text (not UTF-8)"),
        (b"# Title\n\nSome prose: with a colon: here\n", "it is not valid YAML at line 3, column 25"),
        (b"- trainer\n- model\n", "it holds a YAML list, not a mapping of keys"),
        (b"just some words\n", "it holds a YAML str, not a mapping of keys"),
    ],
    ids=["binary", "markdown", "list", "scalar"],
)
def test_a_config_that_is_not_a_yaml_mapping(capfd, tmp_path, content, reason):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    code, stderr = _main(capfd, "fit", "--config", str(path))
    assert code == 2
    assert f"--config {path} is not a lit_nnopt config: {reason}" in stderr and "configs/adam.yaml" in stderr


def test_a_missing_config_file(capfd, tmp_path):
    code, stderr = _main(capfd, "fit", "--config", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert "File does not exist" in stderr and "nope.yaml" in stderr


# -- the debug flag ---------------------------------------------------------------------------


def test_the_debug_flag_shows_the_traceback(monkeypatch, tmp_path):
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(ConfigError, match="dropout"):
        main(
            ["fit", "--config", ADAM, "--trainer.default_root_dir", str(tmp_path), "--model.net.init_args.dropout", "2"]
        )


@pytest.mark.slow  # the command line in a subprocess
def test_the_exit_status_reaches_the_shell(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lit_nnopt",
            "fit",
            "--config",
            ADAM,
            "--trainer.default_root_dir",
            str(tmp_path),
            "--model.net.init_args.dropout",
            "1.5",
        ],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-2].startswith("lit_nnopt: error: `model.net.init_args.dropout`")
    assert "Traceback" not in result.stderr


# -- parser errors keep their reason and name the nearest valid name (issue 26) ----------------


def test_a_long_option_must_be_spelled_out_and_the_nearest_is_named(capfd, tmp_path):
    code, stderr = _fit(capfd, tmp_path, "--trainer.max_epoch", "2")  # argparse took it for max_epochs
    assert code == 2
    assert "unrecognized arguments: --trainer.max_epoch 2. Did you mean --trainer.max_epochs?" in stderr


def test_a_misspelt_key_in_yaml_names_the_nearest(capfd, tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("trainer:\n  max_epoch: 3\n")
    code, stderr = _main(capfd, "fit", "--config", str(config))
    assert code == 2
    assert "does not accept option 'trainer.max_epoch'. Did you mean trainer.max_epochs?" in stderr


@pytest.mark.parametrize(
    ("value", "reason", "nearest"),
    [
        ("torch.optim.Adamm", "module 'torch.optim' has no attribute 'Adamm'", "torch.optim.Adam"),
        ("torch.optimm.Adam", "module 'torch' has no attribute 'optimm'", "torch.optim.Adam"),
        ("Adamm", "it is not an importable dotted path (module.Class)", "torch.optim.Adam"),
    ],
)
def test_a_class_that_cannot_be_imported_keeps_the_reason_and_names_the_nearest(
    capfd, tmp_path, value, reason, nearest
):
    code, stderr = _fit(capfd, tmp_path, "--optimizer", value)
    assert code == 2
    assert f"lit_nnopt: error: `--optimizer {value}`: {reason}. Did you mean {nearest}?\n" in stderr
    assert "more lines" not in stderr and "Subtypes" not in stderr


def test_a_yaml_line_without_its_colon_is_named_with_the_fix(capfd, tmp_path):
    config = tmp_path / "colon.yaml"
    config.write_text("trainer:\n  max_epochs 3\n")
    code, stderr = _main(capfd, "fit", "--config", str(config))
    assert code == 2
    assert "`trainer` in the config is the text 'max_epochs 3', not a section of keys" in stderr
    assert "a YAML line needs a colon and a space after its key (`max_epochs: 3`)" in stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU: --trainer.accelerator gpu runs")
def test_a_gpu_asked_for_on_a_machine_without_one_names_the_fix(capfd, tmp_path):
    code, stderr = _fit(capfd, tmp_path, "--trainer.accelerator", "gpu")
    assert code == 1
    assert "`--trainer.accelerator gpu` asks for a GPU and there is none to use" in stderr
    assert "`--trainer.accelerator cpu`" in stderr


def test_torch_and_torchvision_of_different_builds_name_the_reinstall():
    message = explain_error(RuntimeError("operator torchvision::nms does not exist"))
    assert "come from different builds" in message and "pip install --force-reinstall torch torchvision" in message


@pytest.mark.slow  # a new interpreter
def test_a_broken_torchvision_fails_every_command_with_the_reinstall_named(tmp_path):
    # A torchvision whose compiled operators do not load into this torch fails on import, as this stand-in does.
    (tmp_path / "torchvision").mkdir()
    (tmp_path / "torchvision" / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "lit_nnopt", "fit", "--config", ADAM, "--trainer.max_epochs", "0"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "come from different builds" in result.stderr and "--force-reinstall torch torchvision" in result.stderr
