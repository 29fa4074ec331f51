"""``python -m lit_nnopt tune``: search-space files, options, storages and the pruning callback, without training.

The callback's tests run a real (tiny) Trainer against a real Optuna study in a SQLite file, with
the other trials' per-epoch scores scripted, Keras-style; the CLI runs on MNIST are in
``test_tune_slow.py``.
"""

from __future__ import annotations

import io
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from rich.console import Console

from lit_nnopt.app.compare_runs import CompareUsageError
from lit_nnopt.app.search_space import Dimension, SearchSpaceError, load_search_space, option_args
from lit_nnopt.app.studies import StorageError, open_storage, shown, storage_url
from lit_nnopt.app.trial_report import PRUNED_AT_EPOCH, TrialReport
from lit_nnopt.app.tune import DEFAULT_TRIALS, Search, TuneOptions, parse_args
from lit_nnopt.app.tune import main as tune_main
from tests.helpers import CONFIGS
from tests.helpers.callbacks import ScriptedMetricModel, quiet_trainer

# -- search-space files ----------------------------------------------------------------------


def _space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_a_space_file_gives_one_dimension_per_option_in_the_files_order(tmp_path: Path) -> None:
    path = _space(
        tmp_path,
        "optimizer.lr: {low: 1.0e-4, high: 1.0e-1, log: true}\n"
        "model.net.dropout: {low: 0.0, high: 0.5}\n"
        "model.net.hidden_sizes: {choices: [[64], [128, 64]]}\n"
        "data.batch_size: {low: 32, high: 256, step: 32}\n"
        "model.net.l2: {low: 0, high: 1, step: 0.25}\n",
    )
    assert load_search_space(path) == [
        Dimension("optimizer.lr", low=1.0e-4, high=1.0e-1, log=True),
        Dimension("model.net.dropout", low=0.0, high=0.5),
        Dimension("model.net.hidden_sizes", choices=([64], [128, 64])),
        Dimension("data.batch_size", low=32, high=256, step=32),
        Dimension("model.net.l2", low=0, high=1, step=0.25),
    ]


@pytest.mark.parametrize("space", sorted((CONFIGS / "spaces").glob("*.yaml")), ids=lambda path: path.name)
def test_every_shipped_space_parses_and_has_a_config_of_its_name(space: Path) -> None:
    assert load_search_space(space)
    assert (CONFIGS / space.name).is_file()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("optimizer.lr: 0.01\n", "is 0.01, not a range: write `{low: L, high: H}`"),
        ("optimizer.lr: [0.01, 0.1]\n", "is [0.01, 0.1], not a range"),
        ("optimizer.lr: {low: 0.01, high: 0.1, scale: log}\n", "has scale, which a range does not take"),
        ("optimizer.lr: {low: 0.1, high: 0.1}\n", r"`low` (0.1) must be below `high` (0.1)"),
        ("optimizer.lr: {low: 0.5, high: 0.1}\n", r"`low` (0.5) must be below `high` (0.1)"),
        ("optimizer.lr: {low: 0.0, high: 0.1, log: true}\n", "a log scale needs `low` above 0 (it is 0.0)"),
        ("optimizer.lr: {low: -1.0, high: 0.1, log: true}\n", "a log scale needs `low` above 0 (it is -1.0)"),
        ("optimizer.lr: {low: 0.01, high: 0.1, log: true, step: 0.01}\n", "takes `log` or `step`, not both"),
        ("optimizer.lr: {low: 0.01, high: 0.1, log: 'false'}\n", "`log` is true or false, not 'false'"),
        ("optimizer.lr: {high: 0.1}\n", "needs numbers `low` and `high`"),
        ("optimizer.lr: {low: small, high: 0.1}\n", "needs numbers `low` and `high`"),
        ("optimizer.lr: {low: true, high: 2}\n", "needs numbers `low` and `high`"),
        ("optimizer.lr: {low: .nan, high: 0.1}\n", "needs numbers `low` and `high`"),
        ("optimizer.lr: {low: 0.0, high: .inf}\n", "needs numbers `low` and `high`"),
        ("data.batch_size: {low: 32, high: 256, step: 0}\n", "`step` (0) is the distance between the values tried"),
        ("data.batch_size: {low: 32, high: 256, step: -32}\n", "`step` (-32) is the distance"),
        ("data.batch_size: {low: 32, high: 256, step: wide}\n", "`step` ('wide') is the distance"),
        ("data.batch_size: {low: 32, high: 256, step: 1000}\n", "at most `high` - `low` (224)"),
        ("model.net.hidden_sizes: {choices: []}\n", "`choices` takes a non-empty list and no other key"),
        ("model.net.hidden_sizes: {choices: [[64]], low: 1}\n", "`choices` takes a non-empty list and no other key"),
        ("model.net.hidden_sizes: {choices: 64}\n", "`choices` takes a non-empty list"),
        ("model.net.hidden_sizes: {choices: [64, [128]]}\n", "`choices` are all plain values or all lists, not a mix"),
    ],
)
def test_a_malformed_range_is_refused_naming_the_option_and_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = _space(tmp_path, text)
    with pytest.raises(SearchSpaceError) as refused:
        load_search_space(path)
    said = str(refused.value)
    option = text.split(":")[0]
    assert said.startswith(f"`{option}` in search space {path}") and message in said and "\n" not in said


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "names no option: it is a mapping of `fit` options to ranges"),
        ("- optimizer.lr\n", "names no option"),
        ("optimizer.lr: {low: 1, high: [\n", "is not valid YAML: expected the node content, but found '<stream end>'"),
        ("optimizer.lr: {low: 1, high: 2\nmodel.net.dropout: {low: 0.0}\n", "is not valid YAML: "),
    ],
)
def test_a_file_that_is_no_search_space_is_refused_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = _space(tmp_path, text)
    with pytest.raises(SearchSpaceError) as refused:
        load_search_space(path)
    said = str(refused.value)
    assert said.startswith(f"search space {path} ") and message in said and "\n" not in said


def test_invalid_yaml_says_where_in_the_file(tmp_path: Path) -> None:
    path = _space(tmp_path, "optimizer.lr: {low: 1.0e-4, high: 1.0e-1}\nmodel.net.dropout: low: 0.0\n")
    with pytest.raises(SearchSpaceError, match=r"mapping values are not allowed here \(line 2, column 23\)\.$"):
        load_search_space(path)


def test_an_option_or_a_range_key_written_twice_is_refused(tmp_path: Path) -> None:
    path = _space(tmp_path, "optimizer.lr: {low: 1.0e-4, high: 1.0e-1}\noptimizer.lr: {low: 0.5, high: 0.9}\n")
    with pytest.raises(SearchSpaceError) as refused:
        load_search_space(path)
    assert str(refused.value) == f"search space {path} names `optimizer.lr` twice (again on line 2): keep one of them."
    path = _space(tmp_path, "data.batch_size:\n  low: 32\n  high: 256\n  low: 64\n")
    with pytest.raises(SearchSpaceError, match=r"names `low` twice \(again on line 4\)"):
        load_search_space(path)


def test_a_missing_space_file_is_refused_with_an_example(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(SearchSpaceError) as refused:
        load_search_space(missing)
    assert str(refused.value) == (
        f"search space {missing} not found: give a YAML file of `option: range` lines, e.g. "
        "`optimizer.lr: {low: 1.0e-4, high: 1.0e-1, log: true}` (configs/spaces/ holds one per technique)."
    )


# -- values from a real Optuna study -------------------------------------------------------------


def _ask() -> optuna.trial.Trial:
    return optuna.create_study(direction="maximize").ask()


def test_a_range_of_whole_numbers_suggests_an_int_on_its_steps() -> None:
    trial = _ask()
    value = Dimension("data.batch_size", low=32, high=256, step=32).suggest(trial)
    assert type(value) is int and value in range(32, 257, 32)
    assert trial.distributions["data.batch_size"] == IntDistribution(32, 256, step=32)


def test_a_log_range_suggests_a_float_on_a_log_scale() -> None:
    trial = _ask()
    value = Dimension("optimizer.lr", low=1.0e-4, high=1.0e-1, log=True).suggest(trial)
    assert type(value) is float and 1.0e-4 <= value <= 1.0e-1
    assert trial.distributions["optimizer.lr"] == FloatDistribution(1.0e-4, 1.0e-1, log=True)


def test_whole_bounds_with_a_fractional_step_suggest_a_float() -> None:
    trial = _ask()
    value = Dimension("model.net.dropout", low=0, high=1, step=0.25).suggest(trial)
    assert type(value) is float and value in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert trial.distributions["model.net.dropout"] == FloatDistribution(0.0, 1.0, step=0.25)


def test_plain_choices_are_suggested_as_they_are() -> None:
    trial = _ask()
    value = Dimension("data.batch_size", choices=(32, 64, 128)).suggest(trial)
    assert type(value) is int and value in (32, 64, 128)
    assert trial.distributions["data.batch_size"] == CategoricalDistribution((32, 64, 128))


def test_lists_among_the_choices_are_stored_as_json_and_given_back_as_lists() -> None:
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"model.net.hidden_sizes": "[128, 64]"})
    trial = study.ask()
    dimension = Dimension("model.net.hidden_sizes", choices=([64], [128, 64]))
    assert dimension.suggest(trial) == [128, 64]
    assert trial.params == {"model.net.hidden_sizes": "[128, 64]"}
    assert trial.distributions["model.net.hidden_sizes"] == CategoricalDistribution(("[64]", "[128, 64]"))
    assert dimension.decode("[64]") == [64]
    assert Dimension("data.batch_size", choices=(32, 64)).decode(64) == 64


def test_option_args_write_fit_options_with_lists_as_json() -> None:
    params = {"optimizer.lr": 0.0123, "model.net.hidden_sizes": [128, 64], "optimizer": "torch.optim.Adam"}
    params |= {"data.batch_size": 64, "model.net.batch_norm": True}
    assert option_args(params) == [
        "--optimizer.lr=0.0123",
        "--model.net.hidden_sizes=[128, 64]",
        "--optimizer=torch.optim.Adam",
        "--data.batch_size=64",
        "--model.net.batch_norm=true",
    ]


# -- the command line ----------------------------------------------------------------------------


def test_parse_args_takes_tunes_options_in_both_forms_and_leaves_the_rest_to_fit() -> None:
    config = CONFIGS / "adam.yaml"
    argv = ["--config", str(config), "--trials=7", "--trainer.max_epochs", "3", "--workers", "2", "--out", "o"]
    argv += ["--storage=sqlite:///s.db", "--study", "s", "--monitor", "val_loss", "--data.batch_size=32"]
    assert parse_args(argv) == TuneOptions(
        config=config,
        space=CONFIGS / "spaces" / "adam.yaml",
        trials=7,
        out=Path("o"),
        storage="sqlite:///s.db",
        study="s",
        workers=2,
        monitor="val_loss",
        overrides=["--trainer.max_epochs", "3", "--data.batch_size=32"],
    )


def test_parse_args_defaults_follow_the_config_name(tmp_path: Path) -> None:
    space = _space(tmp_path, "optimizer.lr: {low: 0.01, high: 0.1}\n")
    options = parse_args(["--config", str(CONFIGS / "sgd.yaml"), "--space", str(space)])
    assert options == TuneOptions(
        config=CONFIGS / "sgd.yaml", space=space, trials=DEFAULT_TRIALS, out=Path("runs/tune/sgd"), study="sgd"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--trials", "0"], r"`--trials 0`: --trials takes a whole number of 1 or more, e\.g\. `--trials 20`\.$"),
        (["--trials", "-3"], r"`--trials -3`: --trials takes a whole number of 1 or more"),
        (["--trials=many"], r"`--trials many`: --trials takes a whole number"),
        (["--workers", "0"], r"`--workers 0`: --workers takes a whole number of 1 or more, e\.g\. `--workers 2`"),
        (["--out", "--trials", "3"], r"^`--out` needs a value, e\.g\. `--out runs/tune/adam`\.$"),
        (["--study="], r"^`--study` needs a value"),
    ],
)
def test_bad_options_are_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(CompareUsageError, match=message):
        parse_args(["--config", str(CONFIGS / "sgd.yaml"), *argv])


def test_a_missing_config_or_default_space_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(CompareUsageError, match=r"^tune needs `--config CONFIG`, e\.g\. `python -m lit_nnopt tune"):
        parse_args(["--trials", "3", "--trainer.max_epochs", "2"])
    with pytest.raises(CompareUsageError, match=rf"^config file {tmp_path / 'no.yaml'} not found: give a path"):
        parse_args(["--config", str(tmp_path / "no.yaml")])
    config = tmp_path / "mine.yaml"
    config.write_text((CONFIGS / "sgd.yaml").read_text())
    expected = (
        f"no search space for {config}: {tmp_path / 'spaces' / 'mine.yaml'} does not exist. Write one (see "
        "configs/spaces/ for examples) or give `--space FILE`."
    )
    with pytest.raises(CompareUsageError) as refused:
        parse_args(["--config", str(config)])
    assert str(refused.value) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--trials", "0"], "--trials takes a whole number of 1 or more"),
        (["--space", "{tmp}/missing.yaml"], "missing.yaml not found: give a YAML file of `option: range` lines"),
        (["--space", "{tmp}/bad.yaml"], "`optimizer.lr` in search space"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "bad.yaml").write_text("optimizer.lr: {low: 0.1, high: 0.01}\n")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stopped:
        tune_main(
            ["--config", str(CONFIGS / "sgd.yaml"), "--out", str(out), *(arg.format(tmp=tmp_path) for arg in argv)]
        )
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("lit_nnopt: error: ") and message in error and error.count("\n") == 1
    assert not out.exists()


def test_no_arguments_print_the_usage_and_exit_2_help_exits_0(capsys: pytest.CaptureFixture) -> None:
    for argv, code in (([], 2), (["--help"], 0)):
        with pytest.raises(SystemExit) as stopped:
            tune_main(argv)
        assert stopped.value.code == code
        assert capsys.readouterr().out.startswith("usage: python -m lit_nnopt tune --config CONFIG [--space FILE]")


# -- storages ------------------------------------------------------------------------------------


def test_shown_hides_only_the_password() -> None:
    assert shown("postgresql://user:s3cret@db.example:5432/studies") == "postgresql://user:***@db.example:5432/studies"
    assert shown("postgresql+psycopg2://secret:secret@host/db") == "postgresql+psycopg2://secret:***@host/db"
    assert shown("postgresql://user@host/db") == "postgresql://user@host/db"
    assert shown("sqlite:////tmp/out/study.db") == "sqlite:////tmp/out/study.db"


def test_the_default_storage_is_a_sqlite_file_in_the_output_folder(tmp_path: Path) -> None:
    out = tmp_path / "new" / "out"
    assert storage_url(None, out) == f"sqlite:///{out.resolve()}/study.db" and out.is_dir()
    assert storage_url("postgresql://u:p@h/db", tmp_path / "unused") == "postgresql://u:p@h/db"
    assert not (tmp_path / "unused").exists()


def test_a_string_that_is_no_database_url_is_refused() -> None:
    with pytest.raises(StorageError) as refused:
        open_storage("studies on the server")
    assert str(refused.value) == (
        "`--storage studies on the server` is not a database URL: write it as SQLAlchemy does, e.g. "
        "`postgresql://USER:PASSWORD@HOST:5432/DB` or `sqlite:////absolute/path/study.db`."
    )


def test_a_server_that_does_not_answer_is_named_without_its_password_with_how_to_start_one() -> None:
    pytest.importorskip("psycopg2", reason="the postgres extra (psycopg2) is not installed")
    with pytest.raises(StorageError) as refused:
        open_storage("postgresql://u:secret@127.0.0.1:9/db")  # port 9 (discard): nothing listens on it
    said = str(refused.value)
    assert said.startswith("cannot reach the study storage postgresql://u:***@127.0.0.1:9/db: ")
    assert "secret" not in said and "\n" not in said
    assert "sudo service postgresql start" in said and "Without --storage the study is a SQLite file" in said


def test_a_database_without_its_driver_says_what_to_install() -> None:
    with pytest.raises(StorageError) as refused:
        open_storage("mysql://u:secret@127.0.0.1:9/db")
    said = str(refused.value)
    assert said.startswith("the study storage mysql://u:***@127.0.0.1:9/db needs the database driver `")
    assert "secret" not in said and 'pip install "lit_nnopt[postgres]"' in said


def test_a_study_started_by_another_search_is_refused(tmp_path: Path) -> None:
    space = _space(tmp_path, "optimizer.lr: {low: 1.0e-3, high: 0.1, log: true}\n")
    argv = ["--config", str(CONFIGS / "sgd.yaml"), "--space", str(space), "--out", str(tmp_path / "out")]
    options = parse_args([*argv, "--trainer.max_epochs", "2"])
    quiet = Console(file=io.StringIO())
    first = Search(options, load_search_space(space), quiet)
    assert first.study.user_attrs["config_path"] == str(CONFIGS / "sgd.yaml")
    Search(options, load_search_space(space), quiet)  # the same search goes on with its study
    url = f"sqlite:///{(tmp_path / 'out' / 'study.db').resolve()}"
    with pytest.raises(CompareUsageError, match=rf"^study `sgd` in {url} was started with another overrides: "):
        Search(parse_args([*argv, "--trainer.max_epochs", "3"]), load_search_space(space), quiet)
    space.write_text("optimizer.lr: {low: 1.0e-3, high: 0.5, log: true}\n")
    with pytest.raises(CompareUsageError, match=r"was started with another space: .* its own `--study NAME`"):
        Search(options, load_search_space(space), quiet)


# -- TrialReport: the per-epoch report and the pruning -----------------------------------------

# Five finished trials whose scores at epochs 0 to 3; their median at each epoch is the middle one.
FINISHED = [[0.80, 0.90, 0.92, 0.93], [0.70, 0.85, 0.90, 0.91], [0.60, 0.80, 0.88, 0.90]]
FINISHED += [[0.50, 0.75, 0.86, 0.89], [0.40, 0.70, 0.84, 0.88]]


def _study(tmp_path: Path, finished: list[list[float]]) -> tuple[str, optuna.Study]:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    distributions = {"optimizer.lr": FloatDistribution(1.0e-4, 1.0)}
    for scores in finished:
        study.add_trial(
            optuna.trial.create_trial(
                params={"optimizer.lr": 0.01},
                distributions=distributions,
                value=max(scores),
                intermediate_values=dict(enumerate(scores)),
            )
        )
    return url, study


def _fit_reporting(tmp_path: Path, url: str, trial: int, scores: list[float], **report_args) -> int:
    """Fit a tiny model whose ``val_loss`` at epoch e is ``scores[e]``, reported to ``trial``; the epochs it ran."""
    report = TrialReport(storage=url, study="s", trial=trial, monitor="val_loss", **report_args)
    trainer = quiet_trainer(tmp_path, max_epochs=len(scores), callbacks=[report])
    trainer.fit(ScriptedMetricModel(scores))
    return trainer.current_epoch


def test_a_trial_below_the_median_is_pruned_after_the_warmup_epoch(tmp_path: Path, capsys) -> None:
    url, study = _study(tmp_path, FINISHED)
    trial = study.ask()
    # At epoch 0 it is below every other trial but still warming up; at epoch 1 (0.72 < median 0.80) it ends.
    assert _fit_reporting(tmp_path, url, trial.number, [0.45, 0.72, 0.99, 0.99]) == 2
    stored = study.get_trials()[trial.number]
    assert stored.intermediate_values == pytest.approx({0: 0.45, 1: 0.72}) and stored.user_attrs == {PRUNED_AT_EPOCH: 1}
    assert stored.state == TrialState.RUNNING  # tune's worker, not the fit, ends the trial
    assert f"lit_nnopt: trial {trial.number} pruned after epoch 1: val_loss 0.7200" in capsys.readouterr().out


def test_a_trial_is_judged_by_its_best_score_so_far_against_the_median_at_each_epoch(tmp_path: Path) -> None:
    url, study = _study(tmp_path, FINISHED)
    trial = study.ask()
    # Epochs 2 and 3 alone are below the median (0.88, 0.90), but its best so far, 0.95, is above it.
    assert _fit_reporting(tmp_path, url, trial.number, [0.10, 0.95, 0.70, 0.60]) == 4
    stored = study.get_trials()[trial.number]
    assert stored.intermediate_values == pytest.approx({0: 0.10, 1: 0.95, 2: 0.70, 3: 0.60})
    assert stored.user_attrs == {}
    # Above the median at epoch 1 (0.80), below it at epoch 2 (0.88): it ends after epoch 2.
    second = study.ask()
    assert _fit_reporting(tmp_path, url, second.number, [0.10, 0.85, 0.86, 0.99]) == 3
    assert study.get_trials()[second.number].user_attrs == {PRUNED_AT_EPOCH: 2}


def test_no_trial_is_pruned_before_the_startup_trials_have_completed(tmp_path: Path) -> None:
    url, study = _study(tmp_path, FINISHED[:4])
    trial = study.ask()
    assert _fit_reporting(tmp_path, url, trial.number, [0.0, 0.0, 0.0, 0.0]) == 4
    assert study.get_trials()[trial.number].user_attrs == {}
    # With as many startup trials as have completed, the same scores are pruned at the first epoch past warmup.
    second = study.ask()
    assert _fit_reporting(tmp_path, url, second.number, [0.0, 0.0, 0.0, 0.0], startup_trials=4) == 2
    assert study.get_trials()[second.number].user_attrs == {PRUNED_AT_EPOCH: 1}


def test_more_warmup_epochs_put_the_first_pruning_later(tmp_path: Path) -> None:
    url, study = _study(tmp_path, FINISHED)
    trial = study.ask()
    assert _fit_reporting(tmp_path, url, trial.number, [0.0, 0.0, 0.0, 0.0], warmup_epochs=2) == 3
    assert study.get_trials()[trial.number].user_attrs == {PRUNED_AT_EPOCH: 2}


def test_a_fit_whose_trial_is_no_longer_running_stops_without_writing_to_it(tmp_path: Path, capsys) -> None:
    url, study = _study(tmp_path, FINISHED)
    trial = study.ask()
    study.tell(trial, state=TrialState.FAIL)  # as a worker that took the trial over after a lost heartbeat
    assert _fit_reporting(tmp_path, url, trial.number, [0.99, 0.99, 0.99, 0.99]) == 1
    stored = study.get_trials()[trial.number]
    assert stored.intermediate_values == {} and stored.state == TrialState.FAIL
    assert f"lit_nnopt: trial {trial.number} is FAIL in study s: its tune worker stopped" in capsys.readouterr().out


def test_a_monitor_the_model_does_not_log_is_named_with_those_it_does(tmp_path: Path) -> None:
    url, study = _study(tmp_path, FINISHED)
    report = TrialReport(storage=url, study="s", trial=study.ask().number, monitor="val_acc")
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[report])
    with pytest.raises(ValueError, match=r"cannot find `val_acc` among the logged metrics \(val_loss\): tune's"):
        trainer.fit(ScriptedMetricModel([0.5, 0.5]))


# -- the files of a search -----------------------------------------------------------------------


def test_a_search_without_a_complete_trial_writes_its_table_and_report_and_no_best_config(tmp_path: Path) -> None:
    from lit_nnopt.app.tune_results import write_results

    space = _space(tmp_path, "optimizer.lr: {low: 1.0e-3, high: 0.1, log: true}\n")
    options = parse_args(["--config", str(CONFIGS / "sgd.yaml"), "--space", str(space), "--out", str(tmp_path / "o")])
    printed = io.StringIO()
    search = Search(options, load_search_space(space), Console(file=printed, width=200))
    distributions = {"optimizer.lr": FloatDistribution(1.0e-3, 0.1, log=True)}
    pruned = optuna.trial.create_trial(
        state=TrialState.PRUNED,
        params={"optimizer.lr": 0.002},
        distributions=distributions,
        value=0.4,  # as Optuna records a pruned trial: its last reported score
        intermediate_values={0: 0.3, 1: 0.4},
        user_attrs={"epochs_run": 2, PRUNED_AT_EPOCH: 1, "folder": "o/trials/0000"},
    )
    search.study.add_trial(pruned)
    search.study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"folder": "o/trials/0001"}))
    write_results(search, "python -m lit_nnopt tune --config configs/sgd.yaml")
    out = tmp_path / "o"
    assert (out / "trials.csv").read_text().splitlines() == [
        "study,trial,state,val_acc,optimizer.lr,epochs_run,pruned_at_epoch,seconds,folder",
        "sgd,0,PRUNED,0.4,0.002,2,1,,o/trials/0000",
        "sgd,1,FAIL,,,,,,o/trials/0001",
    ]
    report = (out / "tune.md").read_text()
    assert "- Command: `python -m lit_nnopt tune --config configs/sgd.yaml`" in report
    assert f"- Trials: 0 complete, 1 pruned, 1 failed (of {DEFAULT_TRIALS} asked)" in report
    assert "- Best" not in report and "![" not in report
    assert not any((out / name).exists() for name in ("best.yaml", "history.png", "importance.png"))
    assert printed.getvalue().startswith("0 complete trials, 1 pruned, 1 failed.\n")
