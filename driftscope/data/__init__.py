"""Datasets as in-memory tensors, and the registry that names them.

``DATASETS`` is a registry of torch-free :class:`DatasetSpec` records (name, description, input
shape, classes); each spec's loader imports torch and its reader only when called, so the CLI and
config validation can list and check names without importing torch.

``load_dataset(name, data_dir)`` returns a :class:`Dataset` whose images are float32 tensors in
[0, 1] shaped (N, C, H, W) and labels int64 (N,). Normalisation and augmentation happen per batch
(:mod:`driftscope.data.transforms`), so the whole set stays on one device with no DataLoader.

Registry (``DATASETS``):

========== ============================================== ============================
name       source                                         default augmentation
========== ============================================== ============================
digits     scikit-learn's handwritten digits (embedded)   none
mnist1d    MNIST-1D, generated offline by ``mnist1d``     none
mnist      torchvision MNIST in ``data_cache/``           none
fashion_mnist  torchvision FashionMNIST                   none
cifar10    torchvision CIFAR-10 (45k train / 5k val)      crop 32 pad 4 + flip
cifar100   torchvision CIFAR-100 (45k train / 5k val)     crop 32 pad 4 + flip
========== ============================================== ============================
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from driftscope.registry import Registry

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Dataset:
    """A classification dataset held in memory.

    ``train_x``/``test_x``: float32 (N, C, H, W) in [0, 1]; ``train_y``/``test_y``: int64 (N,).
    ``mean``/``std``: per-channel normalisation applied per batch. ``augment``: whether random
    crop (with ``crop_padding``) and horizontal flip apply to training batches by default.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = False
    crop_padding: int = 4

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset, torch-free: ``load(data_dir)`` imports what it needs when called.

    ``input_shape`` (C, H, W) and ``num_classes`` describe what ``load`` returns, so a model can be
    sized (or its parameters counted) without loading the data. ``default_model``: the model that
    ``driftscope run`` and ``reproduce`` use with this dataset when none is named (None: the
    config's default, ``small_cnn``).
    """

    name: str
    description: str
    input_shape: tuple[int, int, int]
    num_classes: int
    loader: Callable[[Path], Dataset]
    default_model: str | None = None

    def load(self, data_dir: str | os.PathLike | None = None) -> Dataset:
        root = Path(data_dir) if data_dir is not None else default_data_dir()
        return self.loader(root)


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset to :data:`DATASETS` (its name must be new)."""
    return DATASETS.register(spec.name, spec)


def default_data_dir() -> Path:
    """``$DRIFTSCOPE_DATA`` if set, else ``./data_cache``."""
    return Path(os.environ.get("DRIFTSCOPE_DATA", "data_cache"))


# CIFAR-10 statistics used by the FedPVR reference code for both CIFAR datasets.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
CIFAR_TRAIN = 45_000  # the paper's split: first 45,000 training images train, last 5,000 validate


def _digits(data_dir: Path) -> Dataset:
    from driftscope.data.digits import load_digits

    return load_digits()


def _mnist1d(data_dir: Path) -> Dataset:
    from driftscope.data.mnist1d import load_mnist1d

    return load_mnist1d(data_dir)


def _torchvision(name: str) -> Callable[[Path], Dataset]:
    def load(data_dir: Path) -> Dataset:
        from driftscope.data.torchvision_sets import load_raw, num_classes

        train_x, train_y = load_raw(name, data_dir, train=True)
        test_x, test_y = load_raw(name, data_dir, train=False)
        train_x = train_x.float().div_(255.0)
        test_x = test_x.float().div_(255.0)
        if name.startswith("cifar"):
            train_x, train_y = train_x[:CIFAR_TRAIN], train_y[:CIFAR_TRAIN]
            mean: tuple[float, ...]
            std: tuple[float, ...]
            mean, std, augment = CIFAR_MEAN, CIFAR_STD, True
        else:
            mean, std, augment = (float(train_x.mean()),), (float(train_x.std()),), False
        return Dataset(
            name, train_x, train_y, test_x, test_y, num_classes(name), mean, std, augment
        )

    return load


for _spec in (
    DatasetSpec(
        "digits", "scikit-learn's handwritten digits, 8x8 (embedded)", (1, 8, 8), 10, _digits
    ),
    DatasetSpec(
        "mnist1d",
        "MNIST-1D, 1-D signals of length 40 (generated offline by mnist1d; embedded)",
        (1, 1, 40),
        10,
        _mnist1d,
        default_model="cnn1d",
    ),
    DatasetSpec(
        "mnist", "MNIST, 28x28 (torchvision files)", (1, 28, 28), 10, _torchvision("mnist")
    ),
    DatasetSpec(
        "fashion_mnist",
        "Fashion-MNIST, 28x28 (torchvision files)",
        (1, 28, 28),
        10,
        _torchvision("fashion_mnist"),
    ),
    DatasetSpec(
        "cifar10",
        "CIFAR-10, 32x32, 45k train (torchvision files)",
        (3, 32, 32),
        10,
        _torchvision("cifar10"),
    ),
    DatasetSpec(
        "cifar100",
        "CIFAR-100, 32x32, 45k train (torchvision files)",
        (3, 32, 32),
        100,
        _torchvision("cifar100"),
    ),
):
    register_dataset(_spec)


def check_dataset_name(name: str) -> None:
    DATASETS.get(name)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a registered dataset into memory (see the module docstring for names)."""
    return DATASETS.get(name).load(data_dir)
