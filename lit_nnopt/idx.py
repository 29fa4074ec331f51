"""Reading and verifying the IDX files that MNIST and Fashion-MNIST ship in.

The IDX format (LeCun et al.): two zero bytes, a type code, the number of dimensions,
one big-endian int32 per dimension, then the values. Both datasets use unsigned bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

_UNSIGNED_BYTE = 0x08


class DataError(ValueError):
    """A dataset file is missing, unreadable, truncated or altered."""


@dataclass(frozen=True)
class IDXFile:
    """One file of a dataset: its name and the MD5 of its uncompressed bytes."""

    name: str
    md5: str
    shape: tuple[int, ...]


DATASETS: dict[str, tuple[str, tuple[IDXFile, ...]]] = {
    # name: (torchvision class folder, files); the MD5s are of the uncompressed files.
    "mnist": (
        "MNIST",
        (
            IDXFile("train-images-idx3-ubyte", "6bbc9ace898e44ae57da46a324031adb", (60000, 28, 28)),
            IDXFile("train-labels-idx1-ubyte", "a25bea736e30d166cdddb491f175f624", (60000,)),
            IDXFile("t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea", (10000, 28, 28)),
            IDXFile("t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637", (10000,)),
        ),
    ),
    # Fashion-MNIST MD5s: the uncompressed files of Debian's dataset-fashion-mnist, packaged
    # from Zalando's repository (zalandoresearch/fashion-mnist, commit 55506a9).
    "fashion_mnist": (
        "FashionMNIST",
        (
            IDXFile("train-images-idx3-ubyte", "f4a8712d7a061bf5bd6d2ca38dc4d50a", (60000, 28, 28)),
            IDXFile("train-labels-idx1-ubyte", "9018921c3c673c538a1fc5bad174d6f9", (60000,)),
            IDXFile("t10k-images-idx3-ubyte", "8181f5470baa50b63fa0f6fddb340f0a", (10000, 28, 28)),
            IDXFile("t10k-labels-idx1-ubyte", "15d484375f8d13e6eb1aabb0c3f46965", (10000,)),
        ),
    ),
}


# How a user names each dataset, and the `--data.dataset` value that selects it.
DATASET_TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}


def known_file(md5: str) -> tuple[str, IDXFile] | None:
    """(dataset, file) of the canonical file with this MD5, or None."""
    for dataset, (_, files) in DATASETS.items():
        for file in files:
            if file.md5 == md5:
                return dataset, file
    return None


def _dataset_of(expected: IDXFile) -> str | None:
    return next((dataset for dataset, (_, files) in DATASETS.items() if expected in files), None)


def read_bytes(path: Path) -> bytes:
    """The uncompressed content of a raw or gzip'd file."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(
            f"Could not read {path}: {err}. The file is damaged or incomplete; delete it and "
            "download it again (run with `--data.download true` where a network is available)."
        ) from err


def parse_idx(content: bytes, source: Path | str = "<bytes>") -> torch.Tensor:
    """Decode an IDX file of unsigned bytes into a uint8 tensor of its declared shape."""
    if len(content) < 4 or content[0] != 0 or content[1] != 0:
        raise DataError(f"{source} is not an IDX file: it does not start with two zero bytes.")
    if content[2] != _UNSIGNED_BYTE:
        raise DataError(f"{source} holds IDX type 0x{content[2]:02x}; only unsigned bytes (0x08) are supported.")
    ndim = content[3]
    header_size = 4 + 4 * ndim
    if len(content) < header_size:
        raise DataError(f"{source} is truncated: its header declares {ndim} dimensions but the file ends early.")
    shape = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_size + _product(shape)
    if len(content) != expected:
        raise DataError(
            f"{source} is truncated or padded: its header declares shape {shape}, i.e. {expected} bytes, "
            f"but it holds {len(content)}. Delete it and download it again."
        )
    values = torch.frombuffer(bytearray(content[header_size:]), dtype=torch.uint8)
    return values.reshape(shape)


def _product(shape: tuple[int, ...]) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


class VerificationCache:
    """Remembers which files already matched their MD5, keyed by path, size and mtime.

    Hashing the 47 MB training images costs about 0.1 s; a verified, unchanged file is not
    hashed again. The cache lives outside the data folder, which may be read-only.
    """

    def __init__(self, path: Path | None = None) -> None:
        cache_root = os.environ.get("LIT_NNOPT_CACHE_DIR") or Path.home() / ".cache" / "lit_nnopt"
        self.path = path or Path(cache_root) / "verified_files.json"

    def _key(self, file: Path) -> str:
        stat = file.stat()
        return f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"

    def _load(self) -> dict[str, str]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def is_verified(self, file: Path, md5: str) -> bool:
        return self._load().get(self._key(file)) == md5

    def remember(self, file: Path, md5: str) -> None:
        entries = self._load()
        entries[self._key(file)] = md5
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(entries))
            tmp.replace(self.path)
        except OSError:
            pass  # a cache that cannot be written only costs a re-hash next time


def load_verified(path: Path, expected: IDXFile, cache: VerificationCache) -> torch.Tensor:
    """Read, check and decode one dataset file; refuse it by name if its content is not canonical."""
    content = read_bytes(path)
    if not cache.is_verified(path, expected.md5):
        actual = hashlib.md5(content).hexdigest()
        if actual != expected.md5:
            _refuse_another_dataset(path, expected, actual)
            raise DataError(
                f"{path} does not hold the canonical {expected.name}: the MD5 of its uncompressed "
                f"content is {actual}, expected {expected.md5} ({len(content)} bytes read). The file "
                "is truncated or altered; delete it and download it again."
            )
        cache.remember(path, expected.md5)
    tensor = parse_idx(content, path)
    if tuple(tensor.shape) != expected.shape:
        raise DataError(f"{path} has shape {tuple(tensor.shape)}, expected {expected.shape}.")
    return tensor


def _refuse_another_dataset(path: Path, expected: IDXFile, md5: str) -> None:
    """Raise a DataError that names the dataset when ``path`` is a canonical file of another one (or the wrong file)."""
    found = known_file(md5)
    if found is None:
        return
    dataset, file = found
    wanted = _dataset_of(expected)
    title = DATASET_TITLES.get(dataset, dataset)
    if dataset != wanted:
        raise DataError(
            f"{path} is {title}'s {file.name} (its MD5 is that file's), but the run reads "
            f"{DATASET_TITLES.get(wanted or '', wanted)}. To train on {title}, select it with "
            f"`--data.dataset {dataset}` (or `data: dataset: {dataset}` in the config); otherwise point "
            "`--data.data_dir` at a folder that holds the other dataset's files."
        )
    raise DataError(
        f"{path} holds {title}'s {file.name}, not its {expected.name}: the file was renamed. Give each "
        "file its own name (train-images, train-labels, t10k-images, t10k-labels)."
    )
