"""CIFAR-10/100, MNIST and Fashion-MNIST read from disk through torchvision's own dataset classes.

``load_raw(name, root, train)`` returns ``(images, labels)``: uint8 ``(N, C, H, W)`` and int64
``(N,)``, taken straight from the dataset object's ``.data`` / ``.targets`` (no per-sample PIL
round-trip). Nothing is ever downloaded (``download=False``); the files must already be in
torchvision's layout under ``root``:

=============  ===================================  ==========================================
name           folder                               files
=============  ===================================  ==========================================
cifar10        ``<root>/cifar-10-batches-py/``      ``data_batch_1``..``5``, ``test_batch``,
                                                    ``batches.meta``
cifar100       ``<root>/cifar-100-python/``         ``train``, ``test``, ``meta``
mnist          ``<root>/MNIST/raw/``                ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``
fashion_mnist  ``<root>/FashionMNIST/raw/``         same names as MNIST
=============  ===================================  ==========================================

(the MNIST files uncompressed, as ``torchvision.datasets.MNIST(root, download=True)`` leaves
them). Missing, unreadable or inconsistent files raise :class:`~driftscope.errors.DataError`
with a one-line message naming the folder and the fix.

What is checked before anything is read
---------------------------------------
* ``MNIST`` / ``FashionMNIST``: torchvision only checks that the four uncompressed raw files exist
  (their md5 sums are for the ``.gz`` archives) and then parses the IDX headers (no code can run),
  so the real classes are used unchanged.
* ``CIFAR10`` / ``CIFAR100``: CIFAR's "python version" is a set of pickles (its only distribution
  format), and unpickling can run arbitrary code. So before torchvision unpickles anything,
  :func:`verify_cifar` compares the MD5 sum of every file the split needs (its batches and the
  meta file) with the sums published with the dataset, which torchvision keeps in
  ``train_list``/``test_list``/``meta`` and this module copies into :data:`CIFAR_MD5`. A file
  that does not match (bit-flipped, truncated, or a stranger's ``data_cache``) is refused with a
  one-line :class:`~driftscope.errors.DataError` and never unpickled. Reading is then done by
  minimal subclasses of torchvision's classes (:class:`_CIFAR10Files`, :class:`_CIFAR100Files`)
  whose own md5 entries are ``None`` (the check already happened, once per file).
  Tests register the sums of their small fake files in :data:`CIFAR_MD5` (monkeypatched).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torchvision import datasets as tvd

from driftscope.errors import DataError

__all__ = ["CIFAR_MD5", "SUPPORTED", "expected_location", "load_raw", "num_classes", "verify_cifar"]

SUPPORTED = ("cifar10", "cifar100", "mnist", "fashion_mnist")


def _published_md5(cls: type[Any]) -> dict[str, str]:
    """File name -> the MD5 sum published with the dataset (as torchvision records it)."""
    sums = {str(f): str(md5) for f, md5 in cls.train_list + cls.test_list}
    sums[cls.meta["filename"]] = cls.meta["md5"]
    return sums


# dataset -> file name -> accepted MD5 sum; checked before any CIFAR pickle is opened
CIFAR_MD5: dict[str, dict[str, str]] = {
    "cifar10": _published_md5(tvd.CIFAR10),
    "cifar100": _published_md5(tvd.CIFAR100),
}


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _CIFAR10Files(tvd.CIFAR10):
    """torchvision's CIFAR10 reading files that :func:`verify_cifar` already checked."""

    train_list: ClassVar[list] = [[f, None] for f, _md5 in tvd.CIFAR10.train_list]
    test_list: ClassVar[list] = [[f, None] for f, _md5 in tvd.CIFAR10.test_list]
    meta: ClassVar[dict] = {**tvd.CIFAR10.meta, "md5": None}


class _CIFAR100Files(tvd.CIFAR100):
    """torchvision's CIFAR100 reading files that :func:`verify_cifar` already checked."""

    train_list: ClassVar[list] = [[f, None] for f, _md5 in tvd.CIFAR100.train_list]
    test_list: ClassVar[list] = [[f, None] for f, _md5 in tvd.CIFAR100.test_list]
    meta: ClassVar[dict] = {**tvd.CIFAR100.meta, "md5": None}


@dataclass(frozen=True)
class _Spec:
    title: str  # as people write it, for messages
    cls: type[Any]  # the torchvision class that reads it
    public_cls: str  # the torchvision class to download it with
    folder: tuple[str, ...]  # where the files sit, relative to root
    files: tuple[str, ...]  # the files torchvision needs there
    num_classes: int
    shape: tuple[int, int, int]  # (C, H, W)


def _cifar_files(cls: type[Any]) -> tuple[str, ...]:
    return (*(f for f, _ in cls.train_list + cls.test_list), cls.meta["filename"])


def _mnist_files(cls: type[Any]) -> tuple[str, ...]:
    return tuple(os.path.splitext(archive)[0] for archive, _ in cls.resources)


_SPECS: dict[str, _Spec] = {
    "cifar10": _Spec(
        "CIFAR-10",
        _CIFAR10Files,
        "CIFAR10",
        (tvd.CIFAR10.base_folder,),
        _cifar_files(tvd.CIFAR10),
        10,
        (3, 32, 32),
    ),
    "cifar100": _Spec(
        "CIFAR-100",
        _CIFAR100Files,
        "CIFAR100",
        (tvd.CIFAR100.base_folder,),
        _cifar_files(tvd.CIFAR100),
        100,
        (3, 32, 32),
    ),
    "mnist": _Spec(
        "MNIST",
        tvd.MNIST,
        "MNIST",
        ("MNIST", "raw"),
        _mnist_files(tvd.MNIST),
        10,
        (1, 28, 28),
    ),
    "fashion_mnist": _Spec(
        "Fashion-MNIST",
        tvd.FashionMNIST,
        "FashionMNIST",
        ("FashionMNIST", "raw"),
        _mnist_files(tvd.FashionMNIST),
        10,
        (1, 28, 28),
    ),
}
assert tuple(_SPECS) == SUPPORTED


def _spec(name: str) -> _Spec:
    try:
        return _SPECS[name]
    except (KeyError, TypeError):
        raise DataError(
            f"unknown torchvision dataset {name!r}: choose one of {', '.join(SUPPORTED)}"
        ) from None


def num_classes(name: str) -> int:
    """Number of classes of a supported dataset (CIFAR-100: the 100 fine labels)."""
    return _spec(name).num_classes


def expected_location(name: str, root: str | os.PathLike) -> Path:
    """The folder under ``root`` where torchvision looks for ``name``'s files."""
    return Path(root).joinpath(*_spec(name).folder)


def _one_line(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _download_hint(spec: _Spec) -> str:
    return (
        f"download it on a machine with internet (torchvision.datasets.{spec.public_cls}(root, "
        f"download=True)) and copy the folder there, or point --data-dir / DRIFTSCOPE_DATA at it"
    )


def _not_found(spec: _Spec, where: Path) -> DataError:
    missing = [f for f in spec.files if not (where / f).is_file()]
    detail = f" (missing {', '.join(missing)})" if missing else ""
    return DataError(f"{spec.title} not found in {where}{detail}: {_download_hint(spec)}")


def _corrupt(spec: _Spec, where: Path, problem: str) -> DataError:
    return DataError(
        f"{spec.title} files in {where} are corrupt or truncated ({problem}): "
        f"replace them with a fresh copy; {_download_hint(spec)}"
    )


def verify_cifar(name: str, root: str | os.PathLike, train: bool) -> None:
    """Refuse CIFAR files whose MD5 sum is not the published one, before they are unpickled.

    Checks the files the split reads (its batches and the meta file) against :data:`CIFAR_MD5`.
    Missing files raise the usual not-found :class:`DataError`.
    """
    spec = _spec(name)
    where = expected_location(name, root)
    cls = spec.cls
    needed = [f for f, _ in (cls.train_list if train else cls.test_list)] + [cls.meta["filename"]]
    if any(not (where / f).is_file() for f in spec.files):
        raise _not_found(spec, where)
    for filename in needed:
        path = where / filename
        expected = CIFAR_MD5[name].get(filename)
        try:
            actual = _md5(path)
        except OSError as err:
            raise _corrupt(spec, where, _one_line(err)) from None
        if actual != expected:
            raise DataError(
                f"{spec.title} file {path} does not match its published MD5 sum (corrupt, "
                f"truncated or not the official file); CIFAR files are pickles, which can run "
                f"code when read, so they are refused: {_download_hint(spec)}"
            )


def load_raw(name: str, root: str | os.PathLike, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images, labels)`` of one split: uint8 ``(N, C, H, W)`` and int64 ``(N,)``.

    Read by torchvision's dataset class for ``name`` (``download=False``) from ``root`` in
    torchvision's layout (see the module docstring); CIFAR files are first checked against their
    published MD5 sums (:func:`verify_cifar`). Raises :class:`DataError` for an unknown name,
    missing files, or files that cannot be parsed or do not hold a consistent dataset.
    """
    spec = _spec(name)
    where = expected_location(name, root)
    if name.startswith("cifar"):
        verify_cifar(name, root, train)
    try:
        ds = spec.cls(root=Path(root), train=train, download=False)
    except MemoryError:
        raise
    except RuntimeError as err:
        if "not found" in str(err).lower():  # torchvision: "Dataset not found or corrupted..."
            raise _not_found(spec, where) from err
        raise _corrupt(spec, where, _one_line(err)) from err
    except Exception as err:  # unpickling / IDX parsing of a damaged file: any error type
        raise _corrupt(spec, where, _one_line(err)) from err

    if isinstance(ds.data, torch.Tensor):  # MNIST-like: uint8 (N, H, W) tensor
        images = ds.data.unsqueeze(1)
    else:  # CIFAR: uint8 (N, H, W, C) numpy array (a transposed view of the CHW rows)
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2)
    images = images.contiguous()
    labels = torch.as_tensor(ds.targets, dtype=torch.int64).reshape(-1)

    split = "train" if train else "test"
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != spec.shape:
        got = f"{images.dtype} {tuple(images.shape[1:])}"
        raise _corrupt(spec, where, f"{split} images are {got}, expected uint8 {spec.shape}")
    if len(labels) != len(images):
        raise _corrupt(spec, where, f"{split} has {len(images)} images but {len(labels)} labels")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= spec.num_classes):
        bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
        raise _corrupt(spec, where, f"{split} label {bad} outside 0..{spec.num_classes - 1}")
    return images, labels
