import pytest
import torch

from {{ cookiecutter.project_slug }}.data import SyntheticDataModule


def test_splits_have_the_requested_sizes_shapes_and_classes(synthetic_data):
    synthetic_data.setup("fit")
    assert {split: len(dataset) for split, dataset in synthetic_data.datasets.items()} == {
        "train": 192,
        "val": 64,
        "test": 64,
    }
    images, labels = next(iter(synthetic_data.train_dataloader()))
    assert images.shape == (32, 1, 28, 28) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() < 10


def test_the_same_seed_gives_the_same_data_and_another_seed_other_data():
    first, second, other = (SyntheticDataModule(train_size=8, val_size=4, test_size=4, seed=s) for s in (1, 1, 2))
    for data in (first, second, other):
        data.setup()
    assert torch.equal(first.datasets["val"].tensors[0], second.datasets["val"].tensors[0])
    assert not torch.equal(first.datasets["val"].tensors[0], other.datasets["val"].tensors[0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train_size": 0}, "`train_size` must be a positive"),
        ({"image_shape": (28, 28)}, "`image_shape` must be three positive sizes"),
        ({"num_classes": 1}, "`num_classes` must be at least 2"),
        ({"noise": -0.1}, "`noise` must be >= 0"),
    ],
)
def test_bad_arguments_are_refused_with_the_argument_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticDataModule(**kwargs)
