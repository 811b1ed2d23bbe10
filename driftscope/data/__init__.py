"""Datasets as in-memory tensors, and the registry that names them.

``DATASETS`` is a registry of torch-free :class:`DatasetSpec` records (name, description, input
shape, classes); each spec's loader imports torch and its reader only when called, so the CLI and
config validation can list and check names without importing torch.

``load_dataset(name, data_dir)`` returns a :class:`Dataset` whose images are float32 tensors in
[0, 1] shaped (N, C, H, W) and labels int64 (N,). Normalisation and augmentation happen per batch
(:mod:`driftscope.data.transforms`), so the whole set stays on one device with no DataLoader.

Your own data need no registration: :class:`TensorData` holds train/test tensors of any shape
(N, ...) (images, tabular rows (N, F), integer token ids (N, L)) and is passed as
``train(cfg, out, dataset=TensorData(...))``; it is normalised or augmented only where it asks
(``mean``/``std``, ``augment``). :func:`as_dataset` checks it and turns it into a :class:`Dataset`.

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
from typing import TYPE_CHECKING, Any

from driftscope.errors import DataError
from driftscope.registry import Registry

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Dataset:
    """A classification dataset held in memory.

    ``train_x``/``test_x``: (N, ...) inputs, float32 (N, C, H, W) in [0, 1] for the registered
    image sets; ``train_y``/``test_y``: int64 (N,). ``mean``/``std``: per-channel (dimension 1)
    normalisation applied per batch, or None: inputs used as given. ``augment``: whether random
    crop (with ``crop_padding``) and horizontal flip apply to training batches by default
    (images (N, C, H, W) only).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: bool = False
    crop_padding: int = 4

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape: (C, H, W) for images, (F,) for tabular rows, (L,) for tokens."""
        return tuple(int(d) for d in self.train_x.shape[1:])


@dataclass(frozen=True)
class TensorData:
    """Your own dataset, used without registering it: ``train(cfg, out, dataset=TensorData(...))``.

    ``train_x``/``test_x``: tensors (N, ...) of any shape and dtype the model takes (float images
    (N, C, H, W), tabular rows (N, F), integer token ids (N, L)); ``train_y``/``test_y``: integer
    class labels (N,). ``num_classes``: None = the largest label + 1. ``name``: how the run file
    names the dataset (None: the class name). ``mean``/``std``: per-channel (dimension 1)
    normalisation applied per batch, None (the default): inputs used as given. ``augment``: random
    crop (``crop_padding``) + horizontal flip of training batches, for images (N, C, H, W) in
    [0, 1] only.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int | None = None
    name: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: bool = False
    crop_padding: int = 4


def as_dataset(data: Any) -> Dataset:
    """A :class:`Dataset` from a :class:`Dataset`, a :class:`TensorData` or any object with
    ``train_x``, ``train_y``, ``test_x`` and ``test_y`` (and optionally the other fields),
    checked: one-line :class:`~driftscope.errors.DataError` naming what is wrong."""
    import torch

    missing = [k for k in ("train_x", "train_y", "test_x", "test_y") if not hasattr(data, k)]
    if missing:
        raise DataError(
            f"the dataset ({type(data).__name__}) has no {', '.join(missing)}: pass a "
            "driftscope.data.TensorData(train_x, train_y, test_x, test_y)"
        )
    tensors = {}
    for key in ("train_x", "train_y", "test_x", "test_y"):
        value = getattr(data, key)
        if not isinstance(value, torch.Tensor):
            try:
                value = torch.as_tensor(value)
            except (TypeError, ValueError, RuntimeError):
                raise DataError(
                    f"dataset {key} is a {type(value).__name__}, not a tensor: give a torch "
                    "tensor or numpy array"
                ) from None
        tensors[key] = value
    for split in ("train", "test"):
        x, y = tensors[f"{split}_x"], tensors[f"{split}_y"]
        if y.ndim != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise DataError(
                f"dataset {split}_y must be integer class labels shaped (N,) (got {y.dtype}, "
                f"shape {tuple(y.shape)}): e.g. y.long()"
            )
        if x.ndim < 2 or len(x) != len(y) or len(y) == 0:
            raise DataError(
                f"dataset {split}_x {tuple(x.shape)} must be (N, ...) with one row per label of "
                f"{split}_y ({len(y)})"
            )
        tensors[f"{split}_y"] = y.long()
    if tensors["train_x"].shape[1:] != tensors["test_x"].shape[1:]:
        raise DataError(
            f"train_x samples are {tuple(tensors['train_x'].shape[1:])} but test_x samples are "
            f"{tuple(tensors['test_x'].shape[1:])}: give both the same shape"
        )
    labels = torch.cat([tensors["train_y"], tensors["test_y"]])
    num_classes = getattr(data, "num_classes", None)
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise DataError(
            f"labels must lie in 0 .. num_classes - 1 = {num_classes - 1} "
            f"(found {int(labels.min())} .. {int(labels.max())}): fix num_classes or the labels"
        )
    name = getattr(data, "name", None) or type(data).__name__
    mean, std = getattr(data, "mean", None), getattr(data, "std", None)
    if (mean is None) != (std is None):
        raise DataError("give the dataset both mean and std for normalisation, or neither")
    augment = bool(getattr(data, "augment", False))
    if isinstance(data, Dataset):
        ds = data
    else:
        ds = Dataset(
            str(name),
            tensors["train_x"],
            tensors["train_y"],
            tensors["test_x"],
            tensors["test_y"],
            int(num_classes),
            None if mean is None else tuple(float(m) for m in mean),
            None if std is None else tuple(float(s) for s in std),
            augment,
            int(getattr(data, "crop_padding", 4)),
        )
    check_transforms(ds, ds.augment)
    return ds


def normalisation(ds: Dataset, augment: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The dataset's (mean, std) shaped to broadcast over a batch (1, C, 1, ...), after
    :func:`check_transforms`; (None, None): inputs used as given. With ``augment``, which
    normalises each batch, a dataset without mean/std gets (0, 1)."""
    import torch

    from driftscope.data.transforms import channel_stats

    check_transforms(ds, augment)
    ndim = ds.train_x.ndim
    mean, std = channel_stats(ds.mean, ndim), channel_stats(ds.std, ndim)
    if augment and (mean is None or std is None):
        one = torch.ones(1, ds.train_x.shape[1], 1, 1)
        mean, std = torch.zeros_like(one), one
    return mean, std


def check_transforms(ds: Dataset, augment: bool) -> None:
    """Normalisation needs one mean/std per channel (dimension 1) and floating inputs;
    augmentation needs float images (N, C, H, W)."""
    shape = tuple(ds.train_x.shape[1:])
    floating = ds.train_x.dtype.is_floating_point
    if ds.mean is not None and ds.std is not None:
        if not floating:
            raise DataError(
                f"dataset {ds.name} has {ds.train_x.dtype} inputs: normalisation (mean/std) "
                "needs floating inputs; give mean=None, std=None"
            )
        if len(ds.mean) not in (1, shape[0]) or len(ds.std) != len(ds.mean):
            raise DataError(
                f"dataset {ds.name}: {len(ds.mean)} means / {len(ds.std)} stds for samples "
                f"{shape}: give one per channel (dimension 1, here {shape[0]}) or one in all"
            )
    if augment and (len(shape) != 3 or not floating):
        raise DataError(
            f"augmentation (random crop + flip) needs float images (N, C, H, W), but dataset "
            f"{ds.name} has {ds.train_x.dtype} samples shaped {shape}: set data.augment = false"
        )


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
