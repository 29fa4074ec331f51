"""RunPictures: the callback that leaves a run's pictures in its folder, titled with the run."""

import lightning.pytorch as pl
import pytest
import torch

from lit_nnopt import MNISTClassifier, MNISTDataModule
from lit_nnopt.app.reports import RunSummary
from lit_nnopt.app.run_pictures import (
    CONFUSION_MATRIX_FILE,
    LEARNING_CURVES_FILE,
    WORST_EXAMPLES_FILE,
    RunPictures,
    _WorstExamples,
)
from tests.helpers import png_size


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


def test_each_picture_is_titled_with_the_run_the_config_and_the_model(tmp_path):
    model = MNISTClassifier(optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05}})
    title = RunPictures(config_name="sgd.yaml")._title(tmp_path / "abc123", model)
    assert title == "run abc123 · sgd.yaml · MLP, SGD lr=0.05"


def test_the_worst_examples_file_has_a_neutral_name():
    assert WORST_EXAMPLES_FILE == "worst_test_images.png"
