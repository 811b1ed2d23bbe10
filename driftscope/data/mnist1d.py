"""MNIST-1D (Greydanus 2020, arXiv 2011.14439): 10 classes of 40-sample 1-D signals, made offline.

The ``mnist1d`` package (Apache-2.0) generates the dataset procedurally from ten hand-drawn 1-D
digit templates (padding, scaling, translation, correlated and i.i.d. noise, shear), with numpy's
legacy global RNG seeded by ``args.seed``: no download. We call its ``make_dataset`` with the
package's default arguments (5,000 samples, seed 42, the paper's split of 4,000 train / 1,000 test),
so the arrays are the canonical MNIST-1D. ``make_dataset`` seeds numpy's and Python's *global*
RNGs; the loader restores both afterwards so loading the data never changes a caller's random state.

Generation takes a second or two; the arrays are cached in ``<data_dir>/mnist1d/`` as an ``.npz``
file (read with ``allow_pickle=False``: no pickle, unlike the package's own cache). A cache file
that cannot be read or has the wrong shapes is regenerated.

Signals are stored as ``(N, 1, 1, 40)`` float32: a one-channel "image" of height 1, so the
:class:`~driftscope.data.Dataset` contract (``(N, C, H, W)``) holds unchanged; the ``cnn1d`` model
(:mod:`driftscope.models.nets_1d`) reads them as ``(N, C, L)``. Values are already standardised by
``make_dataset`` (zero mean, unit variance over the whole set), not in ``[0, 1]``; ``mean``/``std``
are the training set's, so per-batch normalisation is close to the identity.
"""

from __future__ import annotations

import os
import random
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from driftscope.data import Dataset

NUM_SAMPLES = 5000  # mnist1d's default: 4,000 train + 1,000 test
SEED = 42  # mnist1d's default seed
LENGTH = 40  # samples per signal (mnist1d's final_seq_length)
NUM_CLASSES = 10
KEYS = ("x", "y", "x_test", "y_test")


def cache_path(data_dir: str | os.PathLike) -> Path:
    """Where the generated arrays are cached: ``<data_dir>/mnist1d/mnist1d_n5000_seed42.npz``."""
    return Path(data_dir) / "mnist1d" / f"mnist1d_n{NUM_SAMPLES}_seed{SEED}.npz"


def generate() -> dict[str, np.ndarray]:
    """Run ``mnist1d.data.make_dataset`` with its default arguments; global RNGs are restored.

    Returns ``x`` (4000, 40) float64, ``y`` (4000,) int64, ``x_test`` (1000, 40), ``y_test``.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:  # pragma: no cover - a declared dependency
        from driftscope.errors import DataError

        raise DataError(
            f"the mnist1d dataset needs the 'mnist1d' package ({err}): pip install mnist1d"
        ) from None
    args = get_dataset_args()
    args.num_samples, args.seed = NUM_SAMPLES, SEED
    # mnist1d draws from the legacy global RNG: save and restore it around the call
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    return {
        "x": np.asarray(data["x"], dtype=np.float64),
        "y": np.asarray(data["y"], dtype=np.int64),
        "x_test": np.asarray(data["x_test"], dtype=np.float64),
        "y_test": np.asarray(data["y_test"], dtype=np.int64),
    }


def _valid(arrays: dict[str, np.ndarray]) -> bool:
    n_train = int(NUM_SAMPLES * 0.8)
    shapes = {
        "x": (n_train, LENGTH),
        "y": (n_train,),
        "x_test": (NUM_SAMPLES - n_train, LENGTH),
        "y_test": (NUM_SAMPLES - n_train,),
    }
    return all(k in arrays and arrays[k].shape == s for k, s in shapes.items())


def _read(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in KEYS if k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    return arrays if _valid(arrays) else None


def _write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically (temporary file, then rename), so a killed run leaves no half cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem, suffix=".npz.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # stubs: **kwargs could fill allow_pickle
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_arrays(data_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """The generated arrays, from the cache if it is readable, else generated and cached."""
    path = cache_path(data_dir)
    arrays = _read(path) if path.is_file() else None
    if arrays is None:
        arrays = generate()
        try:
            _write(path, arrays)
        except OSError:  # a read-only data dir: use the arrays without caching them
            pass
    return arrays


def load_mnist1d(data_dir: str | os.PathLike) -> Dataset:
    """MNIST-1D as a :class:`~driftscope.data.Dataset`: float32 ``(N, 1, 1, 40)``, 10 classes."""
    import torch

    from driftscope.data import Dataset

    a = load_arrays(data_dir)
    train_x = a["x"].astype(np.float32)[:, None, None, :]
    test_x = a["x_test"].astype(np.float32)[:, None, None, :]
    return Dataset(
        name="mnist1d",
        train_x=torch.from_numpy(np.ascontiguousarray(train_x)),
        train_y=torch.from_numpy(a["y"].astype(np.int64)),
        test_x=torch.from_numpy(np.ascontiguousarray(test_x)),
        test_y=torch.from_numpy(a["y_test"].astype(np.int64)),
        num_classes=NUM_CLASSES,
        mean=(float(train_x.mean()),),
        std=(float(train_x.std()),),
        augment=False,
    )
