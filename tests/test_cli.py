"""The command line, end to end on the real MNIST, and its errors."""

import gzip
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import CONFIGS, REPO, link_mnist, run_cli


def _summary(root: Path) -> dict:
    (path,) = root.rglob("summary.json")
    return json.loads(path.read_text())


def _no_traceback(result) -> None:
    assert "Traceback" not in result.stderr + result.stdout


@pytest.fixture(scope="module")
def one_epoch(mnist_dir, tmp_path_factory):
    """One epoch of configs/adam.yaml through the CLI; the run folder it leaves."""
    root = tmp_path_factory.mktemp("adam")
    result = run_cli(
        "fit", "--config", str(CONFIGS / "adam.yaml"), "--data.data_dir", str(mnist_dir),
        "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(root),
    )
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
        "validate", "--config", str(CONFIGS / "adam.yaml"), "--data.data_dir", str(mnist_dir),
        "--ckpt_path", best, "--trainer.default_root_dir", str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reported = _summary(one_epoch)["best"]["val_acc"]
    (printed,) = re.findall(r"val_acc\s*│\s*([0-9.]+)", result.stdout)
    assert float(printed) == pytest.approx(reported, abs=1e-6)


def test_test_subcommand_writes_test_metrics(one_epoch, mnist_dir, tmp_path):
    best = _summary(one_epoch)["best_checkpoint"]
    result = run_cli(
        "test", "--config", str(CONFIGS / "adam.yaml"), "--data.data_dir", str(mnist_dir),
        "--ckpt_path", best, "--trainer.default_root_dir", str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert _summary(tmp_path)["final"]["test_acc"] >= 0.95


def test_print_config_shows_the_resolved_config():
    result = run_cli("fit", "--config", str(CONFIGS / "adam.yaml"), "--print_config")
    assert result.returncode == 0, result.stderr
    assert "class_path: torch.optim.Adam" in result.stdout and "val_split: 0.2" in result.stdout


def test_help_lists_the_extra_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "compare" in result.stdout and "new" in result.stdout


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


def _fit_on(data_dir: Path, tmp_path: Path, *extra: str):
    return run_cli(
        "fit", "--config", str(CONFIGS / "adam.yaml"), "--data.data_dir", str(data_dir),
        "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.max_epochs", "1", *extra,
    )


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
