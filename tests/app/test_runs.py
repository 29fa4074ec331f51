"""Finding runs again: the best checkpoint among a config's runs, the run to resume and its command, run names."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
import yaml

from lit_nnopt.app.config_files import config_files
from lit_nnopt.app.runs import (
    RUN_NAME_ENV,
    best_checkpoint,
    best_run_checkpoint,
    find_resumable_checkpoint,
    new_run_name,
    resume_command,
    run_folder_of,
)

CONFIG = {"model": {"net": "MLP"}, "optimizer": {"class_path": "torch.optim.Adam"}, "lr_scheduler": None,
          "data": {"batch_size": 64, "data_dir": "here"}}  # fmt: skip


def _run(root, name, config=CONFIG, best="best-01-0.9700.ckpt", summary=True, age=0, status="ok"):
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "checkpoints" / best).write_bytes(b"weights")
    score = float(best.removesuffix(".ckpt").rsplit("-", 1)[1])
    checkpoint_state = {"monitor": "val_acc", "best_model_score": torch.tensor(score), "best_model_path": f"x/{best}"}
    state = {"callbacks": {"ModelCheckpoint{'monitor': 'val_acc'}": checkpoint_state}}
    torch.save(state, run / "checkpoints" / "last.ckpt")
    if summary:  # a relative path, as `fit` wrote it from another folder
        content = {
            "best_checkpoint": f"runs/lit_nnopt/{name}/checkpoints/{best}",
            "monitor": "val_acc",
            "best": {"val_acc": score, "val_loss": 1 - score},
            "status": status,
        }
        (run / "summary.json").write_text(json.dumps(content))
    for path in [run / "config.yaml", *(run / "checkpoints").iterdir()]:
        os.utime(path, (1_000_000 + age, 1_000_000 + age))
    return run


def test_the_best_checkpoint_is_found_from_the_summary_or_from_last_ckpt(tmp_path):
    from_summary = _run(tmp_path, "a", best="best-03-0.9800.ckpt")
    interrupted = _run(tmp_path, "b", best="best-00-0.9000.ckpt", summary=False)
    assert best_checkpoint(from_summary) == from_summary / "checkpoints" / "best-03-0.9800.ckpt"
    assert best_checkpoint(interrupted) == interrupted / "checkpoints" / "best-00-0.9000.ckpt"


def test_an_interrupted_run_is_found_where_mmap_needs_a_file_name(tmp_path, torch_load_that_maps_only_file_names):
    interrupted = _run(tmp_path, "b", best="best-00-0.9000.ckpt", summary=False)
    assert best_checkpoint(interrupted) == interrupted / "checkpoints" / "best-00-0.9000.ckpt"
    assert best_run_checkpoint(tmp_path, CONFIG).checkpoint == interrupted / "checkpoints" / "best-00-0.9000.ckpt"


def test_a_last_ckpt_that_cannot_be_read_is_named_once_not_passed_over_silently(tmp_path, capsys):
    damaged = _run(tmp_path, "damaged", best="best-05-0.9900.ckpt", summary=False)
    last = damaged / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100])
    good = _run(tmp_path, "good", best="best-03-0.9700.ckpt")
    assert best_run_checkpoint(tmp_path, CONFIG).checkpoint == good / "checkpoints" / "best-03-0.9700.ckpt"
    err = capsys.readouterr().err
    assert err.count(f"lit_nnopt: {last} cannot be read (") == 1, err
    assert "that run is passed over (to use it, give one of its checkpoints/*.ckpt as --ckpt_path)" in err


def test_best_is_the_best_checkpoint_by_the_monitor_among_the_config_runs_wherever_its_data_lies(tmp_path):
    full = _run(tmp_path, "full", best="best-19-0.9818.ckpt", age=0)
    _run(tmp_path, "check", best="best-00-0.9589.ckpt", age=100)  # a newer, shorter run
    _run(tmp_path, "other", config={**CONFIG, "optimizer": {"class_path": "torch.optim.SGD"}}, age=200)
    moved_data = {**CONFIG, "data": {"batch_size": 64, "data_dir": "there"}}
    best = best_run_checkpoint(tmp_path, moved_data)
    assert best.checkpoint == full / "checkpoints" / "best-19-0.9818.ckpt" and best.run == full
    assert (best.monitor, best.score, best.runs_compared) == ("val_acc", 0.9818, 2)
    assert best_run_checkpoint(tmp_path, {**CONFIG, "data": {"batch_size": 32}}) is None


def test_best_follows_the_monitor_and_mode_and_reads_an_interrupted_run_from_its_last_ckpt(tmp_path):
    high = _run(tmp_path, "high", best="best-03-0.9800.ckpt", summary=False)
    low = _run(tmp_path, "low", best="best-01-0.9000.ckpt")
    assert best_run_checkpoint(tmp_path, CONFIG).run == high
    assert best_run_checkpoint(tmp_path, CONFIG, "val_acc", mode="min").run == low
    # Their best checkpoints are the best by val_acc, whatever their val_loss: no answer for val_loss.
    assert best_run_checkpoint(tmp_path, CONFIG, "val_loss", mode="min") is None


def test_best_passes_over_runs_that_diverged_or_stayed_at_chance(tmp_path):
    _run(tmp_path, "nan", best="best-00-0.0983.ckpt", status="diverged", age=100)
    _run(tmp_path, "flat", best="best-00-0.1135.ckpt", status="at_chance", age=200)
    assert best_run_checkpoint(tmp_path, CONFIG) is None
    learnt = _run(tmp_path, "learnt", best="best-00-0.0999.ckpt", age=0)  # a poor run, but not a failed one
    assert best_run_checkpoint(tmp_path, CONFIG).run == learnt


def test_on_a_tie_the_newest_run_wins(tmp_path):
    _run(tmp_path, "old", best="best-01-0.9700.ckpt", age=0)
    new = _run(tmp_path, "new", best="best-04-0.9700.ckpt", age=100)
    assert best_run_checkpoint(tmp_path, CONFIG).run == new


def test_a_checkpoint_belongs_to_a_run_folder_only_beside_its_config(tmp_path):
    run = _run(tmp_path, "r")
    assert run_folder_of(run / "checkpoints" / "last.ckpt") == run
    assert run_folder_of(tmp_path / "loose.ckpt") is None


def test_new_run_names_are_readable_and_unused(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv(RUN_NAME_ENV, raising=False)  # restored after the test, which sets it
    first = new_run_name(tmp_path, "fit")
    (tmp_path / first).mkdir()
    second = new_run_name(tmp_path, "fit")
    assert re.fullmatch(r"fit-\d{8}-\d{6}", first) and second != first and second.startswith(first[:15])
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP rank started by the process that named the run
    assert new_run_name(tmp_path, "fit") == os.environ[RUN_NAME_ENV] == second


# -- the resume command and `--ckpt_path last` -----------------------------------------------


def test_resume_command_replaces_the_ckpt_path():
    argv = ["fit", "--config", "my config.yaml", "--ckpt_path", "old.ckpt", "--ckpt_path=other.ckpt", "--x", "1"]
    assert resume_command(argv) == "python -m lit_nnopt fit --config 'my config.yaml' --x 1 --ckpt_path last"
    assert resume_command(["fit"], "{ckpt_path}").endswith("--ckpt_path {ckpt_path}")


def test_config_files_are_the_existing_files_after_config(tmp_path):
    real = tmp_path / "a.yaml"
    real.write_text("trainer: {}\n")
    argv = ["fit", "--config", str(real), f"--config={real}", "--config", "{trainer: {max_epochs: 1}}"]
    assert config_files(argv) == [str(real), str(real)]


def _fake_run(project_dir: Path, run_id: str, config: dict, checkpoint: str = "last.ckpt") -> Path:
    run = project_dir / run_id
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    path = run / "checkpoints" / checkpoint
    path.write_bytes(b"checkpoint")
    return path


def test_ckpt_path_last_finds_the_newest_run_of_the_same_config(tmp_path):
    adam = {
        "model": {"net": "mlp"},
        "optimizer": {"class_path": "torch.optim.Adam"},
        "lr_scheduler": None,
        "data": {"batch_size": 64, "data_dir": "/a"},
        "trainer": {"max_epochs": 5},
    }
    sgd = {**adam, "optimizer": {"class_path": "torch.optim.SGD"}}
    older = _fake_run(tmp_path, "older", adam)
    newer = _fake_run(tmp_path, "newer", adam, "last-v1.ckpt")
    _fake_run(tmp_path, "best-only", adam, "best-00-0.9000.ckpt")
    other = _fake_run(tmp_path, "other", sgd)
    os.utime(older, ns=(1, 1))
    # Where the data lives and how long to train do not make another run; the optimizer does.
    current = {**adam, "data": {"batch_size": 64, "data_dir": "/b"}, "trainer": {"max_epochs": 9}}
    assert find_resumable_checkpoint(tmp_path, current) == newer
    assert find_resumable_checkpoint(tmp_path, sgd) == other
    assert find_resumable_checkpoint(tmp_path, {**adam, "data": {"batch_size": 32}}) is None
