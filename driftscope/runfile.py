"""The run file: one self-describing HDF5 file per run, written round by round.

Layout (schema version 1; every array's axes are labelled with ``dims[i].label``)::

    /                       attrs: format="driftscope-run", schema_version, driftscope_version,
                                   config (JSON), environment (JSON), created (ISO 8601)
    /status                 scalar string: running | complete | diverged | interrupted
    /status_message         scalar string: why it stopped, if it did not complete
    /model/param_*          name, layer, group, shape (JSON), offset, numel  (param,)
    /model/layer_*          name, label, kind, group, numel                 (layer,)
    /partition/label_histogram  (client, class) int64;  /partition/client_size (client,)
    /metrics/<name>         (round,)  test_accuracy, test_loss, train_loss, train_accuracy,
                                      uplink_bytes, downlink_bytes, seconds
    /metrics/round          (round,)  written last: its length is the number of committed rounds
    /clients/train_loss     (round, client) NaN where a client did not take part
    /clients/train_accuracy (round, client)
    /records/...            per-layer recordings (see driftscope.recorder)

Written with HDF5 single-writer/multiple-reader (SWMR) mode and flushed after every round, so a
reader (a notebook) can follow a live run and a run killed at any moment leaves a valid file with
every completed round. SWMR forbids creating objects once it is on, so every dataset is created
before training starts, with an unlimited first (round) axis.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from driftscope.errors import RunFileError
from driftscope.hooks import Hook, RoundSummary

if TYPE_CHECKING:
    from driftscope.simulator import Simulator

FORMAT = "driftscope-run"
SCHEMA_VERSION = 1
METRIC_NAMES = (
    "test_accuracy",
    "test_loss",
    "train_loss",
    "train_accuracy",
    "uplink_bytes",
    "downlink_bytes",
    "seconds",
)
STR = h5py.string_dtype()
STATUS_DTYPE = "S32"
MESSAGE_DTYPE = "S512"


def environment() -> dict[str, Any]:
    """Versions and machine facts stored with every run."""
    import torch

    import driftscope

    return {
        "driftscope": driftscope.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }


def growable(
    group: h5py.Group,
    name: str,
    shape: tuple[int, ...],
    dtype: Any,
    labels: tuple[str, ...],
    chunks: tuple[int, ...] | None = None,
    fill: Any = None,
) -> h5py.Dataset:
    """A dataset shaped (0, *shape) that grows along its first (round) axis, axes labelled."""
    kwargs: dict[str, Any] = {}
    if fill is not None:
        kwargs["fillvalue"] = fill
    ds = group.create_dataset(
        name,
        shape=(0, *shape),
        maxshape=(None, *shape),
        dtype=dtype,
        chunks=chunks or (max(1, min(64, 2**20 // max(1, int(np.prod(shape)) * 8))), *shape),
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


class RunWriter(Hook):
    """Creates the run file and writes each round's metrics; put it LAST among the hooks, so that
    ``/metrics/round`` (the commit marker) is written after every other record of the round.

    Use :meth:`create`, let other writers (the recorder) declare their datasets on ``.file``, then
    call :meth:`start_swmr` before training.
    """

    def __init__(self, file: h5py.File, path: Path, num_clients: int) -> None:
        self.file = file
        self.path = path
        self.num_clients = num_clients
        self._swmr = False

    @classmethod
    def create(cls, path: str | os.PathLike, sim: Simulator, overwrite: bool = False) -> RunWriter:
        """Create ``path`` with the static metadata of ``sim``'s run."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise RunFileError(f"{path} already exists: choose another --out or pass --overwrite")
        if path.exists() and path.is_dir():
            raise RunFileError(f"{path} is a directory: give --out a file path ending in .h5")
        path.parent.mkdir(parents=True, exist_ok=True)
        f = h5py.File(path, "w", libver="latest")
        try:
            f.attrs["format"] = FORMAT
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["driftscope_version"] = environment()["driftscope"]
            f.attrs["config"] = sim.cfg.to_json()
            f.attrs["environment"] = json.dumps(environment(), sort_keys=True)
            f.attrs["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
            f.create_dataset("status", data=np.bytes_("running"), dtype=STATUS_DTYPE)
            f.create_dataset("status_message", data=np.bytes_(""), dtype=MESSAGE_DTYPE)

            m = f.create_group("model")
            lay = sim.layout
            _labelled(
                m, "param_name", np.array([p.name for p in lay.params], dtype=STR), ("param",)
            )
            _labelled(
                m, "param_layer", np.array([p.layer for p in lay.params], dtype=STR), ("param",)
            )
            _labelled(
                m, "param_group", np.array([p.group for p in lay.params], dtype=STR), ("param",)
            )
            _labelled(
                m,
                "param_shape",
                np.array([json.dumps(p.shape) for p in lay.params], dtype=STR),
                ("param",),
            )
            _labelled(
                m,
                "param_offset",
                np.array([p.offset for p in lay.params], dtype=np.int64),
                ("param",),
            )
            _labelled(
                m,
                "param_numel",
                np.array([p.numel for p in lay.params], dtype=np.int64),
                ("param",),
            )
            for field in ("name", "label", "kind", "group"):
                _labelled(
                    m,
                    f"layer_{field}",
                    np.array([getattr(layer, field) for layer in lay.layers], dtype=STR),
                    ("layer",),
                )
            _labelled(
                m,
                "layer_numel",
                np.array([layer.numel for layer in lay.layers], dtype=np.int64),
                ("layer",),
            )
            m.attrs["numel"] = lay.numel
            m.attrs["head_numel"] = lay.head_numel

            p = f.create_group("partition")
            _labelled(p, "label_histogram", sim.label_histogram, ("client", "class"))
            _labelled(p, "client_size", sim.label_histogram.sum(axis=1), ("client",))

            g = f.create_group("metrics")
            growable(g, "round", (), np.int64, ("round",))
            for name in METRIC_NAMES:
                dtype = np.int64 if name.endswith("_bytes") else np.float64
                growable(g, name, (), dtype, ("round",))
            c = f.create_group("clients")
            n = sim.num_clients
            growable(c, "train_loss", (n,), np.float64, ("round", "client"), fill=np.nan)
            growable(c, "train_accuracy", (n,), np.float64, ("round", "client"), fill=np.nan)
            f.create_group("records")
        except BaseException:
            f.close()
            path.unlink(missing_ok=True)
            raise
        return cls(f, path, n)

    def start_swmr(self) -> None:
        """Turn on SWMR: from here readers may open the file while it is written."""
        self.file.flush()
        self.file.swmr_mode = True
        self._swmr = True

    # ------------------------------------------------------------------ hook
    def on_round_end(self, sim: Simulator, round: int, summary: RoundSummary) -> None:
        f = self.file
        losses = np.full(self.num_clients, np.nan)
        accs = np.full(self.num_clients, np.nan)
        for client, value in summary.client_train_loss.items():
            losses[client] = value
        for client, value in summary.client_train_accuracy.items():
            accs[client] = value
        append(f["clients/train_loss"], losses)
        append(f["clients/train_accuracy"], accs)
        for name in METRIC_NAMES:
            append(f[f"metrics/{name}"], getattr(summary, name))
        append(f["metrics/round"], round)  # commit marker: written last
        f.flush()

    def set_status(self, status: str, message: str = "") -> None:
        self.file["status"][()] = np.bytes_(status)
        self.file["status_message"][()] = np.bytes_(message.encode()[:511])
        self.file.flush()

    def close(self, status: str = "complete", message: str = "") -> None:
        if self.file.id.valid:
            self.set_status(status, message)
            self.file.close()
