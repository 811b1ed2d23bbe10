"""Small HDF5 helpers of the run-file writer: growable labelled datasets and the environment record.

Torch-free. Paths, labels and dtypes come from :mod:`driftscope.schema`.
"""

from __future__ import annotations

import platform
from typing import Any

import h5py
import numpy as np

from driftscope import schema


def environment() -> dict[str, Any]:
    """Versions and machine facts stored with every run (torch's, if torch is imported)."""
    import sys

    import driftscope

    env: dict[str, Any] = {
        "driftscope": driftscope.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
    return env


def growable(
    group: h5py.Group,
    name: str,
    shape: tuple[int, ...],
    dtype: Any,
    labels: tuple[str, ...],
    chunks: tuple[int, ...] | None = None,
    fill: Any = None,
) -> h5py.Dataset:
    """A dataset shaped (0, *shape) that grows along its first (round) axis, axes labelled, with a
    fletcher32 checksum on every chunk."""
    kwargs: dict[str, Any] = {}
    if fill is not None:
        kwargs["fillvalue"] = fill
    ds = group.create_dataset(
        name,
        shape=(0, *shape),
        maxshape=(None, *shape),
        dtype=dtype,
        chunks=chunks or (max(1, min(64, 2**20 // max(1, int(np.prod(shape)) * 8))), *shape),
        fletcher32=schema.CHECKSUM,
        **kwargs,
    )
    for i, label in enumerate(labels):
        ds.dims[i].label = label
    return ds


def append(ds: h5py.Dataset, value: Any) -> None:
    """Grow ``ds`` by one row along axis 0 and write ``value`` there."""
    n = ds.shape[0]
    ds.resize(n + 1, axis=0)
    ds[n] = value


def _labelled(group: h5py.Group, name: str, data: Any, labels: tuple[str, ...]) -> h5py.Dataset:
    ds = group.create_dataset(name, data=data)
    for i, label in enumerate(labels):
        ds.dims[i].label = label
    return ds
