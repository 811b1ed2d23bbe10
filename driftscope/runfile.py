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

from driftscope import schema
from driftscope.errors import RunFileError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from driftscope.events import RoundEnded
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


class RunWriter:
    """Creates the run file and commits rounds.

    Use :meth:`create`, let other writers (the recorder) declare their datasets on ``.file`` and
    :meth:`declare_state`, then call :meth:`start_swmr` before training. After every hook has seen
    a round's end, the trainer calls :meth:`commit`, which writes ``/metrics/round`` (the commit
    marker) after everything else of the round.
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
            _mark_writer(f)
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

    # ------------------------------------------------------------------ commit
    def commit(self, event: RoundEnded, state: Mapping[str, np.ndarray] | None = None) -> None:
        """Write round ``event.round``: client metrics, metrics, the resume ``state`` (see
        :meth:`declare_state`), then the commit marker ``/metrics/round``, then flush."""
        f = self.file
        losses = np.full(self.num_clients, np.nan)
        accs = np.full(self.num_clients, np.nan)
        for client, value in event.client_train_loss.items():
            losses[client] = value
        for client, value in event.client_train_accuracy.items():
            accs[client] = value
        append(f["clients/train_loss"], losses)
        append(f["clients/train_accuracy"], accs)
        for name in METRIC_NAMES:
            append(f[f"metrics/{name}"], getattr(event, name))
        if state is not None:
            self._write_state(event.round, state)
        self._mark(event.round)

    def _mark(self, round: int) -> None:
        append(self.file[schema.METRICS_ROUND], round)  # commit marker: written last
        self.file.flush()

    # ---------------------------------------------- resume state (wave-core; see end of module)
    def declare_state(self, shapes: Mapping[str, tuple[tuple[int, ...], str]]) -> None:
        """Create the resume-state slots ``state/<name>`` (2, *shape) and ``state/round`` (2,);
        call before :meth:`start_swmr`."""
        f = self.file
        f.create_dataset(schema.STATE_ROUND, data=np.full(schema.STATE_SLOTS, -1, dtype=np.int64))
        for name, (shape, dtype) in shapes.items():
            f.create_dataset(
                schema.state_path(name), shape=(schema.STATE_SLOTS, *shape), dtype=dtype
            )

    def _write_state(self, round: int, state: Mapping[str, np.ndarray]) -> None:
        """Overwrite slot ``round % 2``, then say which round it holds; the other slot keeps the
        previous committed round's state until the commit marker of this one is written."""
        f = self.file
        slot = schema.state_slot(round)
        for name, value in state.items():
            f[schema.state_path(name)][slot] = value
        f[schema.STATE_ROUND][slot] = round

    def set_status(self, status: str, message: str = "") -> None:
        self.file["status"][()] = np.bytes_(status)
        self.file["status_message"][()] = np.bytes_(message.encode()[:511])
        self.file.flush()

    def close(self, status: str = "complete", message: str = "") -> None:
        if self.file.id.valid:
            self.set_status(status, message)
            self.file.close()


# ============================================================================ resume (wave-core)
# The run file's part of resuming a run: check that a file can be resumed, copy it truncated to
# its committed rounds, read the state of the last committed round. Kept apart from the writer
# above so it rebases onto the writer's own changes.


def _mark_writer(f: h5py.File) -> None:
    """Record which process writes the file, so a resume can refuse a live run."""
    f.attrs[schema.WRITER_HOST] = platform.node()
    f.attrs[schema.WRITER_PID] = os.getpid()


def _writer_alive(f: h5py.File) -> int | None:
    """The pid of the process writing ``f`` if it still runs on this host, else None."""
    host, pid = f.attrs.get(schema.WRITER_HOST), f.attrs.get(schema.WRITER_PID)
    if host is None or pid is None or str(host) != platform.node() or int(pid) == os.getpid():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return int(pid)
    return int(pid)


def _open_for_read(path: Path) -> h5py.File:
    if not path.is_file():
        raise RunFileError(f"{path} does not exist: give the run file to resume")
    try:
        return h5py.File(path, "r", swmr=True, libver="latest")
    except OSError as err:
        raise RunFileError(
            f"{path} cannot be read as HDF5 ({str(err).splitlines()[0]}): it cannot be resumed"
        ) from None


def resume_config(path: str | os.PathLike) -> str:
    """The config (JSON) of a run that can be resumed; a one-line error if it cannot."""
    path = Path(path)
    f = _open_for_read(path)
    try:
        if f.attrs.get("format") != FORMAT:
            raise RunFileError(f"{path} is not a driftscope run: it cannot be resumed")
        version = int(f.attrs.get("schema_version", -1))
        if version > SCHEMA_VERSION:
            raise RunFileError(
                f"{path} uses run-file schema {version}, newer than this driftscope writes "
                f"({SCHEMA_VERSION}): resume it with a newer driftscope"
            )
        status = f[schema.STATUS][()].decode()
        done = len(f[schema.METRICS_ROUND])
        if status == "complete":
            raise RunFileError(f"{path} is complete ({done} rounds): there is nothing to resume")
        if status == "diverged":
            raise RunFileError(
                f"{path} diverged after {done} rounds and would diverge again: start a new run "
                "with a lower --lr"
            )
        if status == "running" and (pid := _writer_alive(f)) is not None:
            raise RunFileError(
                f"{path} is being written by process {pid}: wait for it or stop it first"
            )
        if schema.STATE_ROUND not in f:
            raise RunFileError(
                f"{path} was written without resume state (by an older driftscope): start a new run"
            )
        return str(f.attrs["config"])
    finally:
        f.close()


def stored_threads(path: str | os.PathLike) -> int | None:
    """The torch thread count a run was written with (bit-identical resumes need the same)."""
    f = _open_for_read(Path(path))
    try:
        threads = json.loads(str(f.attrs.get("environment", "{}"))).get("torch_threads")
        return int(threads) if threads else None
    except ValueError:
        return None
    finally:
        f.close()


def truncate_to_committed(f: h5py.File) -> int:
    """Cut every growable dataset back to the committed rounds (rows of a round in flight when
    the run stopped); returns the last committed round (-1 if none)."""
    marker = f[schema.METRICS_ROUND]
    n = len(marker)
    last = int(marker[n - 1]) if n else -1

    def cut(obj: h5py.Dataset | h5py.Group, rows: int) -> None:
        items = [obj] if isinstance(obj, h5py.Dataset) else []
        if isinstance(obj, h5py.Group):
            obj.visititems(lambda _, o: items.append(o) if isinstance(o, h5py.Dataset) else None)
        for ds in items:
            if ds.maxshape and ds.maxshape[0] is None and ds.shape[0] > rows:
                ds.resize(rows, axis=0)

    for group in schema.ROUND_GROUPS:
        cut(f[group], n)
    for index, followers in schema.RECORD_INDEXES.items():
        if index not in f:
            continue
        rows = int((f[index][()] <= last).sum())
        for name in (index, *followers):
            if name in f:
                cut(f[name], rows)
    return last


def reopen_for_resume(
    path: str | os.PathLike, num_clients: int
) -> tuple[RunWriter, dict[str, np.ndarray], int]:
    """Continue writing a run that :func:`resume_config` accepted.

    The file is copied next to itself (a killed SWMR writer leaves it marked open for writing,
    and the original stays intact until the copy is complete), cut back to its committed rounds,
    marked running and resumed, and then replaces the original. Returns the writer (SWMR not yet
    on), the state of the last committed round and the next round to train.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.resume")
    src = _open_for_read(path)
    dst = None
    try:
        dst = h5py.File(tmp, "w", libver="latest")
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for key in src:
            src.copy(src[key], dst, name=key)
        src.close()
        last = truncate_to_committed(dst)
        state: dict[str, np.ndarray] = {}
        if last >= 0:
            slot = schema.state_slot(last)
            if int(dst[schema.STATE_ROUND][slot]) != last:
                raise RunFileError(
                    f"{path} holds no saved state for its last committed round {last}: "
                    "it cannot be resumed"
                )

            def read(name: str, obj: h5py.Dataset | h5py.Group) -> None:
                if isinstance(obj, h5py.Dataset) and name != "round":
                    state[name] = obj[slot]

            dst[schema.STATE].visititems(read)
        resumed = list(dst.attrs.get(schema.RESUMED_FROM, []))
        dst.attrs[schema.RESUMED_FROM] = np.array([*resumed, last + 1], dtype=np.int64)
        _mark_writer(dst)
        dst[schema.STATUS][()] = np.bytes_("running")
        dst[schema.STATUS_MESSAGE][()] = np.bytes_("")
        dst.flush()
        os.replace(tmp, path)
    except BaseException as err:
        src.close()
        if dst is not None:
            dst.close()
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise RunFileError(
                f"{path} could not be copied for resuming ({str(err).splitlines()[0]}); "
                "it is unchanged: free disk space or check the file"
            ) from None
        raise
    return RunWriter(dst, path, num_clients), state, last + 1
