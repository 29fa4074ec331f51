"""A ``fit`` of a ``tune`` or ``compare`` study tells every logger its study; ``compare`` writes ``runs.csv``."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger

from lit_nnopt.app.cli import default_callbacks
from lit_nnopt.app.compare_results import RUNS_TABLE, Run, write_runs_table
from lit_nnopt.app.study_membership import MEMBER_ENV, STUDY_ENV, StudyMembership, membership_environment


def test_the_membership_environment_adds_the_study_the_member_and_the_wandb_group() -> None:
    environment = {"PATH": "/bin", "OMP_NUM_THREADS": "1"}
    member = membership_environment(environment, "compare-out/sgd", "sgd seed 1")
    assert member == {
        "PATH": "/bin",
        "OMP_NUM_THREADS": "1",
        "LIT_NNOPT_STUDY": "compare-out/sgd",
        "LIT_NNOPT_STUDY_MEMBER": "sgd seed 1",
        "WANDB_RUN_GROUP": "compare-out/sgd",
    }
    assert environment == {"PATH": "/bin", "OMP_NUM_THREADS": "1"}  # the workers' own environment is left alone


def test_from_environment_reads_the_variables_and_gives_none_outside_a_study() -> None:
    membership = StudyMembership.from_environment({STUDY_ENV: "sgd", MEMBER_ENV: "trial 3"})
    assert membership is not None and (membership.study, membership.member) == ("sgd", "trial 3")
    alone = StudyMembership.from_environment({STUDY_ENV: "sgd"})
    assert alone is not None and (alone.study, alone.member) == ("sgd", "")
    assert StudyMembership.from_environment({}) is None
    assert StudyMembership.from_environment({STUDY_ENV: "", MEMBER_ENV: "trial 3"}) is None


def test_from_environment_reads_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STUDY_ENV, "compare-x/adam")
    monkeypatch.setenv(MEMBER_ENV, "adam seed 0")
    membership = StudyMembership.from_environment()
    assert membership is not None and (membership.study, membership.member) == ("compare-x/adam", "adam seed 0")
    monkeypatch.delenv(STUDY_ENV)
    assert StudyMembership.from_environment() is None


def test_the_cli_adds_the_membership_only_inside_a_study(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STUDY_ENV, raising=False)
    assert not any(isinstance(callback, StudyMembership) for callback in default_callbacks({}))
    monkeypatch.setenv(STUDY_ENV, "compare-x/adam")
    monkeypatch.setenv(MEMBER_ENV, "adam seed 0")
    (membership,) = [callback for callback in default_callbacks({}) if isinstance(callback, StudyMembership)]
    assert (membership.study, membership.member) == ("compare-x/adam", "adam seed 0")
    given = StudyMembership("mine", "trial 1")
    callbacks = default_callbacks({"callbacks": [given]})
    assert [callback for callback in callbacks if isinstance(callback, StudyMembership)] == [given]


def test_every_logger_of_a_real_fit_gets_the_study_and_the_member(tmp_path: Path) -> None:
    loggers = [CSVLogger(tmp_path, name="first"), CSVLogger(tmp_path, name="second")]
    trainer = Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=loggers,
        callbacks=[StudyMembership("compare-out/sgd", "sgd seed 1")],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(BoringModel())
    for logger in loggers:
        hparams = yaml.safe_load((Path(logger.log_dir) / "hparams.yaml").read_text())
        assert hparams["study"] == "compare-out/sgd" and hparams["study_member"] == "sgd seed 1"


def test_runs_csv_has_a_row_per_run_with_its_study_and_seed(tmp_path: Path) -> None:
    good = Run("sgd", "out/tune/sgd/best.yaml", 0.91, 0.9, 0.905, 1, 2, "max_epochs (2) reached", 1.5)
    good.status = "ok"
    failed = Run("adam", "configs/adam.yaml", error="fit failed (exit 1): boom")
    write_runs_table("compare-out", [(0, good), (None, failed)], tmp_path / RUNS_TABLE)
    with (tmp_path / RUNS_TABLE).open(newline="") as stream:
        rows = list(csv.reader(stream))
    assert rows == [
        [
            "study",
            "config",
            "seed",
            "best_val_acc",
            "final_val_acc",
            "test_acc",
            "best_epoch",
            "epochs_run",
            "stop_reason",
            "seconds_per_epoch",
            "status",
            "error",
            "path",
        ],
        [
            "compare-out/sgd",
            "sgd",
            "0",
            "0.91",
            "0.9",
            "0.905",
            "1",
            "2",
            "max_epochs (2) reached",
            "1.5",
            "ok",
            "",
            "out/tune/sgd/best.yaml",
        ],
        ["compare-out/adam", "adam", *[""] * 9, "fit failed (exit 1): boom", "configs/adam.yaml"],
    ]
