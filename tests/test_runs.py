"""Finding runs again: the best checkpoint of the latest run of a config, and readable run names."""

from __future__ import annotations

import json
import os
import re

import torch
import yaml

from lit_nnopt.app.runs import RUN_NAME_ENV, best_checkpoint, latest_best_checkpoint, new_run_name, run_folder_of

CONFIG = {"model": {"net": "MLP"}, "optimizer": {"class_path": "torch.optim.Adam"}, "lr_scheduler": None,
          "data": {"batch_size": 64, "data_dir": "here"}}  # fmt: skip


def _run(root, name, config=CONFIG, best="best-01-0.9700.ckpt", summary=True, age=0):
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "checkpoints" / best).write_bytes(b"weights")
    state = {"callbacks": {"ModelCheckpoint{'monitor': 'val_acc'}": {"best_model_path": f"elsewhere/{best}"}}}
    torch.save(state, run / "checkpoints" / "last.ckpt")
    if summary:  # a relative path, as `fit` wrote it from another folder
        (run / "summary.json").write_text(json.dumps({"best_checkpoint": f"runs/lit_nnopt/{name}/checkpoints/{best}"}))
    for path in [run / "config.yaml", *(run / "checkpoints").iterdir()]:
        os.utime(path, (1_000_000 + age, 1_000_000 + age))
    return run


def test_the_best_checkpoint_is_found_from_the_summary_or_from_last_ckpt(tmp_path):
    from_summary = _run(tmp_path, "a", best="best-03-0.9800.ckpt")
    interrupted = _run(tmp_path, "b", best="best-00-0.9000.ckpt", summary=False)
    assert best_checkpoint(from_summary) == from_summary / "checkpoints" / "best-03-0.9800.ckpt"
    assert best_checkpoint(interrupted) == interrupted / "checkpoints" / "best-00-0.9000.ckpt"


def test_the_latest_run_of_the_same_config_wins_wherever_its_data_lies(tmp_path):
    _run(tmp_path, "old", best="best-01-0.9100.ckpt", age=0)
    newest = _run(tmp_path, "new", best="best-02-0.9600.ckpt", age=100)
    _run(tmp_path, "other", config={**CONFIG, "optimizer": {"class_path": "torch.optim.SGD"}}, age=200)
    moved_data = {**CONFIG, "data": {"batch_size": 64, "data_dir": "there"}}
    assert latest_best_checkpoint(tmp_path, moved_data) == newest / "checkpoints" / "best-02-0.9600.ckpt"
    assert latest_best_checkpoint(tmp_path, {**CONFIG, "data": {"batch_size": 32}}) is None


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
