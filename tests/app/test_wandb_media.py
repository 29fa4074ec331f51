"""The W&B media of a run's pictures, made with a stand-in for the ``wandb`` module (no W&B needed)."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lit_nnopt.app import wandb_media


class _Image:
    def __init__(self, data):
        self.data = data


class _Table:
    def __init__(self, columns, data):
        self.columns, self.data = columns, data


FAKE_WANDB = SimpleNamespace(
    Image=_Image,
    Table=_Table,
    plot_table=lambda spec, table, fields, strings: SimpleNamespace(spec=spec, table=table, title=strings["title"]),
)


def test_a_picture_is_logged_as_an_image_of_its_file():
    (key, image), *_ = wandb_media.picture("learning_curves", Path("run/learning_curves.png"))(FAKE_WANDB).items()
    assert key == "learning_curves" and image.data == str(Path("run/learning_curves.png"))


def test_the_confusion_matrix_is_a_wandb_chart_of_every_cell_and_its_png():
    matrix = torch.tensor([[5, 1], [0, 7]])
    media = wandb_media.confusion_matrix(matrix, Path("cm.png"))(FAKE_WANDB)
    assert set(media) == {"test_confusion_matrix", "test_confusion_matrix_image"}
    chart = media["test_confusion_matrix"]
    assert chart.spec == "wandb/confusion_matrix/v1" and chart.title == "test confusion matrix"
    assert chart.table.columns == ["Actual", "Predicted", "nPredictions"]
    assert chart.table.data == [["0", "0", 5], ["0", "1", 1], ["1", "0", 0], ["1", "1", 7]]
    assert media["test_confusion_matrix_image"].data == "cm.png"


def test_the_worst_examples_are_a_table_of_grey_images_stretched_to_the_full_range():
    images = torch.tensor([[[[-1.0, 0.0], [0.5, 1.0]]], [[[2.0, 2.0], [2.0, 2.0]]]])  # standardized, and a flat one
    media = wandb_media.worst_examples(
        Path("worst.png"), images, torch.tensor([3, 8]), torch.tensor([5, 0]), torch.tensor([0.01, 0.2])
    )(FAKE_WANDB)
    table = media["test_worst_digits"]
    assert table.columns == ["image", "label", "prediction", "p_label"]
    (first, label, prediction, probability), second = table.data[0], table.data[1]
    assert first.data.dtype == np.uint8 and first.data.tolist() == [[0, 128], [191, 255]]
    assert second[0].data.tolist() == [[0, 0], [0, 0]]  # a flat image is not divided by zero
    assert (label, prediction) == (3, 5) and probability == pytest.approx(0.01)
    assert media["test_worst_digits_grid"].data == "worst.png"


def test_nothing_is_made_without_a_wandb_logger():
    def must_not_run(_wandb):
        raise AssertionError("media made although no W&B logger would receive them")

    wandb_media.log_media(SimpleNamespace(loggers=[], global_step=3), [must_not_run])
