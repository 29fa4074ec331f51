"""W&B logging without an account: the automatic mode, the run folder, what an offline run holds."""

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from wandb.proto import wandb_internal_pb2

from lit_nnopt import MNISTClassifier
from lit_nnopt.app.loggers import CONFIG_COPY, AutoWandbLogger, has_api_key, resolve_mode
from tests.helpers import CONFIGS, REPO, png_size, resolved_config, run_cli

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # the shape of a W&B key, known to no server
_W_AND_B_ENV = ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_CONFIG_DIR", "WANDB_RUN_ID", "NETRC")


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    """A home without W&B credentials and an environment without W&B settings; returns the home."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in _W_AND_B_ENV:
        monkeypatch.delenv(name, raising=False)
    return home


def read_wandb_records(path: Path) -> list:
    """The records of a ``.wandb`` transaction log, decoded with wandb's own protobuf schema.

    The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic, version), then 32 KiB
    blocks of chunks, each with a 7-byte header (CRC, length, type: full, first, middle, last).
    """
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    block, position, pending, records = 32768, 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a chunk header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # full or last chunk
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


def _items(items) -> dict:
    # wandb writes a key either as `key` or, split at its dots and slashes, as `nested_key`.
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def _history(records: list) -> list[dict]:
    return [_items(record.history.item) for record in records if record.HasField("history")]


def _config(records: list) -> dict:
    config = {}
    for record in records:
        if record.HasField("config"):
            config.update(_items(record.config.update))
    return config


# -- choosing the mode ----------------------------------------------------------------


@pytest.mark.parametrize(
    "env_mode, mode, key, expected",
    [
        (None, "auto", True, "online"),
        (None, "auto", False, "offline"),
        (None, "offline", True, "offline"),
        (None, "online", False, "offline"),  # never prompt for a key or fail: log offline
        (None, "disabled", False, "disabled"),
        ("offline", "auto", True, "offline"),  # WANDB_MODE wins over the key...
        ("disabled", "online", True, "disabled"),  # ...and over the argument
        ("online", "offline", True, "online"),
        ("dryrun", "auto", True, "offline"),  # wandb's old names
        ("run", "auto", True, "online"),
        ("online", "auto", False, "offline"),
    ],
)
def test_mode_resolution(monkeypatch, env_mode, mode, key, expected):
    if env_mode is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", env_mode)
    resolved, reason = resolve_mode(mode, key)
    assert resolved == expected
    assert reason


def test_unknown_wandb_mode_in_the_environment_is_an_error(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="online, offline or disabled"):
        AutoWandbLogger()


def test_no_credentials_means_no_key(no_credentials):
    assert not has_api_key()


def test_api_key_in_the_environment(no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert has_api_key()


@pytest.mark.parametrize(
    "netrc_host, base_url, expected",
    [
        ("api.wandb.ai", None, True),  # what `wandb login` wrote before wandb 0.2x
        ("api.forge.coreweave.com", None, True),  # what it writes now
        ("github.com", None, False),
        ("wandb.example.com", "https://wandb.example.com", True),  # a self-hosted server
        ("api.wandb.ai", "https://wandb.example.com", False),  # a key for another server
    ],
)
def test_wandb_login_leaves_a_netrc_entry(no_credentials, monkeypatch, netrc_host, base_url, expected):
    (no_credentials / ".netrc").write_text(f"machine {netrc_host}\n  login user\n  password {FAKE_KEY}\n")
    if base_url:
        monkeypatch.setenv("WANDB_BASE_URL", base_url)
    assert has_api_key() is expected


def test_wandb_settings_file_names_the_server(no_credentials):
    (no_credentials / ".config" / "wandb").mkdir(parents=True)
    (no_credentials / ".config" / "wandb" / "settings").write_text("[default]\nbase_url = https://wandb.example.com\n")
    (no_credentials / ".netrc").write_text(f"machine wandb.example.com login user password {FAKE_KEY}\n")
    assert has_api_key()


# -- the logger's arguments and run folder --------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "sometimes"}, "`mode` can be auto, online, offline, disabled"),
        ({"watch": "weights"}, "`watch` can be gradients, parameters, all or None"),
        ({"watch_log_freq": 0}, "`watch_log_freq` must be"),
        ({"init_timeout": 0}, "`init_timeout` must be a positive"),
    ],
)
def test_logger_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AutoWandbLogger(**kwargs)


def test_run_folder_is_project_and_run_id_under_save_dir(tmp_path):
    logger = AutoWandbLogger(save_dir=str(tmp_path), project="mnist", id="abc123")
    assert logger.run_dir == tmp_path / "mnist" / "abc123"
    # trainer.log_dir is save_dir, and ModelCheckpoint joins save_dir, name and version:
    assert logger.save_dir == str(logger.run_dir) and logger.name == "" and logger.version == ""


def test_run_id_of_a_sweep_agent_is_used(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_RUN_ID", "fromagent")
    assert AutoWandbLogger(save_dir=str(tmp_path)).run_id == "fromagent"


def test_checkpoints_are_uploaded_only_online(no_credentials, monkeypatch, tmp_path):
    handed_to_wandb_logger = []
    monkeypatch.setattr(
        WandbLogger, "after_save_checkpoint", lambda self, callback: handed_to_wandb_logger.append(callback)
    )
    checkpoint = ModelCheckpoint(save_top_k=1)
    AutoWandbLogger(mode="offline", log_model=True, save_dir=str(tmp_path)).after_save_checkpoint(checkpoint)
    assert handed_to_wandb_logger == []
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    AutoWandbLogger(mode="online", log_model=True, save_dir=str(tmp_path)).after_save_checkpoint(checkpoint)
    assert handed_to_wandb_logger == [checkpoint]  # WandbLogger uploads it (at the end of training)


def test_watch_is_called_once_with_the_configured_arguments(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = AutoWandbLogger(save_dir=str(tmp_path), watch="all", watch_log_freq=5)
    calls = []
    monkeypatch.setattr(logger, "watch", lambda model, **kwargs: calls.append((model, kwargs)))
    model = MNISTClassifier()
    logger.log_graph(model)
    logger.log_graph(model)  # fit then test: one watch
    assert calls == [(model, {"log": "all", "log_freq": 5, "log_graph": False})]


def test_watch_is_off_by_default_and_settable_from_the_command_line():
    config = resolved_config(["fit", "--config", str(CONFIGS / "adam.yaml"), "--trainer.logger.watch", "gradients"])
    logger = config["trainer"]["logger"]
    assert logger["class_path"] in ("lit_nnopt.app.AutoWandbLogger", "lit_nnopt.app.loggers.AutoWandbLogger")
    assert logger["init_args"]["watch"] == "gradients"
    assert AutoWandbLogger().watch_log is None


def test_disabled_mode_writes_no_wandb_files(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = AutoWandbLogger(save_dir=str(tmp_path))
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"val_acc": 0.5}, step=0)
    logger.experiment.finish()
    assert logger.mode == "disabled"
    assert not (logger.run_dir / "wandb").exists()


def test_a_run_that_failed_before_logging_is_discarded_and_a_later_start_is_a_new_run(no_credentials, tmp_path):
    logger = AutoWandbLogger(mode="offline", save_dir=str(tmp_path))
    failed = logger.experiment
    logger.finalize("failed")
    assert not logger.run_dir.exists()
    again = logger.experiment  # not the finished run
    assert again is not failed and again.settings.mode == "offline"
    logger.log_metrics({"val_acc": 0.5}, step=0)
    logger.finalize("success")
    assert list((logger.run_dir / "wandb").glob(f"offline-run-*-{logger.run_id}"))


# -- offline runs, end to end ----------------------------------------------------------


def _short_run(command: str, mnist_dir: Path, root: Path, home: Path, *extra: str):
    return run_cli(
        command,
        "--config",
        str(CONFIGS / "adam.yaml"),
        "--data.data_dir",
        str(mnist_dir),
        "--trainer.default_root_dir",
        str(root),
        "--trainer.logger.save_dir",
        str(root),
        *extra,
        env={"HOME": str(home)},
        timeout=240,
    )


def _only_run_folder(root: Path) -> Path:
    (run_dir,) = (root / "lit_nnopt").iterdir()
    return run_dir


@pytest.fixture(scope="module")
def offline_fit(mnist_dir, tmp_path_factory):
    """A short `fit` with WANDB_MODE unset, no API key, HOME empty and no network."""
    root, home = tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        for name in _W_AND_B_ENV:
            patch.delenv(name, raising=False)
        result = _short_run(
            "fit",
            mnist_dir,
            root,
            home,
            "--trainer.max_epochs",
            "2",
            "--trainer.limit_train_batches",
            "10",
            "--trainer.limit_val_batches",
            "3",
        )
    assert result.returncode == 0, result.stderr[-3000:]
    return result, _only_run_folder(root)


@pytest.mark.slow  # the command line in a subprocess
def test_no_key_and_no_network_logs_offline_and_says_how_to_sync(offline_fit):
    result, run_dir = offline_fit
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "wandb sync" in line]
    assert "no API key was found" in line and str(run_dir / "wandb" / "offline-run-") in line


@pytest.mark.slow  # the command line in a subprocess
def test_one_run_folder_holds_checkpoints_config_summary_pictures_and_wandb(offline_fit):
    _, run_dir = offline_fit
    summary = json.loads((run_dir / "summary.json").read_text())
    assert Path(summary["best_checkpoint"]).parent == run_dir / "checkpoints"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "config.yaml").is_file()
    assert png_size(run_dir / "learning_curves.png") == (1500, 450)
    assert list((run_dir / "wandb").glob(f"offline-run-*-{run_dir.name}/run-{run_dir.name}.wandb"))


@pytest.mark.slow  # the command line in a subprocess
def test_offline_run_holds_every_val_acc_and_the_resolved_config(offline_fit):
    _, run_dir = offline_fit
    (log,) = (run_dir / "wandb").glob("offline-run-*/*.wandb")
    records = read_wandb_records(log)
    val_acc = [row["val_acc"] for row in _history(records) if "val_acc" in row]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert val_acc == pytest.approx([row["val_acc"] for row in summary["history"]])
    config = _config(records)
    assert config["cli"] == yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["cli"]["trainer"]["max_epochs"] == 2 and config["cli"]["data"]["batch_size"] == 64
    assert config["optimizer"]["class_path"] == "torch.optim.Adam"  # the model's hyperparameters too
    assert (log.parent / "files" / CONFIG_COPY).read_text() == (run_dir / "config.yaml").read_text()


@pytest.mark.slow  # the command line in a subprocess
def test_offline_test_run_logs_the_confusion_matrix_and_worst_digits(offline_fit, mnist_dir, tmp_path):
    _, fit_dir = offline_fit
    (best,) = (fit_dir / "checkpoints").glob("best-*.ckpt")
    result = _short_run(
        "test", mnist_dir, tmp_path / "runs", tmp_path, "--ckpt_path", str(best), "--trainer.limit_test_batches", "5"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "runs").exists(), "a test of a checkpoint joins the checkpoint's run folder"
    assert png_size(fit_dir / "confusion_matrix.png") == (750, 650)
    logs = sorted((fit_dir / "wandb").glob("offline-run-*/*.wandb"), key=lambda path: path.stat().st_mtime)
    logged = {key for row in _history(read_wandb_records(logs[-1])) for key in row}
    assert {"test_acc", "test_confusion_matrix_table", "test_worst_digits"} <= {k.split("/")[0] for k in logged}


@pytest.mark.slow  # the command line in a subprocess
def test_an_unreachable_server_falls_back_to_offline_without_hanging(no_credentials, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)  # a key, so auto means online; no server will take it
    script = (
        "import sys\n"
        "from lit_nnopt.app.loggers import AutoWandbLogger\n"
        "logger = AutoWandbLogger(save_dir=sys.argv[1], init_timeout=2)\n"
        "logger.experiment.log({'val_acc': 0.5})\n"
        "print(logger.mode, logger.experiment.settings.mode, logger.mode_reason, sep='|')\n"
        "logger.experiment.finish()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    mode, wandb_mode, reason = result.stdout.strip().splitlines()[-1].split("|")
    assert (mode, wandb_mode) == ("offline", "offline") and reason.startswith("could not start online")
    (run_dir,) = (tmp_path / "lit_nnopt").iterdir()
    assert list((run_dir / "wandb").glob("offline-run-*")) and not list((run_dir / "wandb").glob("run-*"))


@pytest.mark.slow  # the command line in a subprocess
@pytest.mark.skipif(not __import__("importlib").util.find_spec("tensorboard"), reason="tensorboard is not installed")
def test_one_flag_switches_to_tensorboard(mnist_dir, tmp_path):
    result = _short_run(
        "fit",
        mnist_dir,
        tmp_path,
        tmp_path,
        "--trainer.logger",
        "TensorBoardLogger",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "5",
        "--trainer.limit_val_batches",
        "2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (events,) = tmp_path.rglob("events.out.tfevents.*")
    run_dir = events.parent
    assert {"config.yaml", "summary.json", "learning_curves.png", "checkpoints"} <= {p.name for p in run_dir.iterdir()}
    assert not list(tmp_path.rglob("*.wandb"))
