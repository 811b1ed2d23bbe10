"""Tiny datasets written in the exact on-disk formats torchvision reads.

Tests cannot download anything, so these helpers write a few images per split in each dataset's
real distribution format, laid out the way ``torchvision.datasets`` expects under ``root``:

=================  ==============================================================================
helper             files written
=================  ==============================================================================
write_cifar10      ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``
write_cifar100     ``cifar-100-python/{train, test, meta}``
write_mnist        ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (uncompressed)
write_fashion_mnist  same names under ``FashionMNIST/raw/``
=================  ==============================================================================

Every helper returns a :class:`FakeSplits` with the images in the layout
``driftscope.data.torchvision_sets.load_raw`` returns (uint8 ``(N, C, H, W)``) and the labels as
int64, so tests can assert exact round-trips.

CIFAR files are pickles as written by Python 2's cPickle (protocol 2), which is how the official
archives were made: dict keys and the array bytes are Python 2 ``str`` (opcodes ``U``/``T``), so
``pickle.load(f, encoding="latin1")`` gives ``str`` keys (what torchvision uses) and
``encoding="bytes"`` gives ``b"data"``-style keys (what the CIFAR web page shows). The ``data``
entry is a numpy uint8 array ``(N, 3072)``, each row the 1024 red, then green, then blue pixels,
each channel row-major (i.e. a flattened ``(3, 32, 32)`` CHW image).

The fake CIFAR files do not have the published MD5 sums that driftscope checks before unpickling;
``trust_cifar(monkeypatch, name, root)`` registers their sums for one test.

MNIST and Fashion-MNIST files are IDX files: a big-endian magic number (2051 for images, 2049 for
labels: two zero bytes, type 0x08 = uint8, number of dimensions), one big-endian uint32 per
dimension, then the raw uint8 values.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "CIFAR10_LABEL_NAMES",
    "FakeSplits",
    "trust_cifar",
    "write_cifar10",
    "write_cifar100",
    "write_fashion_mnist",
    "write_idx",
    "write_mnist",
    "write_py2_pickle",
]

CIFAR10_LABEL_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


class FakeSplits(NamedTuple):
    """What a ``write_*`` helper wrote: images uint8 ``(N, C, H, W)``, labels int64 ``(N,)``."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


# --------------------------------------------------------------------------------------------
# Python 2 style pickles (the CIFAR "python version" format)
# --------------------------------------------------------------------------------------------


def _py2_str(value: str | bytes) -> bytes:
    """A Python 2 ``str``: SHORT_BINSTRING (``U``) or BINSTRING (``T``)."""
    raw = value.encode("latin1") if isinstance(value, str) else bytes(value)
    if len(raw) < 256:
        return b"U" + bytes([len(raw)]) + raw
    return b"T" + struct.pack("<i", len(raw)) + raw


def _py2_int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)
    return b"J" + struct.pack("<i", value)


def _py2_uint8_array(array: np.ndarray) -> bytes:
    """A numpy uint8 array the way numpy 1.x under Python 2 pickled it (``ndarray.__reduce__``)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    shape = b"(" + b"".join(_py2_int(int(d)) for d in array.shape) + b"t"
    dtype = (
        b"cnumpy\ndtype\n"
        + b"(" + _py2_str("u1") + _py2_int(0) + _py2_int(1) + b"tR"
        + b"(" + _py2_int(3) + _py2_str("|") + b"NNN" + b"J\xff\xff\xff\xff" * 2 + _py2_int(0)
        + b"tb"
    )  # fmt: skip
    return (
        b"cnumpy.core.multiarray\n_reconstruct\n"
        + b"(cnumpy\nndarray\n" + b"(" + _py2_int(0) + b"t" + _py2_str("b") + b"tR"
        + b"(" + _py2_int(1) + shape + dtype + b"\x89" + _py2_str(array.tobytes()) + b"tb"
    )  # fmt: skip


def _py2_object(obj: object) -> bytes:
    if isinstance(obj, dict):
        items = b"".join(_py2_str(k) + _py2_object(v) for k, v in obj.items())
        return b"}" + (b"(" + items + b"u" if obj else b"")
    if isinstance(obj, list | tuple):
        items = b"".join(_py2_object(v) for v in obj)
        return b"]" + (b"(" + items + b"e" if obj else b"")
    if isinstance(obj, bool):
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int | np.integer):
        return _py2_int(int(obj))
    if isinstance(obj, str | bytes):
        return _py2_str(obj)
    if isinstance(obj, np.ndarray):
        return _py2_uint8_array(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as a Python 2 pickle")


def write_py2_pickle(path: str | os.PathLike, obj: dict) -> Path:
    """Write ``obj`` (a dict of str keys -> int / str / list / uint8 ndarray) as Python 2 cPickle
    protocol 2 output, creating parent folders. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x80\x02" + _py2_object(obj) + b".")
    return path


def _random_images(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _cifar_batch(label: str, labels: dict[str, np.ndarray], images: np.ndarray) -> dict:
    """One CIFAR batch dict, keys in the order of the official files."""
    n = len(images)
    batch: dict = {"batch_label": label}
    batch.update({key: [int(v) for v in values] for key, values in labels.items()})
    batch["data"] = images.reshape(n, 3 * 32 * 32)  # rows: R plane, G plane, B plane
    batch["filenames"] = [f"fake_{label.split()[0]}_{i:05d}.png" for i in range(n)]
    return batch


def write_cifar10(
    root: str | os.PathLike, n_train: int = 50, n_test: int = 20, seed: int = 0
) -> FakeSplits:
    """Write a fake CIFAR-10 under ``root/cifar-10-batches-py``.

    The ``n_train`` training images are spread over ``data_batch_1`` .. ``data_batch_5`` in
    order (as evenly as possible), ``n_test`` go to ``test_batch``; ``batches.meta`` holds the
    real label names. Labels are uniform in 0..9.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    train_x = _random_images(rng, n_train, (3, 32, 32))
    train_y = rng.integers(0, 10, size=n_train, dtype=np.int64)
    test_x = _random_images(rng, n_test, (3, 32, 32))
    test_y = rng.integers(0, 10, size=n_test, dtype=np.int64)

    chunks = np.array_split(np.arange(n_train), 5)
    for i, idx in enumerate(chunks, start=1):
        batch = _cifar_batch(f"training batch {i} of 5", {"labels": train_y[idx]}, train_x[idx])
        write_py2_pickle(folder / f"data_batch_{i}", batch)
    write_py2_pickle(
        folder / "test_batch", _cifar_batch("testing batch 1 of 1", {"labels": test_y}, test_x)
    )
    meta = {
        "num_cases_per_batch": len(chunks[0]),
        "label_names": list(CIFAR10_LABEL_NAMES),
        "num_vis": 3072,
    }
    write_py2_pickle(folder / "batches.meta", meta)
    return FakeSplits(train_x, train_y, test_x, test_y)


def write_cifar100(
    root: str | os.PathLike, n_train: int = 50, n_test: int = 20, seed: int = 0
) -> FakeSplits:
    """Write a fake CIFAR-100 under ``root/cifar-100-python`` (``train``, ``test``, ``meta``).

    Fine labels are uniform in 0..99 (returned); coarse labels are ``fine // 5`` (written only).
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    train_x = _random_images(rng, n_train, (3, 32, 32))
    train_y = rng.integers(0, 100, size=n_train, dtype=np.int64)
    test_x = _random_images(rng, n_test, (3, 32, 32))
    test_y = rng.integers(0, 100, size=n_test, dtype=np.int64)

    for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        labels = {"fine_labels": y, "coarse_labels": y // 5}
        write_py2_pickle(folder / name, _cifar_batch(name, labels, x))
    meta = {
        "fine_label_names": [f"fine_{i:02d}" for i in range(100)],
        "coarse_label_names": [f"coarse_{i:02d}" for i in range(20)],
    }
    write_py2_pickle(folder / "meta", meta)
    return FakeSplits(train_x, train_y, test_x, test_y)


# --------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------------------------


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file (magic ``0x0000 08 <ndim>``, big-endian uint32 dims,
    then the values), creating parent folders. Returns the path."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())
    return path


def _write_mnist_like(folder: Path, n_train: int, n_test: int, seed: int) -> FakeSplits:
    rng = np.random.default_rng(seed)
    train_x = _random_images(rng, n_train, (1, 28, 28))
    train_y = rng.integers(0, 10, size=n_train, dtype=np.int64)
    test_x = _random_images(rng, n_test, (1, 28, 28))
    test_y = rng.integers(0, 10, size=n_test, dtype=np.int64)
    for prefix, x, y in (("train", train_x, train_y), ("t10k", test_x, test_y)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", x[:, 0])  # (N, 28, 28): magic 2051
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", y)  # (N,): magic 2049
    return FakeSplits(train_x, train_y, test_x, test_y)


def write_mnist(
    root: str | os.PathLike, n_train: int = 60, n_test: int = 20, seed: int = 0
) -> FakeSplits:
    """Write a fake MNIST as uncompressed IDX files under ``root/MNIST/raw``."""
    return _write_mnist_like(Path(root) / "MNIST" / "raw", n_train, n_test, seed)


def write_fashion_mnist(
    root: str | os.PathLike, n_train: int = 60, n_test: int = 20, seed: int = 0
) -> FakeSplits:
    """Write a fake Fashion-MNIST as uncompressed IDX files under ``root/FashionMNIST/raw``."""
    return _write_mnist_like(Path(root) / "FashionMNIST" / "raw", n_train, n_test, seed)


def trust_cifar(monkeypatch, name: str, root: str | os.PathLike) -> None:
    """Accept the fake CIFAR files under ``root`` for this test: register their MD5 sums in
    ``driftscope.data.torchvision_sets.CIFAR_MD5`` (undone by ``monkeypatch`` afterwards)."""
    import hashlib

    from driftscope.data import torchvision_sets

    folder = torchvision_sets.expected_location(name, root)
    for path in folder.iterdir():
        digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
        monkeypatch.setitem(torchvision_sets.CIFAR_MD5[name], path.name, digest)
