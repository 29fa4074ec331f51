"""The DataModule on the real MNIST, and the in-memory batch loader."""

import gzip
import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lit_nnopt.data import BatchLoader, MNISTDataModule, class_names_of
from lit_nnopt.idx import DataError


def _loader(count=103, batch_size=10, **kwargs):
    inputs = torch.arange(count, dtype=torch.float32).reshape(count, 1, 1, 1).expand(count, 1, 28, 28).contiguous()
    labels = torch.arange(count)
    return BatchLoader(inputs, labels, batch_size, shuffle=True, seed=3, **kwargs)


def _served(loader):
    return torch.cat([labels for _, labels in loader]).tolist()


def test_batches_pair_each_input_with_its_target_and_cover_the_split_once():
    loader = _loader()
    assert len(loader) == 11
    inputs, labels = next(iter(_loader()))
    assert inputs.shape == (10, 1, 28, 28) and inputs.dtype == torch.float32
    assert torch.equal(inputs[:, 0, 0, 0], labels.float())
    assert sorted(_served(loader)) == list(range(103))


def test_inputs_and_targets_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="`inputs` has 5 samples and `targets` 4"):
        BatchLoader(torch.zeros(5, 3), torch.zeros(4), 2, shuffle=False)


def test_each_epoch_is_a_new_permutation_that_a_seed_reproduces():
    loader = _loader()
    first, second = _served(loader), _served(loader)
    assert first != second
    again = _loader()
    assert _served(again) == first and _served(again) == second


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_ddp_shards_are_disjoint_equal_and_cover_the_split(world_size):
    shards = [_served(_loader(rank=rank, world_size=world_size)) for rank in range(world_size)]
    assert len({len(shard) for shard in shards}) == 1, "every rank must run the same number of steps"
    padding = len(shards[0]) * world_size - 103
    assert sorted(set().union(*shards)) == list(range(103))
    assert sum(len(shard) for shard in shards) - len(set().union(*shards)) == padding < world_size
    if padding == 0:
        assert all(set(a).isdisjoint(b) for i, a in enumerate(shards) for b in shards[i + 1 :])


def test_resume_mid_epoch_continues_with_the_same_batches():
    reference = _loader()
    uninterrupted = [_served(reference) for _ in range(2)]

    interrupted = _loader()
    iterator = iter(interrupted)
    head = [next(iterator)[1] for _ in range(4)]
    state = interrupted.state_dict()
    assert state["epoch"] == 0 and state["batches_served"] == 4

    resumed = _loader()
    resumed.load_state_dict(state)
    rest = _served(resumed)
    assert torch.cat(head).tolist() + rest == uninterrupted[0]
    assert _served(resumed) == uninterrupted[1]


def test_state_after_a_full_epoch_points_at_the_next_one():
    loader = _loader()
    _served(loader)
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["batches_served"] == 0


def test_unshuffled_loader_serves_in_order_and_resumes_mid_epoch():
    loader = BatchLoader(torch.arange(25.0).reshape(25, 1), torch.arange(25), 10, shuffle=False)
    assert _served(loader) == list(range(25))
    iterator = iter(loader)
    next(iterator)
    resumed = BatchLoader(torch.arange(25.0).reshape(25, 1), torch.arange(25), 10, shuffle=False)
    resumed.load_state_dict(loader.state_dict())
    assert [inputs[:, 0].tolist() for inputs, _ in resumed] == [list(range(10, 20)), list(range(20, 25))]


def test_unshuffled_ddp_shards_take_every_other_sample_in_order():
    shards = [
        _served(
            BatchLoader(torch.arange(10.0).reshape(10, 1), torch.arange(10), 3, shuffle=False, rank=r, world_size=2)
        )
        for r in range(2)
    ]
    assert shards == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]


def test_split_is_seeded_deterministic_and_disjoint(mnist_dir):
    first = MNISTDataModule(str(mnist_dir), seed=1).split_indices(60000)
    again = MNISTDataModule(str(mnist_dir), seed=1).split_indices(60000)
    other = MNISTDataModule(str(mnist_dir), seed=2).split_indices(60000)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    val, train = first
    assert len(val) == 12000 and len(train) == 48000
    assert len(set(val.tolist()) | set(train.tolist())) == 60000


def test_keras_split_takes_the_last_fraction(mnist_dir):
    val, train = MNISTDataModule(str(mnist_dir), val_split_mode="last").split_indices(60000)
    assert val.tolist() == list(range(48000, 60000))
    assert train.tolist() == list(range(48000))


def test_real_mnist_loads_from_gz_in_torchvision_layout(mnist_dir):
    data = MNISTDataModule(str(mnist_dir))
    data.setup("fit")
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (64, 1, 28, 28) and labels.shape == (64,)
    assert images.dtype == torch.float32 and images.min() == 0.0 and images.max() == 1.0
    assert len(data.val_dataloader()) == 12  # eval_batch_size 1000
    assert len(data.test_dataloader()) == 10


def test_standardized_inputs_have_the_training_splits_zero_mean_and_unit_variance(mnist_dir):
    data = MNISTDataModule(str(mnist_dir), standardize=True, batch_size=48000)
    data.setup("fit")
    train_inputs, _ = next(iter(data.train_dataloader()))
    assert train_inputs.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert train_inputs.std().item() == pytest.approx(1.0, abs=1e-5)
    plain = MNISTDataModule(str(mnist_dir))
    plain.setup("fit")
    (pixels, _), (standardized, _) = next(iter(plain.val_dataloader())), next(iter(data.val_dataloader()))
    mean, std = 0.1307, 0.3081  # MNIST's training pixels, to four digits
    assert torch.allclose(standardized, (pixels - mean) / std, atol=2e-3)


def test_flat_folder_with_raw_files_works(mnist_dir, tmp_path):
    for source in (mnist_dir / "MNIST" / "raw").glob("*labels*.gz"):
        (tmp_path / source.name[:-3]).write_bytes(gzip.decompress(source.read_bytes()))
    for source in (mnist_dir / "MNIST" / "raw").glob("*images*.gz"):
        os.symlink(source, tmp_path / source.name)
    data = MNISTDataModule(str(tmp_path))
    data.setup("fit")
    assert len(data.train_dataloader()) == 750


def test_missing_files_without_download_name_the_folders(tmp_path):
    with pytest.raises(DataError, match=f"searched {tmp_path}/MNIST/raw, {tmp_path}") as error:
        MNISTDataModule(str(tmp_path), download=False).prepare_data()
    assert "--data.data_dir" in str(error.value)


def test_failed_download_explains_how_to_work_offline(tmp_path, monkeypatch):
    from torchvision import datasets

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(datasets, "MNIST", offline)
    with pytest.raises(DataError, match="downloading them through torchvision failed.*Without a network"):
        MNISTDataModule(str(tmp_path), download=True).prepare_data()


def test_data_dir_defaults_to_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LIT_NNOPT_DATA_DIR", str(tmp_path))
    assert MNISTDataModule().data_dir == tmp_path
    monkeypatch.delenv("LIT_NNOPT_DATA_DIR")
    assert str(MNISTDataModule().data_dir) == "data"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"val_split": 0.0}, "val_split"),
        ({"val_split": 1.0}, "val_split"),
        ({"batch_size": 0}, "batch_size"),
        ({"eval_batch_size": -1}, "eval_batch_size"),
        ({"dataset": "cifar"}, "mnist, fashion_mnist"),
        ({"val_split_mode": "first"}, "random, last"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MNISTDataModule(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 50000}, "`batch_size` 50000 is larger than the train split"),
        ({"eval_batch_size": 11000}, "`eval_batch_size` 11000 is larger than the test split"),
    ],
)
def test_batch_larger_than_a_split_is_refused(mnist_dir, kwargs, message):
    data = MNISTDataModule(str(mnist_dir), **kwargs)
    with pytest.raises(DataError, match=message):
        data.setup("fit")


def test_an_epoch_cut_short_is_not_resumed_in_the_next_one():
    epoch = {"now": 0}
    loader = _loader(current_epoch=lambda: epoch["now"])
    iterator = iter(loader)
    [next(iterator) for _ in range(3)]  # limit_train_batches=3
    state = loader.state_dict()
    resumed = _loader(current_epoch=lambda: epoch["now"])
    resumed.load_state_dict(state)
    epoch["now"] = 1
    assert _served(resumed) == _served(_loader(current_epoch=lambda: 1))
    assert len(_served(_loader(current_epoch=lambda: 1))) == 103


def test_a_mistyped_data_dir_is_refused_not_created_nor_downloaded_into(tmp_path, monkeypatch):
    (tmp_path / "mnist").mkdir()
    downloads = []
    monkeypatch.setattr(MNISTDataModule, "_download", lambda self, searched: downloads.append(searched))
    with pytest.raises(DataError) as error:
        MNISTDataModule(str(tmp_path / "mnits"), download=True).prepare_data()
    message = str(error.value)
    assert message.startswith(f"mnist files missing: the data folder {tmp_path / 'mnits'} does not exist")
    assert f"(did you mean {tmp_path / 'mnist'}?)" in message and "`--data.data_dir`" in message
    assert not (tmp_path / "mnits").exists() and downloads == []


def test_a_data_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "data.tar").write_bytes(b"not a folder")
    with pytest.raises(DataError, match=r"data.tar is a file, not a folder\. Point `--data.data_dir`"):
        MNISTDataModule(str(tmp_path / "data.tar"), download=False).prepare_data()


def test_the_default_data_dir_may_be_created_by_a_download(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LIT_NNOPT_DATA_DIR", raising=False)
    downloads = []
    monkeypatch.setattr(MNISTDataModule, "_download", lambda self, searched: downloads.append(self.data_dir))
    MNISTDataModule(download=True).prepare_data()
    assert downloads == [Path("data")]


def _trainer_with(datamodule: object) -> pl.Trainer:
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.datamodule = datamodule
    return trainer


def test_fashion_mnist_classes_have_names_and_mnist_keeps_its_digits():
    fashion = class_names_of(_trainer_with(MNISTDataModule(dataset="fashion_mnist")))
    assert fashion[:3] == ["T-shirt/top", "Trouser", "Pullover"] and fashion[-1] == "Ankle boot" and len(fashion) == 10
    assert class_names_of(_trainer_with(MNISTDataModule(dataset="mnist"))) == [str(i) for i in range(10)]


def test_class_names_are_the_numbers_for_other_data_or_another_number_of_classes():
    fashion = _trainer_with(MNISTDataModule(dataset="fashion_mnist"))
    assert class_names_of(fashion, num_classes=3) == ["0", "1", "2"]
    assert class_names_of(_trainer_with(None)) == [str(i) for i in range(10)]
