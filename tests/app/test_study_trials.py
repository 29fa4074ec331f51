"""How a worker opens a study's storage and runs one trial on it: retries, heartbeats, trials given up."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.exc import IntegrityError, OperationalError

from lit_nnopt.app import studies, study_trials
from lit_nnopt.app.studies import StorageError, open_storage, shown_command
from lit_nnopt.app.study_trials import TrialGivenUp, run_trial, trial_id


def test_opening_a_database_whose_tables_another_worker_is_creating_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = optuna.storages.RDBStorage
    calls: list[str] = []

    def collides_once(url: str, **kwargs: object) -> object:
        calls.append(url)
        if len(calls) == 1:
            raise IntegrityError("CREATE TABLE studies", {}, Exception('duplicate key "pg_type_typname_nsp_index"'))
        return real(url, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", collides_once)
    monkeypatch.setattr(studies.time, "sleep", lambda seconds: None)
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    assert len(calls) == 2 and isinstance(storage, real)


def test_a_collision_that_lasts_is_no_cannot_reach(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def always_collides(url: str, **kwargs: object) -> object:
        raise IntegrityError("CREATE TABLE studies", {}, Exception("duplicate key"))

    monkeypatch.setattr(optuna.storages, "RDBStorage", always_collides)
    monkeypatch.setattr(studies.time, "sleep", lambda seconds: None)
    with pytest.raises(StorageError) as error:
        open_storage(f"sqlite:///{tmp_path / 's.db'}")
    assert "refused Optuna's tables: duplicate key" in str(error.value)
    assert "cannot reach" not in str(error.value)


@pytest.fixture
def storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.setattr(studies, "GRACE_SECONDS", 1)  # a trial without a heartbeat for 1 s is stale
    monkeypatch.setattr(study_trials, "HEARTBEAT_SECONDS", 0.05)
    return open_storage(f"sqlite:///{tmp_path / 's.db'}")


@pytest.fixture
def study(storage: object) -> optuna.Study:
    return optuna.create_study(study_name="s", storage=storage, direction="maximize")


def _fail_from_outside(storage: object, trial: optuna.Trial) -> None:
    """What another worker's ``fail_stale_trials`` does to a trial whose heartbeat it found late."""
    storage.set_trial_state_values(trial_id(storage, "s", trial.number), TrialState.FAIL)


def test_a_long_trial_keeps_its_heartbeat_and_is_not_failed_as_stale(
    study: optuna.Study, storage: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    beats: list[int] = []
    record = storage.record_heartbeat
    monkeypatch.setattr(storage, "record_heartbeat", lambda trial: (beats.append(trial), record(trial)))

    def objective(trial: optuna.Trial) -> float:
        for _ in range(5):  # 2.5 s: more than twice the grace period
            time.sleep(0.5)
            optuna.storages.fail_stale_trials(study)
        return 0.5

    assert run_trial(study, storage, objective, study.ask()) == "COMPLETE"
    (frozen,) = study.get_trials()
    assert frozen.state == TrialState.COMPLETE and frozen.value == 0.5
    assert len(beats) >= 20  # every 0.05 s for 2.5 s, the first at once


def test_without_its_heartbeat_the_same_trial_is_failed_and_queued_again(study: optuna.Study, storage: object) -> None:
    trial = study.ask()
    storage.record_heartbeat(trial_id(storage, "s", trial.number))  # one beat, then the worker "dies"
    time.sleep(2.5)  # past the 1 s grace period, with SQLite's timestamps in whole seconds
    optuna.storages.fail_stale_trials(study)
    assert [frozen.state for frozen in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]


@pytest.mark.parametrize("writes_after", [False, True])
def test_a_trial_given_up_while_it_ran_is_dropped_and_the_worker_goes_on(
    study: optuna.Study, storage: object, writes_after: bool
) -> None:
    def objective(trial: optuna.Trial) -> float:
        _fail_from_outside(storage, trial)
        if writes_after:
            trial.set_user_attr("run", {"test_acc": 0.9})  # raises: the trial is finished
        return 0.9

    assert run_trial(study, storage, objective, study.ask()) == "TAKEN OVER"
    (frozen,) = study.get_trials()
    assert frozen.state == TrialState.FAIL and frozen.value is None


def test_a_trial_given_up_by_its_objective_fails_and_the_worker_goes_on(study: optuna.Study, storage: object) -> None:
    def objective(trial: optuna.Trial) -> float:
        raise TrialGivenUp("fit failed (exit 1)")

    assert run_trial(study, storage, objective, study.ask()) == "FAIL"
    assert [frozen.state for frozen in study.get_trials()] == [TrialState.FAIL]


def test_a_pruned_trial_is_told_pruned_with_its_last_score(study: optuna.Study, storage: object) -> None:
    def objective(trial: optuna.Trial) -> float:
        trial.report(0.4, step=0)
        raise optuna.TrialPruned("below the median")

    assert run_trial(study, storage, objective, study.ask()) == "PRUNED"
    (frozen,) = study.get_trials()
    assert frozen.state == TrialState.PRUNED and frozen.value == 0.4


def test_ctrl_c_fails_the_trial_and_goes_on_up(study: optuna.Study, storage: object) -> None:
    def objective(trial: optuna.Trial) -> float:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_trial(study, storage, objective, study.ask())
    assert [frozen.state for frozen in study.get_trials()] == [TrialState.FAIL]


def test_a_recorded_command_hides_the_password_of_every_url() -> None:
    words = ["python -m lit_nnopt tune", "--storage", "postgresql://u:secret@db/s", "--storage=mysql://v:pw@h/d"]
    assert shown_command([*words, "--trials", "3"]) == (
        "python -m lit_nnopt tune --storage postgresql://u:***@db/s --storage=mysql://v:***@h/d --trials 3"
    )


def test_a_refused_login_says_so_not_that_the_server_is_away(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuses_the_login(url: str, **kwargs: object) -> object:
        raise OperationalError("connect", {}, Exception('password authentication failed for user "u"'))

    monkeypatch.setattr(optuna.storages, "RDBStorage", refuses_the_login)
    with pytest.raises(StorageError) as error:
        open_storage("postgresql://u:secret@127.0.0.1/db")
    message = str(error.value)
    assert message.startswith("the study storage postgresql://u:***@127.0.0.1/db refused the login: password")
    assert "~/.pgpass" in message and "Start the server" not in message and "secret" not in message
