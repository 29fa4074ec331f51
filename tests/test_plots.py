"""The pictures: learning curves, confusion matrix, worst-classified digits, and the callback that draws them."""

import struct
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lit_nnopt import MNISTClassifier, MNISTDataModule
from lit_nnopt.app import plots
from lit_nnopt.app.plots import (
    CONFUSION_MATRIX_FILE,
    LEARNING_CURVES_FILE,
    WORST_EXAMPLES_FILE,
    RunPictures,
    _WorstExamples,
    class_names_of,
    confusion_colour_scale,
    learning_rate_keys,
    new_figure,
    plot_confusion_matrix,
    plot_learning_curves,
    plot_worst_examples,
)
from lit_nnopt.app.reports import RunSummary
from tests.helpers import PNG_SIGNATURE, png_size


def _history(epochs: int = 4) -> list[dict]:
    return [
        {
            "epoch": epoch,
            "train_loss": 1.0 / (epoch + 1),
            "train_acc": 0.8 + 0.04 * epoch,
            "val_loss": 1.1 / (epoch + 1),
            "val_acc": 0.78 + 0.04 * epoch,
            "lr-Adam": 1e-2 * 0.1**epoch,
            "lr-Adam-momentum": 0.9,
            "lr-Adam-weight_decay": 0.0,
        }
        for epoch in range(epochs)
    ]


def test_learning_curves_are_a_png_of_three_panels(tmp_path):
    path = plot_learning_curves(_history(), tmp_path / "curves.png")
    assert png_size(path) == (1500, 450)  # 15 x 4.5 inches at 100 dpi
    assert path.stat().st_size > 20_000  # three panels of lines and text, not a blank canvas


def test_learning_curves_follow_dpi(tmp_path):
    assert png_size(plot_learning_curves(_history(), tmp_path / "curves.png", dpi=50)) == (750, 225)


def test_learning_curves_draw_one_epoch_and_missing_values(tmp_path):
    history = [{"epoch": 0, "train_loss": 0.5, "train_acc": None, "val_loss": 0.4, "val_acc": 0.9}]
    assert png_size(plot_learning_curves(history, tmp_path / "one.png")) == (1500, 450)


def test_learning_rate_keys_leave_out_momentum_and_weight_decay():
    history = _history() + [{"epoch": 4, "lr-SGD/pg1": 0.1, "lr-SGD/pg1-momentum": 0.9}]
    assert learning_rate_keys(history) == ["lr-Adam", "lr-SGD/pg1"]


def _png_text(path: Path) -> dict[str, str]:
    """The ``tEXt`` chunks of a PNG (keyword: text), where matplotlib writes ``savefig``'s ``metadata``."""
    content = path.read_bytes()
    assert content[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    chunks, offset = {}, 8
    while offset < len(content):
        (length,) = struct.unpack(">I", content[offset : offset + 4])
        kind, data = content[offset + 4 : offset + 8], content[offset + 8 : offset + 8 + length]
        if kind == b"tEXt":
            keyword, _, text = data.partition(b"\0")
            chunks[keyword.decode("latin-1")] = text.decode("latin-1")
        offset += 12 + length
    return chunks


def test_learning_curves_are_titled_with_the_run_not_a_panel(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "new_figure", lambda *size: drawn.append(new_figure(*size)) or drawn[-1])
    path = plot_learning_curves(_history(), tmp_path / "curves.png", title="run abc123 · sgd.yaml · MLP, SGD lr=0.05")
    assert _png_text(path)["Title"] == "run abc123 · sgd.yaml · MLP, SGD lr=0.05"
    (figure,) = drawn
    panels = [axes.get_title() for axes in figure.axes]
    assert panels == ["accuracy", "loss", "learning rate"]


def test_the_confusion_matrix_carries_the_run_title(tmp_path):
    matrix = torch.eye(10, dtype=torch.int64) * 100
    path = plot_confusion_matrix(matrix, tmp_path / "cm.png", title="run abc123 · adam.yaml")
    assert _png_text(path)["Title"] == "run abc123 · adam.yaml"


def test_learning_curves_need_an_epoch(tmp_path):
    with pytest.raises(ValueError, match="no epoch"):
        plot_learning_curves([], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_confusion_matrix_png(tmp_path):
    matrix = torch.eye(10, dtype=torch.int64) * 90 + 1
    assert png_size(plot_confusion_matrix(matrix, tmp_path / "cm.png")) == (750, 650)


@pytest.mark.parametrize(
    "matrix, names, message",
    [
        (torch.ones(3, 4), None, "must be square"),
        (torch.ones(3, 3), ["a", "b"], "2 names for a 3 x 3"),
    ],
)
def test_confusion_matrix_checks_its_input(tmp_path, matrix, names, message):
    with pytest.raises(ValueError, match=message):
        plot_confusion_matrix(matrix, tmp_path / "cm.png", class_names=names)


def test_worst_examples_grid_is_square_ish(tmp_path):
    count = 10  # 4 columns x 3 rows of 1.6 x 1.8 inches
    path = plot_worst_examples(
        torch.rand(count, 1, 28, 28),
        torch.arange(count),
        torch.arange(count).flip(0),
        torch.rand(count),
        tmp_path / "worst.png",
    )
    assert png_size(path) == (640, 540)


def test_worst_examples_need_matching_lengths(tmp_path):
    with pytest.raises(ValueError, match="one label, prediction and probability per image"):
        plot_worst_examples(torch.rand(3, 28, 28), torch.arange(2), torch.arange(3), torch.rand(3), tmp_path / "w.png")


def test_worst_examples_keep_the_lowest_probability_of_the_truth_across_batches():
    worst = _WorstExamples(count=3)
    # Each row: probabilities of classes 0 and 1; the label is 0, so column 0 is p(truth).
    batches = [torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), torch.tensor([[0.05, 0.95], [0.7, 0.3]])]
    for index, probabilities in enumerate(batches):
        images = torch.full((len(probabilities), 1, 2, 2), float(index))
        worst.update(images, torch.zeros(len(probabilities), dtype=torch.long), probabilities)
    label_probability, images, labels, predictions = worst.tensors
    assert label_probability.tolist() == pytest.approx([0.05, 0.2, 0.6])
    assert predictions.tolist() == [1, 1, 0]
    assert images[:, 0, 0, 0].tolist() == [1.0, 0.0, 0.0]  # which batch each came from
    assert labels.tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    "kwargs, message", [({"worst_count": -1}, "worst_count` must be >= 0"), ({"dpi": 0}, "dpi` must be a positive")]
)
def test_run_pictures_checks_its_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RunPictures(**kwargs)


def test_run_pictures_need_the_run_summary_for_learning_curves(tmp_path):
    trainer = pl.Trainer(logger=False, callbacks=[RunPictures()], default_root_dir=tmp_path)
    with pytest.raises(RuntimeError, match="Add `lit_nnopt.app.reports.RunSummary`"):
        RunPictures().setup(trainer, MNISTClassifier(), "fit")
    RunPictures(learning_curves=False).setup(trainer, MNISTClassifier(), "fit")  # nothing needed then


@pytest.fixture(scope="module")
def pictures_of_a_short_run(mnist_dir, tmp_path_factory):
    """Two short epochs and a partial test on the real MNIST, in process, no logger."""
    root = tmp_path_factory.mktemp("pictures")
    pictures = RunPictures(worst_count=16)
    trainer = pl.Trainer(
        max_epochs=2,
        limit_train_batches=10,
        limit_val_batches=3,
        limit_test_batches=5,
        logger=False,
        callbacks=[RunSummary(), pictures],
        default_root_dir=root,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    model, data = MNISTClassifier(), MNISTDataModule(str(mnist_dir), batch_size=64, eval_batch_size=64)
    trainer.fit(model, data)
    trainer.test(model, data, verbose=False)
    return root, pictures


def test_fit_leaves_learning_curves(pictures_of_a_short_run):
    root, _ = pictures_of_a_short_run
    assert png_size(root / LEARNING_CURVES_FILE) == (1500, 450)


def test_test_leaves_a_confusion_matrix_of_every_test_sample(pictures_of_a_short_run):
    root, pictures = pictures_of_a_short_run
    assert png_size(root / CONFUSION_MATRIX_FILE) == (750, 650)
    assert int(pictures._confusion.compute().sum()) == 5 * 64  # limit_test_batches x eval_batch_size


def test_test_leaves_the_worst_digits(pictures_of_a_short_run):
    root, pictures = pictures_of_a_short_run
    assert png_size(root / WORST_EXAMPLES_FILE) == (640, 720)  # 16 images: 4 x 4
    label_probability = pictures._worst.tensors[0]
    assert len(label_probability) == 16 and torch.all(label_probability[:-1] <= label_probability[1:])


def test_run_pictures_do_not_predict_again_when_no_test_picture_is_asked_for():
    def no_forward(_images):
        raise AssertionError("predicted although no test picture is drawn")

    pictures = RunPictures(confusion_matrix=False, worst_count=0)
    batch = (torch.rand(4, 1, 28, 28), torch.arange(4))
    pictures.on_test_batch_end(None, no_forward, None, batch, 0)
    pictures.on_test_end(None, no_forward)  # with a trainer of None, any work would fail


# -- readable pictures (issue 18) -----------------------------------------------------------


def test_a_single_error_is_coloured_and_an_empty_cell_is_not():
    counts = torch.tensor([[1000, 1, 0], [0, 980, 20], [3, 0, 997]])
    cells, norm, colour_map = confusion_colour_scale(counts)
    colours = colour_map(norm(cells))
    one_error = colours[0, 1]
    assert cells.mask[0, 2] and not cells.mask[0, 1]  # masked: drawn white
    assert sum(1 - channel for channel in one_error[:3]) > 0.1  # visibly blue, not near-white
    assert norm(1) < norm(20) < norm(1000)


def _module_with(dataset: str) -> tuple[pl.Trainer, MNISTClassifier]:
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.datamodule = MNISTDataModule(dataset=dataset)
    return trainer, MNISTClassifier()


def test_fashion_mnist_classes_have_names_and_mnist_keeps_its_digits():
    fashion, _ = _module_with("fashion_mnist")
    digits, _ = _module_with("mnist")
    assert class_names_of(fashion)[:3] == ["T-shirt/top", "Trouser", "Pullover"] and len(class_names_of(fashion)) == 10
    assert class_names_of(digits) == [str(i) for i in range(10)]


def test_each_picture_is_titled_with_the_run_the_config_and_the_model(tmp_path):
    model = MNISTClassifier(optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05}})
    title = RunPictures(config_name="sgd.yaml")._title(tmp_path / "abc123", model)
    assert title == "run abc123 · sgd.yaml · MLP, SGD lr=0.05"


def test_the_worst_examples_file_has_a_neutral_name():
    assert WORST_EXAMPLES_FILE == "worst_test_images.png"
