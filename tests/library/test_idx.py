"""IDX parsing and verification on small synthetic files."""

import gzip
import hashlib

import pytest
import torch

from lit_nnopt import idx
from lit_nnopt.idx import DataError, IDXFile, VerificationCache, load_verified, parse_idx


def idx_bytes(values: torch.Tensor) -> bytes:
    header = bytes([0, 0, 0x08, values.dim()]) + b"".join(s.to_bytes(4, "big") for s in values.shape)
    return header + values.to(torch.uint8).numpy().tobytes()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.arange(3 * 4 * 5, dtype=torch.uint8).reshape(3, 4, 5)


def test_parse_round_trips_shape_and_values(images):
    parsed = parse_idx(idx_bytes(images))
    assert parsed.dtype == torch.uint8
    assert torch.equal(parsed, images)


def test_parse_labels_one_dimension():
    labels = torch.tensor([7, 2, 1, 0], dtype=torch.uint8)
    assert parse_idx(idx_bytes(labels)).tolist() == [7, 2, 1, 0]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:-1], "truncated"),
        (lambda b: b[:10], "truncated"),
        (lambda b: b"\x01" + b[1:], "not an IDX file"),
        (lambda b: b[:2] + b"\x0d" + b[3:], "type 0x0d"),
    ],
)
def test_parse_refuses_malformed(images, mutate, message):
    with pytest.raises(DataError, match=message):
        parse_idx(mutate(idx_bytes(images)), "images")


def _write(tmp_path, name, content, compress):
    path = tmp_path / (name + (".gz" if compress else ""))
    path.write_bytes(gzip.compress(content) if compress else content)
    return path


@pytest.mark.parametrize("compress", [False, True])
def test_load_verified_accepts_canonical_raw_and_gz(tmp_path, images, compress):
    content = idx_bytes(images)
    expected = IDXFile("imgs", hashlib.md5(content).hexdigest(), (3, 4, 5))
    path = _write(tmp_path, "imgs", content, compress)
    cache = VerificationCache(tmp_path / "cache.json")
    assert torch.equal(load_verified(path, expected, cache), images)
    assert cache.is_verified(path, expected.md5)


@pytest.mark.parametrize("compress", [False, True])
def test_load_verified_refuses_byte_flip_naming_the_file(tmp_path, images, compress):
    content = bytearray(idx_bytes(images))
    expected = IDXFile("imgs", hashlib.md5(content).hexdigest(), (3, 4, 5))
    content[20] ^= 0xFF  # same size, header intact: only the checksum can tell
    path = _write(tmp_path, "imgs", bytes(content), compress)
    with pytest.raises(DataError, match=f"{path.name}.*MD5"):
        load_verified(path, expected, VerificationCache(tmp_path / "cache.json"))


def test_load_verified_refuses_truncated_gzip(tmp_path, images):
    content = idx_bytes(images)
    expected = IDXFile("imgs", hashlib.md5(content).hexdigest(), (3, 4, 5))
    path = tmp_path / "imgs.gz"
    path.write_bytes(gzip.compress(content)[:-12])
    with pytest.raises(DataError, match="imgs.gz"):
        load_verified(path, expected, VerificationCache(tmp_path / "cache.json"))


def test_cache_is_invalidated_when_the_file_changes(tmp_path, images):
    content = idx_bytes(images)
    expected = IDXFile("imgs", hashlib.md5(content).hexdigest(), (3, 4, 5))
    path = _write(tmp_path, "imgs", content, compress=False)
    cache = VerificationCache(tmp_path / "cache.json")
    load_verified(path, expected, cache)
    altered = bytearray(content)
    altered[-1] ^= 0x01
    path.write_bytes(bytes(altered))
    assert not cache.is_verified(path, expected.md5)
    with pytest.raises(DataError, match="MD5"):
        load_verified(path, expected, cache)


@pytest.fixture
def two_datasets(monkeypatch, images):
    """DATASETS with a small synthetic file in each of two datasets: (MNIST's IDXFile, Fashion-MNIST's content)."""
    digits, garments = idx_bytes(images), idx_bytes(images + 1)
    mnist = IDXFile("t10k-images-idx3-ubyte", hashlib.md5(digits).hexdigest(), (3, 4, 5))
    fashion = IDXFile("t10k-images-idx3-ubyte", hashlib.md5(garments).hexdigest(), (3, 4, 5))
    labels = IDXFile("t10k-labels-idx1-ubyte", hashlib.md5(b"labels").hexdigest(), (4,))
    monkeypatch.setattr(
        idx, "DATASETS", {"mnist": ("MNIST", (mnist, labels)), "fashion_mnist": ("FashionMNIST", (fashion,))}
    )
    return mnist, garments


def test_a_file_of_the_other_dataset_is_named_with_the_option_that_selects_it(tmp_path, two_datasets):
    mnist, garments = two_datasets
    path = _write(tmp_path, "t10k-images-idx3-ubyte", garments, compress=True)
    with pytest.raises(DataError) as error:
        load_verified(path, mnist, VerificationCache(tmp_path / "cache.json"))
    message = str(error.value)
    assert message.startswith(f"{path} is Fashion-MNIST's t10k-images-idx3-ubyte (its MD5 is that file's), but")
    assert "the run reads MNIST. To train on Fashion-MNIST, select it with `--data.dataset fashion_mnist`" in message
    assert "truncated" not in message and "delete it" not in message


def test_a_renamed_file_of_the_same_dataset_is_named(tmp_path, two_datasets):
    mnist, _ = two_datasets
    path = _write(tmp_path, "t10k-labels-idx1-ubyte", b"labels", compress=False)
    with pytest.raises(DataError, match=r"holds MNIST's t10k-labels-idx1-ubyte, not its t10k-images-idx3-ubyte"):
        load_verified(path, mnist, VerificationCache(tmp_path / "cache.json"))


def test_the_known_md5s_are_those_of_the_real_files():
    assert idx.known_file("15d484375f8d13e6eb1aabb0c3f46965")[0] == "fashion_mnist"  # Fashion-MNIST's test labels
    assert idx.known_file("27ae3e4e09519cfbb04c329615203637")[0] == "mnist"
    assert idx.known_file("0" * 32) is None
