"""The command line, end to end on the real MNIST, and its errors."""

import csv
import gzip
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from lit_nnopt.app.commands import EXTRA_COMMANDS
from tests.helpers import CONFIGS, REPO, cli_fit, link_mnist, run_cli

# Every test here runs the command line in a subprocess, as a user would.
pytestmark = pytest.mark.slow


def _summary(root: Path) -> dict:
    (path,) = root.rglob("summary.json")
    return json.loads(path.read_text())


def _no_traceback(result) -> None:
    assert "Traceback" not in result.stderr + result.stdout


@pytest.fixture(scope="module")
def one_epoch(mnist_dir, tmp_path_factory):
    """One epoch of configs/adam.yaml through the CLI; the run folder it leaves."""
    root = tmp_path_factory.mktemp("adam")
    result = cli_fit("adam.yaml", mnist_dir, root, "--trainer.max_epochs", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_one_epoch_of_adam_reaches_95_percent(one_epoch):
    summary = _summary(one_epoch)
    assert summary["epochs_run"] == 1
    assert summary["final"]["val_acc"] >= 0.95
    assert summary["stop_reason"] == "max_epochs (1) reached"
    assert {"torch", "lightning"} <= set(summary["versions"])


def test_checkpoints_hold_primitive_hparams(one_epoch):
    (last,) = one_epoch.rglob("last.ckpt")
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["hyper_parameters"]["net"]["class_path"] == "lit_nnopt.MLP"
    assert checkpoint["hyper_parameters"]["optimizer"]["init_args"]["lr"] == 0.002
    assert list(one_epoch.rglob("best-*.ckpt"))


def test_validate_from_the_best_checkpoint_reproduces_the_figures(one_epoch, mnist_dir, tmp_path):
    best = _summary(one_epoch)["best_checkpoint"]
    result = run_cli(
        "validate",
        "--config",
        str(CONFIGS / "adam.yaml"),
        "--data.data_dir",
        str(mnist_dir),
        "--ckpt_path",
        best,
        "--trainer.default_root_dir",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reported = _summary(one_epoch)["best"]["val_acc"]
    (printed,) = re.findall(r"val_acc\s*│\s*([0-9.]+)", result.stdout)
    assert float(printed) == pytest.approx(reported, abs=1e-6)


def test_a_test_of_a_checkpoint_from_another_folder_joins_its_run(one_epoch, mnist_dir, tmp_path):
    best = _summary(one_epoch)["best_checkpoint"]
    result = run_cli(
        "test",
        "--config",
        str(CONFIGS / "adam.yaml"),
        "--data.data_dir",
        str(mnist_dir),
        "--ckpt_path",
        best,
        "--trainer.default_root_dir",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # The checkpoint's run folder, not the folder given: one run, one record.
    assert "writing into the checkpoint's run folder" in result.stderr
    assert _summary(one_epoch)["final"]["test_acc"] >= 0.95 and not list(tmp_path.iterdir())


def test_print_config_shows_the_resolved_config():
    result = run_cli("fit", "--config", str(CONFIGS / "adam.yaml"), "--print_config")
    assert result.returncode == 0, result.stderr
    assert "class_path: torch.optim.Adam" in result.stdout and "val_split: 0.2" in result.stdout


def test_help_lists_the_extra_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for name, description in EXTRA_COMMANDS.items():
        assert re.search(rf"^\s+{name}\s+{re.escape(description.split()[0])}", result.stdout, re.M), name


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model.no_such_key", "1"], "no_such_key"),
        (["--data.batch_size", "sixty-four"], "batch_size"),
        (["--optimizer.lr", "-0.1"], "lr` must be a positive number"),
    ],
)
def test_bad_config_values_fail_clearly(args, message, tmp_path):
    result = run_cli("fit", "--config", str(CONFIGS / "adam.yaml"), "--trainer.default_root_dir", str(tmp_path), *args)
    assert result.returncode != 0
    assert message in result.stderr
    _no_traceback(result)


def _fit_on(data_dir: Path, tmp_path: Path, *extra: str, config: str = "adam.yaml"):
    return cli_fit(config, data_dir, tmp_path / "runs", "--trainer.max_epochs", "1", *extra)


def test_missing_data_offline_fails_clearly(tmp_path):
    result = _fit_on(tmp_path / "empty", tmp_path, "--data.download", "false")
    assert result.returncode != 0
    assert "files missing" in result.stderr and "--data.data_dir" in result.stderr
    _no_traceback(result)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_file_is_refused_by_name_before_training(mnist_dir, tmp_path, damage):
    raw = link_mnist(mnist_dir, tmp_path / "data")
    labels = raw / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(labels.read_bytes()))
    if damage == "truncate":
        content = content[:-100]
    else:
        content[5000] ^= 0xFF
    labels.unlink()
    labels.write_bytes(gzip.compress(bytes(content)))
    result = _fit_on(tmp_path / "data", tmp_path)
    assert result.returncode != 0
    assert "t10k-labels-idx1-ubyte.gz" in result.stderr and "MD5" in result.stderr
    assert "Epoch 0" not in result.stdout
    _no_traceback(result)


def test_console_script_is_installed():
    script = shutil.which("lit-nnopt", path=os.path.dirname(os.sys.executable))
    assert script, "pip install -e . should install the lit-nnopt console script"


def test_github_workflow_is_valid():
    from check_jsonschema import main as check_jsonschema

    workflow = REPO / ".github" / "workflows" / "ci.yml"
    with pytest.raises(SystemExit) as exit_status:
        check_jsonschema(["--builtin-schema", "vendor.github-workflows", str(workflow)])
    assert exit_status.value.code == 0


# -- the console, run folders and checkpoints as a user meets them (issue 18) ---------------------

_NOISE = re.compile(r"warn|deprecat|tip:|💡|litlogger|Received SIGTERM", re.IGNORECASE)


@pytest.fixture(scope="module")
def short_fit(mnist_dir, tmp_path_factory):
    """A short `fit` of adam.yaml with the default logger (W&B, offline); its output and root folder."""
    root = tmp_path_factory.mktemp("short")
    result = run_cli(
        "fit",
        "--config",
        str(CONFIGS / "adam.yaml"),
        "--data.data_dir",
        str(mnist_dir),
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "40",
        "--trainer.limit_val_batches",
        "5",
        cwd=root,  # runs/ below it, as for a user; a `lit_nnopt/` folder there would shadow an editable install
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (root / "runs" / "lit_nnopt").iterdir()
    return result, root, run


def test_a_short_fit_prints_no_warning_or_tip(short_fit):
    result, _, _ = short_fit
    noise = [line for line in (result.stdout + result.stderr).splitlines() if _NOISE.search(line)]
    assert noise == []


def test_fit_ends_with_the_best_checkpoint_and_the_command_that_tests_it_in_the_same_run_folder(short_fit):
    result, root, run = short_fit
    best = _summary(run)["best_checkpoint"]
    assert f"lit_nnopt: best checkpoint (val_acc {_summary(run)['best']['val_acc']:.4f}): {best}" in result.stdout
    (command,) = [line for line in result.stdout.splitlines() if line.startswith("Test it with: ")]
    args = shlex.split(command.removeprefix("Test it with: python -m lit_nnopt "))
    assert args[0] == "test" and args[-2:] == ["--ckpt_path", best]
    fit_config = (run / "config.yaml").read_text()
    tested = run_cli(*args, "--trainer.limit_test_batches", "3", cwd=root)
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert [path.name for path in (root / "runs" / "lit_nnopt").iterdir()] == [run.name]  # no new folder
    assert (run / "config.yaml").read_text() == fit_config and (run / "test_config.yaml").is_file()
    assert _summary(run)["final"]["test_acc"] > 0.5 and (run / "confusion_matrix.png").is_file()
    assert not [line for line in (tested.stdout + tested.stderr).splitlines() if _NOISE.search(line)]


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluating_without_a_checkpoint_is_refused_naming_the_best_one(short_fit, mnist_dir, subcommand):
    _, root, run = short_fit
    result = run_cli(
        subcommand,
        "--config",
        str(CONFIGS / "adam.yaml"),
        "--data.data_dir",
        str(mnist_dir),
        cwd=root,
    )
    assert result.returncode == 1
    assert f"`{subcommand}` needs trained weights and no --ckpt_path was given" in result.stderr
    assert f"The best run of this config by val_acc ({run.name}, " in result.stderr
    assert f"checkpoint at {_summary(run)['best_checkpoint']}: add `--ckpt_path best`" in result.stderr
    _no_traceback(result)


def test_predict_with_the_best_checkpoint_writes_a_csv_in_the_run_folder(short_fit, mnist_dir):
    _, root, run = short_fit
    result = run_cli(
        "predict",
        "--config",
        str(CONFIGS / "adam.yaml"),
        "--data.data_dir",
        str(mnist_dir),
        "--ckpt_path",
        "best",
        "--trainer.limit_predict_batches",
        "1",
        cwd=root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = _summary(run)
    score = summary["best"]["val_acc"]
    used = f"predict: using {summary['best_checkpoint']}, the best checkpoint by val_acc ({score:.4f}) of run"
    assert f"{used} {run.name}, the only run of this config" in result.stderr
    path = run / "predictions.csv"
    with path.open() as file:
        rows = list(csv.DictReader(file))
    assert f"predictions ({len(rows)} rows): {path.relative_to(root)}" in result.stdout
    assert list(rows[0]) == ["index", "prediction", "class_name", "probability"]
    assert [int(row["index"]) for row in rows] == list(range(len(rows))) and len(rows) > 10
    assert all(row["prediction"] == row["class_name"] and 0.1 <= float(row["probability"]) <= 1 for row in rows)
    assert sum(row["prediction"] == "7" for row in rows[:1]) == 1  # the first test image is a 7


@pytest.mark.parametrize("args", [["--model.no_such_key", "1"], ["--data.batch_size", "sixty-four"]])
def test_a_parser_error_is_the_error_and_a_help_hint(args, tmp_path):
    result = run_cli("fit", "--config", str(CONFIGS / "adam.yaml"), "--trainer.default_root_dir", str(tmp_path), *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) <= 3 and "usage:" not in result.stderr
    assert lines[0].startswith("lit_nnopt: error:")
    assert lines[-1] == "See `python -m lit_nnopt fit --help` for the options."


def test_a_data_error_leaves_no_run_folder_and_no_sync_hint(mnist_dir, tmp_path):
    raw = link_mnist(mnist_dir, tmp_path / "data")
    labels = raw / "t10k-labels-idx1-ubyte.gz"
    content = gzip.decompress(labels.read_bytes())[:-100]
    labels.unlink()
    labels.write_bytes(gzip.compress(content))
    result = _fit_on(tmp_path / "data", tmp_path)  # the default logger: W&B offline
    assert result.returncode == 1 and "MD5" in result.stderr
    assert "wandb sync" not in result.stderr and "EarlyStopping" not in result.stderr + result.stdout
    assert not [path for path in (tmp_path / "runs").rglob("*") if path.is_file()]


def test_runs_without_a_logger_in_one_folder_never_overwrite_each_other(mnist_dir, tmp_path):
    args = ["--trainer.logger", "false", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    for _ in range(2):
        result = _fit_on(mnist_dir, tmp_path, *args)
        assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all(re.fullmatch(r"fit-\d{8}-\d{6}(-\d+)?", run.name) for run in runs)
    for run in runs:
        assert {"config.yaml", "summary.json", "learning_curves.png", "checkpoints"} <= {p.name for p in run.iterdir()}


# -- a run's record tells the truth (issue 26) ------------------------------------------------------


def test_a_diverged_fit_says_so_exits_3_and_offers_no_checkpoint(mnist_dir, tmp_path):
    result = _fit_on(
        mnist_dir,
        tmp_path,
        "--optimizer.lr",
        "1e25",
        "--trainer.logger",
        "false",
        "--trainer.limit_train_batches",
        "5",
        "--trainer.limit_val_batches",
        "1",
        config="sgd.yaml",
    )
    assert result.returncode == 3, result.stderr[-3000:]
    summary = _summary(tmp_path / "runs")
    assert summary["status"] == "diverged" and summary["problem_epoch"] == 0
    assert summary["history"][0]["non_finite"] == ["train_loss", "val_loss"]
    assert "lit_nnopt: this run diverged: train_loss, val_loss became NaN or infinite in epoch 0." in result.stderr
    assert "Lower the learning rate (this run's: 1e+25)" in result.stderr
    assert "--trainer.callbacks+=lit_nnopt.callbacks.NaNGuard" in result.stderr
    assert "best checkpoint" not in result.stdout and "Test it with" not in result.stdout
    assert re.search(r"status\s*│\s*diverged", result.stdout)
    _no_traceback(result)
