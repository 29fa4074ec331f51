"""``python -m lit_nnopt compare``: argument parsing, the table and plot, and a real comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_nnopt.app.compare import DEFAULT_OUT, parse_args, run_names
from lit_nnopt.app.compare_results import Run, plot, print_table, write_markdown
from tests.helpers import CONFIGS, run_cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_parse_args_splits_configs_out_and_overrides() -> None:
    sgd, adam = str(CONFIGS / "sgd.yaml"), str(CONFIGS / "adam.yaml")
    configs, out, overrides = parse_args(
        [sgd, adam, "--trainer.max_epochs", "5", "--out", "results", "--data.data_dir=/data"]
    )
    assert configs == [Path(sgd), Path(adam)]
    assert out == Path("results")
    assert overrides == ["--trainer.max_epochs", "5", "--data.data_dir=/data"]
    assert parse_args([sgd, "--out=elsewhere"])[1] == Path("elsewhere")
    assert parse_args([sgd])[1:] == (Path(DEFAULT_OUT), [])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--trainer.max_epochs", "5"], "no CONFIG"),
        (["configs/no_such.yaml"], "not found: configs/no_such.yaml"),
        ([str(CONFIGS / "sgd.yaml"), "--out"], "`--out` needs a folder"),
    ],
)
def test_parse_args_explains_bad_input(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_args(argv)


def test_help_prints_usage(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stopped:
        parse_args(["--help"])
    assert stopped.value.code == 0
    assert "usage: python -m lit_nnopt compare CONFIG" in capsys.readouterr().out


def test_run_names_follow_file_names_and_stay_unique() -> None:
    assert run_names([Path("a/sgd.yaml"), Path("b/sgd.yaml"), Path("adam.yaml"), Path("c/sgd.yaml")]) == [
        "sgd",
        "sgd-2",
        "adam",
        "sgd-3",
    ]


def _history(accuracies: list[float]) -> list[dict]:
    return [{"epoch": epoch, "val_acc": acc, "val_loss": 1 - acc} for epoch, acc in enumerate(accuracies)]


def test_markdown_has_one_row_per_config_and_reports_failures(tmp_path: Path) -> None:
    runs = [
        Run(
            "sgd",
            "configs/sgd.yaml",
            0.95,
            0.949,
            0.951,
            2,
            3,
            "max_epochs (3) reached",
            2.5,
            None,
            _history([0.9, 0.94, 0.95]),
        ),
        Run("broken", "broken.yaml", error="fit failed (exit 1): lit_nnopt: error: a | b"),
    ]
    path = tmp_path / "comparison.md"
    write_markdown(runs, path, "python -m lit_nnopt compare configs/sgd.yaml broken.yaml")
    rows = [line for line in path.read_text().splitlines() if line.startswith("| ") and "config" not in line]
    assert rows[0] == "| sgd | 95.00% | 94.90% | 95.10% | 2 | 3 | max_epochs (3) reached | 2.50 |"
    assert rows[1].startswith("| broken |") and "FAILED: fit failed (exit 1): lit_nnopt: error: a \\| b" in rows[1]
    assert len(rows) == 2
    assert "Command: `python -m lit_nnopt compare configs/sgd.yaml broken.yaml`" in path.read_text()


def test_a_run_that_did_not_learn_says_so_in_the_table(tmp_path: Path) -> None:
    diverged = Run("hot", "hot.yaml", best_val_acc=0.0983, epochs_run=2, stop_reason="max_epochs (2) reached")
    diverged.status, diverged.problem = "diverged", "train_loss became NaN or infinite in epoch 0"
    flat = Run("flat", "flat.yaml", status="at_chance", problem="val_acc stayed at chance")
    path = tmp_path / "comparison.md"
    write_markdown([diverged, flat], path, "python -m lit_nnopt compare hot.yaml flat.yaml")
    rows = [line for line in path.read_text().splitlines() if line.startswith("| ") and "config" not in line]
    assert rows[0] == (
        "| hot | 9.83% |  |  |  | 2 | DIVERGED: train_loss became NaN or infinite in epoch 0 (not tested) |  |"
    )
    assert "| AT CHANCE: val_acc stayed at chance (not tested) |" in rows[1]


def test_plot_draws_each_run_with_a_history(tmp_path: Path) -> None:
    path = tmp_path / "comparison.png"
    plot([Run("a", "a.yaml", history=_history([0.5, 0.7])), Run("failed", "f.yaml", error="x")], path)
    assert path.read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.slow  # three command-line runs
def test_compare_a_diverging_config_a_broken_one_and_a_good_one(mnist_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("# Not a valid config: the model has no such argument.\nmodel:\n  no_such_argument: 1\n")
    diverging = tmp_path / "diverging.yaml"
    diverging.write_text((CONFIGS / "sgd.yaml").read_text().replace("lr: 0.01 ", "lr: 1.0e+25 "))
    out = tmp_path / "out"
    result = run_cli(
        "compare",
        str(diverging),
        str(broken),
        str(CONFIGS / "tutorial.yaml"),
        "--out",
        str(out),
        "--data.data_dir",
        str(mnist_dir),
        "--trainer.max_epochs",
        "2",
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
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "comparison.png").read_bytes().startswith(PNG_SIGNATURE)
    rows = {row["config"]: row for row in json.loads((out / "comparison.json").read_text())}
    assert list(rows) == ["diverging", "broken", "tutorial"]
    for name in ("diverging", "tutorial"):
        assert rows[name]["error"] is None
        assert rows[name]["epochs_run"] == 2 and len(rows[name]["history"]) == 2
    assert rows["tutorial"]["status"] == "ok" and 0.0 <= rows["tutorial"]["test_acc"] <= 1.0
    assert rows["tutorial"]["best_val_acc"] == max(row["val_acc"] for row in rows["tutorial"]["history"])
    assert rows["diverging"]["status"] == "diverged" and rows["diverging"]["test_acc"] is None
    assert "fit failed" in rows["broken"]["error"] and "no_such_argument" in rows["broken"]["error"]
    table = [line for line in (out / "comparison.md").read_text().splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table[1:]] == ["| diverging", "| broken", "| tutorial"]
    assert "| DIVERGED: train_loss, val_loss became NaN or infinite in epoch 0 (not tested) |" in table[1]
    (fit_run,) = [path.parent for path in (out / "tutorial" / "fit").rglob("config.yaml")]
    assert (fit_run / "confusion_matrix.png").is_file() and not (out / "tutorial" / "test").exists()  # one run folder
    assert "[1/3] diverging: DIVERGED: " in result.stderr and "[3/3] tutorial: test_acc" in result.stderr


def test_the_printed_table_keeps_a_row_on_one_line_off_a_terminal(capsys, monkeypatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    run = Run(
        "exponential_decay",
        "configs/exponential_decay.yaml",
        0.9812,
        0.981,
        0.9803,
        19,
        20,
        "max_epochs (20) reached",
        2.5,
    )
    print_table([run])
    rows = [line for line in capsys.readouterr().out.splitlines() if "exponential_decay" in line]
    assert len(rows) == 1 and "98.12%" in rows[0] and "max_epochs (20) reached" in rows[0] and "2.50" in rows[0]
