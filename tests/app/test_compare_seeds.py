"""``compare --seeds/--workers/--baseline``: the statistics, the manifest that resumes, and a real comparison.

The reference values come from SciPy 1.17.1 (``scipy.stats.t.ppf``, ``t.cdf``, ``t.interval``
and ``ttest_ind(a, b, equal_var=False)`` with its ``confidence_interval()``), computed offline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lit_nnopt.app import compare_runs
from lit_nnopt.app.compare import main as compare_main
from lit_nnopt.app.compare_results import Run
from lit_nnopt.app.compare_runs import (
    ChildProcesses,
    CompareUsageError,
    Job,
    Manifest,
    RunOptions,
    Stopped,
    baseline_index,
    jobs_left,
    make_jobs,
    resume_args,
    run_jobs,
    split_run_options,
    worker_environment,
)
from lit_nnopt.app.compare_seeds import config_statistics, plot_bands, statistics_table
from lit_nnopt.app.statistics import Description, describe, t_cdf, t_quantile, welch_test
from tests.helpers import CONFIGS, run_cli

# Test accuracies of two configs over seeds, in the range MNIST runs give.
A = [0.9811, 0.9817, 0.9805, 0.9822]
B = [0.9790, 0.9801, 0.9785]


# -- statistics -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("df", "expected"),
    [
        (1, 12.706204736174694),
        (2, 4.302652729749462),
        (4, 2.7764451051977934),
        (9, 2.262157162798205),
        (29, 2.045229642132703),
        (3.7, 2.8675207071911895),  # Welch's degrees of freedom are seldom whole
    ],
)
def test_t_quantile_matches_scipy(df: float, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, rel=1e-10)
    assert t_quantile(0.025, df) == pytest.approx(-expected, rel=1e-10)


@pytest.mark.parametrize(
    ("t", "df", "expected"),
    [
        (2.0, 5, 0.9490302605850708),
        (-1.3, 2.5, 0.15024339463535416),
        (0.4, 30, 0.654004741742904),
        (7.5, 3, 0.9975445125370058),
    ],
)
def test_t_cdf_matches_scipy(t: float, df: float, expected: float) -> None:
    assert t_cdf(t, df) == pytest.approx(expected, rel=1e-12)


def test_describe_gives_mean_sample_sd_and_the_student_interval() -> None:
    description = describe(A)
    assert description.n == 4
    assert description.mean == pytest.approx(0.981375, rel=1e-14)
    assert description.sd == pytest.approx(0.0007365459931327885, rel=1e-12)
    assert description.low == pytest.approx(0.9802029909627417, rel=1e-12)
    assert description.high == pytest.approx(0.9825470090372586, rel=1e-12)


def test_one_value_has_a_mean_and_no_spread() -> None:
    assert describe([0.5]) == Description(n=1, mean=0.5, sd=None, low=None, high=None)
    with pytest.raises(ValueError, match="at least one value"):
        describe([])


def test_welch_test_matches_scipy_ttest_ind_unequal_variances() -> None:
    test = welch_test(A, B)
    assert test.difference == pytest.approx(0.981375 - 0.9792, rel=1e-12)
    assert test.t == pytest.approx(3.6302559111266084, rel=1e-12)
    assert test.df == pytest.approx(4.147086227874496, rel=1e-12)
    assert test.p_value == pytest.approx(0.02082077225243996, rel=1e-9)
    assert (test.low, test.high) == (
        pytest.approx(0.0005345562208741829, rel=1e-9),
        pytest.approx(0.003815443779126115, rel=1e-9),
    )
    swapped = welch_test(B, A)
    assert (swapped.difference, swapped.p_value) == (pytest.approx(-test.difference), pytest.approx(test.p_value))


def test_welch_test_without_spread_and_with_too_few_values() -> None:
    constant = welch_test([0.9, 0.9], [0.8, 0.8])
    assert constant.difference == pytest.approx(0.1)
    assert (constant.low, constant.high, constant.t, constant.df, constant.p_value) == (None,) * 5
    with pytest.raises(ValueError, match="two values or more in each sample, got 1 and 3"):
        welch_test([0.9], B)


def _run(name: str, test_acc: float | None, best_val_acc: float, error: str | None = None) -> Run:
    history = [{"epoch": 0, "val_acc": best_val_acc - 0.01, "val_loss": 0.3}, {"epoch": 1, "val_acc": best_val_acc}]
    return Run(name, f"{name}.yaml", best_val_acc=best_val_acc, test_acc=test_acc, error=error, history=history)


def test_the_table_states_means_intervals_and_welchs_test_against_the_baseline(tmp_path: Path) -> None:
    groups = {
        "adam": [_run("adam", acc, acc + 0.001) for acc in A],
        "sgd": [*(_run("sgd", acc, acc + 0.001) for acc in B), _run("sgd", None, 0.5, error="fit failed")],
    }
    statistics = config_statistics(groups, "sgd")
    assert statistics[0]["test_acc"]["n"] == 4 and statistics[1]["test_acc"]["n"] == 3  # the failed run is left out
    assert statistics[0]["test_acc_vs_baseline"]["p_value"] == pytest.approx(0.02082077225243996, rel=1e-9)
    assert "test_acc_vs_baseline" not in statistics[1]
    header, rule, adam, sgd = statistics_table(statistics, "sgd")
    assert header == (
        "| config | runs | test_acc mean ± sd | test_acc 95% CI | best val_acc mean ± sd | best val_acc 95% CI "
        "| test_acc − sgd (pp) [95% CI] | Welch's t-test p (test_acc) "
        "| best val_acc − sgd (pp) [95% CI] | Welch's t-test p (best val_acc) |"
    )
    assert rule == "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    assert adam == (
        "| adam | 4/4 | 98.14% ± 0.07 | [98.02%, 98.25%] | 98.24% ± 0.07 | [98.12%, 98.35%] "
        "| +0.22 [+0.05, +0.38] | 0.0208 | +0.22 [+0.05, +0.38] | 0.0208 |"
    )
    assert sgd == (
        "| sgd | 3/4 | 97.92% ± 0.08 | [97.72%, 98.12%] | 98.02% ± 0.08 | [97.82%, 98.22%] "
        "| baseline |  | baseline |  |"
    )
    plot_bands(groups, tmp_path / "comparison.png")
    assert (tmp_path / "comparison.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_without_a_baseline_the_table_has_no_difference_columns() -> None:
    statistics = config_statistics({"adam": [_run("adam", acc, acc) for acc in A]}, None)
    header, _, row = statistics_table(statistics, None)
    assert "Welch" not in header and "−" not in header
    assert row == "| adam | 4/4 | 98.14% ± 0.07 | [98.02%, 98.25%] | 98.14% ± 0.07 | [98.02%, 98.25%] |"


# -- options and bad input ----------------------------------------------------------------


def test_run_options_come_out_of_the_command_line_and_the_rest_stays() -> None:
    argv = ["a.yaml", "--seeds", "3", "--out", "o", "--workers=2", "--baseline", "a.yaml", "--trainer.max_epochs", "1"]
    options, rest = split_run_options(argv)
    assert options == RunOptions(seeds=3, workers=2, baseline="a.yaml")
    assert rest == ["a.yaml", "--out", "o", "--trainer.max_epochs", "1"]
    assert split_run_options(["a.yaml"]) == (RunOptions(1, 1, None), ["a.yaml"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "0"], r"`--seeds 0`: --seeds takes a whole number of 1 or more, e\.g\. `--seeds 5`"),
        (["--seeds", "-2"], r"`--seeds -2`: --seeds takes a whole number"),
        (["--seeds=three"], r"`--seeds three`: --seeds takes a whole number"),
        (["--workers", "0"], r"`--workers 0`: --workers takes a whole number of 1 or more, e\.g\. `--workers 2`"),
        (["--seeds"], r"`--seeds` needs a value, e\.g\. `--seeds 5`"),
        (["--baseline", "--seeds", "2"], r"`--baseline` needs a value"),
    ],
)
def test_bad_run_options_are_explained(argv: list[str], message: str) -> None:
    with pytest.raises(CompareUsageError, match=message):
        split_run_options(["a.yaml", *argv])


def test_the_baseline_is_named_by_path_or_by_name() -> None:
    configs, names = [CONFIGS / "sgd.yaml", CONFIGS / "adam.yaml"], ["sgd", "adam"]
    assert baseline_index(str(CONFIGS / "adam.yaml"), configs, names, seeds=2) == 1
    assert baseline_index("sgd", configs, names, seeds=2) == 0
    with pytest.raises(CompareUsageError, match=r"`--baseline momentum` is not among the configs compared \("):
        baseline_index("momentum", configs, names, seeds=2)
    with pytest.raises(CompareUsageError, match=r"add `--seeds N` with N of 2 or more"):
        baseline_index("sgd", configs, names, seeds=1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--seeds", "0"], "--seeds takes a whole number of 1 or more"),
        (["--seeds", "-1"], "--seeds takes a whole number of 1 or more"),
        (["--workers", "0"], "--workers takes a whole number of 1 or more"),
        (["--seeds", "2", "--baseline", "configs/momentum.yaml"], "is not among the configs compared"),
    ],
)
def test_bad_input_exits_2_with_one_paragraph_and_writes_nothing(
    options: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stopped:
        compare_main([str(CONFIGS / "sgd.yaml"), str(CONFIGS / "adam.yaml"), "--out", str(out), *options])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("lit_nnopt: error: ") and message in error and error.count("\n") == 1
    assert not out.exists()


# -- jobs, manifest and resuming ----------------------------------------------------------


def test_jobs_go_config_by_config_with_a_folder_per_seed() -> None:
    configs = [Path("configs/sgd.yaml"), Path("configs/adam.yaml")]
    jobs = make_jobs(configs, ["sgd", "adam"], seeds=2)
    assert [(job.name, job.seed) for job in jobs] == [("sgd", 0), ("sgd", 1), ("adam", 0), ("adam", 1)]
    assert jobs[1].folder(Path("out")) == Path("out/sgd/seed-1") and jobs[1].seed_args() == ["--seed_everything", "1"]
    (single,) = make_jobs(configs[:1], ["sgd"], seeds=1)
    assert single.folder(Path("out")) == Path("out/sgd") and single.seed_args() == []  # as before --seeds


def test_a_job_is_keyed_by_config_content_seed_and_overrides(tmp_path: Path) -> None:
    config = tmp_path / "a.yaml"
    config.write_text("seed_everything: 1\n")
    job = Job("a", config, 0)
    keys = {job.key([]), job.key(["--trainer.max_epochs", "2"]), Job("a", config, 1).key([])}
    assert len(keys) == 3 and job.key([]) == Job("a", config, 0).key([])
    before = job.key([])
    config.write_text("seed_everything: 2\n")
    assert job.key([]) != before  # an edited config is trained again


def _finished(tmp_path: Path, job: Job, manifest: Manifest, overrides: list[str], error: str | None = None) -> Path:
    summary = job.folder(tmp_path) / "fit" / "run" / "summary.json"
    summary.parent.mkdir(parents=True)
    summary.write_text("{}")
    manifest.record(job.key(overrides), {"config": job.name, "error": error}, summary)
    return summary


def test_the_manifest_leaves_to_do_what_is_not_done_or_whose_result_is_gone(tmp_path: Path) -> None:
    config = tmp_path / "a.yaml"
    config.write_text("seed_everything: 1\n")
    jobs = make_jobs([config], ["a"], seeds=4)
    overrides = ["--trainer.max_epochs", "1"]
    manifest = Manifest(tmp_path / "compare-state.json")
    _finished(tmp_path, jobs[0], manifest, overrides)
    deleted = _finished(tmp_path, jobs[1], manifest, overrides)
    _finished(tmp_path, jobs[2], manifest, overrides, error="fit failed (exit -9)")
    deleted.unlink()
    reread = Manifest(tmp_path / "compare-state.json")
    assert jobs_left(jobs, reread, overrides) == jobs[1:]
    assert reread.finished(jobs[0].key(overrides)) == {"config": "a", "error": None}
    assert jobs_left(jobs, reread, []) == jobs  # other overrides: another comparison


def test_a_cut_off_run_resumes_from_its_last_checkpoint_and_others_start_again(tmp_path: Path) -> None:
    config = tmp_path / "a.yaml"
    config.write_text("seed_everything: 1\n")
    cut_off, done_then_deleted, never_saved = make_jobs([config], ["a"], seeds=3)
    manifest = Manifest(tmp_path / "compare-state.json")
    for job in (cut_off, done_then_deleted, never_saved):
        (job.folder(tmp_path) / "fit" / "run" / "checkpoints").mkdir(parents=True)
    (cut_off.folder(tmp_path) / "fit" / "run" / "checkpoints" / "last.ckpt").write_bytes(b"")
    (done_then_deleted.folder(tmp_path) / "fit" / "run" / "checkpoints" / "last.ckpt").write_bytes(b"")
    manifest.record(done_then_deleted.key([]), {"error": None}, None)
    assert resume_args(cut_off, tmp_path, manifest, []) == ["--ckpt_path", "last"]
    assert (cut_off.folder(tmp_path) / "fit" / "run").is_dir()
    for job in (done_then_deleted, never_saved):  # its old run folder goes, so the run is not counted twice
        assert resume_args(job, tmp_path, manifest, []) == []
        assert not (job.folder(tmp_path) / "fit").exists()


def test_workers_split_the_cpus_unless_the_user_chose_a_thread_count() -> None:
    assert worker_environment(2, {"PATH": "/bin"}, cpus=4) == {"PATH": "/bin", "OMP_NUM_THREADS": "2"}
    assert worker_environment(3, {}, cpus=2) == {"OMP_NUM_THREADS": "1"}
    assert worker_environment(1, {}, cpus=4) == {}
    assert worker_environment(2, {"OMP_NUM_THREADS": "3"}, cpus=4) == {"OMP_NUM_THREADS": "3"}
    assert worker_environment(2, {"MKL_NUM_THREADS": "3"}, cpus=4) == {"MKL_NUM_THREADS": "3"}


def test_stopping_terminates_running_processes_and_refuses_new_ones() -> None:
    children = ChildProcesses()
    codes: list[int] = []
    sleeper = [sys.executable, "-c", "import sys, time; print('up', flush=True); time.sleep(60)"]
    read, write = os.pipe()
    worker = threading.Thread(target=lambda: codes.append(children.call(sleeper, stdout=write)))
    worker.start()
    with os.fdopen(read) as started:
        assert started.readline() == "up\n"
    children.stop()
    worker.join(timeout=10)
    os.close(write)
    assert codes == [-15]  # SIGTERM
    with pytest.raises(Stopped):
        children.call([sys.executable, "-c", "pass"], stdout=subprocess.DEVNULL)


def test_an_interruption_drops_the_queued_jobs_and_goes_on_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compare_runs, "CHILDREN", ChildProcesses())
    jobs = [Job(f"c{index}", Path("c.yaml"), None) for index in range(4)]
    trained: list[str] = []

    def finished(job: Job, result: str) -> None:
        raise KeyboardInterrupt  # Ctrl-C while the first result is recorded

    with pytest.raises(KeyboardInterrupt):
        run_jobs(jobs, 1, lambda job: trained.append(job.name) or job.name, finished)
    # The one worker may have taken the second job before the interruption; the rest never start.
    assert trained in (["c0"], ["c0", "c1"])


# -- a real comparison --------------------------------------------------------------------


def _compare(mnist_dir: Path, out: Path) -> subprocess.CompletedProcess:
    return run_cli(
        "compare",
        str(CONFIGS / "adam.yaml"),
        str(CONFIGS / "sgd.yaml"),
        "--seeds",
        "2",
        "--workers",
        "2",
        "--baseline",
        str(CONFIGS / "sgd.yaml"),
        "--out",
        str(out),
        "--data.data_dir",
        str(mnist_dir),
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "4",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.limit_test_batches",
        "2",
        "--trainer.logger.mode",
        "disabled",
        env={"OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow  # eight command-line runs, then two again
def test_compare_over_seeds_writes_the_statistics_and_a_rerun_trains_only_what_is_missing(
    mnist_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = _compare(mnist_dir, out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count(": training ") == 4 and "Trained 4 of 4 runs here." in result.stderr
    runs = json.loads((out / "comparison.json").read_text())
    assert [(run["config"], run["seed"]) for run in runs] == [("adam", 0), ("adam", 1), ("sgd", 0), ("sgd", 1)]
    assert all(run["error"] is None and run["test_acc"] is not None for run in runs)
    assert runs[0]["test_acc"] != runs[1]["test_acc"]  # two seeds, two different runs
    adam, sgd = ([run["test_acc"] for run in runs if run["config"] == name] for name in ("adam", "sgd"))
    statistics = json.loads((out / "statistics.json").read_text())
    assert statistics["baseline"] == "sgd"
    assert statistics["configs"][0]["test_acc"]["mean"] == pytest.approx(sum(adam) / 2)
    assert statistics["configs"][0]["test_acc_vs_baseline"]["p_value"] == pytest.approx(welch_test(adam, sgd).p_value)
    table = (out / "comparison.md").read_text()
    expected_adam_row = statistics_table(config_statistics(_by_config(runs), "sgd"), "sgd")[2]
    assert expected_adam_row in table and expected_adam_row.startswith("| adam | 2/2 | ")
    assert "Welch's t-test p (test_acc)" in table and "| sgd | 2/2 |" in table and "| baseline |" in table
    assert (out / "comparison.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    # One run's result is deleted: running the same command again trains that run and no other.
    for name in ("comparison.md", "comparison.json", "statistics.json"):
        (out / name).unlink()
    kept = json.loads((out / "compare-state.json").read_text())
    (summary,) = (out / "adam" / "seed-1" / "fit").rglob("summary.json")
    summary.unlink()
    again = _compare(mnist_dir, out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "3 of 4 runs already done" in again.stderr and "Trained 1 of 4 runs here." in again.stderr
    (training,) = [line for line in again.stderr.splitlines() if ": training " in line]
    assert training.startswith("[2/4] adam seed 1: training ")
    assert len(list((out / "adam" / "seed-1" / "fit").rglob("summary.json"))) == 1  # one run folder, not two
    rerun = json.loads((out / "comparison.json").read_text())
    assert [(run["config"], run["seed"]) for run in rerun] == [(run["config"], run["seed"]) for run in runs]
    assert [run["test_acc"] for index, run in enumerate(rerun) if index != 1] == [
        run["test_acc"] for index, run in enumerate(runs) if index != 1
    ]
    state = json.loads((out / "compare-state.json").read_text())["runs"]
    assert len(state) == 4 and all(entry["outcome"] == "done" for entry in state.values())
    assert {key: entry for key, entry in state.items() if "adam.yaml" not in key or ", 1, " not in key} == {
        key: entry for key, entry in kept["runs"].items() if "adam.yaml" not in key or ", 1, " not in key
    }


def _by_config(runs: list[dict]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        fields = {key: value for key, value in run.items() if key != "seed"}
        groups.setdefault(run["config"], []).append(Run(**fields))
    return groups


@pytest.mark.slow  # three command-line runs, one of them cut off, then two again
def test_a_comparison_stopped_by_sigterm_resumes_the_cut_off_run_from_its_last_checkpoint(
    mnist_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = [
        "compare",
        str(CONFIGS / "adam.yaml"),
        "--seeds",
        "3",
        "--out",
        str(out),
        "--data.data_dir",
        str(mnist_dir),
        "--trainer.max_epochs",
        "3",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.limit_test_batches",
        "2",
        "--trainer.logger.mode",
        "disabled",
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    comparison = subprocess.Popen(
        [sys.executable, "-m", "lit_nnopt", *args], stderr=subprocess.PIPE, text=True, env=environment
    )
    deadline = time.monotonic() + 300
    # Stopped once seed 1 has saved the checkpoint of its first epoch (of three): cut off mid-way.
    while not any((out / "adam" / "seed-1" / "fit").rglob("last.ckpt")):
        assert comparison.poll() is None and time.monotonic() < deadline, "seed 1 never saved a checkpoint"
        time.sleep(0.05)
    comparison.send_signal(signal.SIGTERM)
    _, stderr = comparison.communicate(timeout=180)
    assert comparison.returncode == 143, stderr[-3000:]
    assert "Stopped; 1 of 3 runs are done. Run the same command again to go on." in stderr
    again = run_cli(*args, env={"OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 of 3 runs already done" in again.stderr and "Trained 2 of 3 runs here." in again.stderr
    assert "[2/3] adam seed 1: training " in again.stderr and " from its last.ckpt " in again.stderr
    assert "[3/3] adam seed 2: training " in again.stderr and again.stderr.count(" from its last.ckpt ") == 1
    for seed in range(3):
        (summary,) = (out / "adam" / f"seed-{seed}" / "fit").rglob("summary.json")  # one run folder each
        content = json.loads(summary.read_text())
        assert [row["epoch"] for row in content["history"]] == [0, 1, 2] and content["final"]["test_acc"] is not None
