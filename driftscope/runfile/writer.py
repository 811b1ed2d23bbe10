"""The run file's writer: one self-describing HDF5 file per run, committed round by round.

The layout (every path, label and dtype) is :mod:`driftscope.runfile.schema`'s. Lifecycle::

    writer = RunWriter.create(path, config=cfg, layout=layout, label_histogram=hist)
    # the recorder declares its datasets under writer.file[schema.RECORDS]; declare_state(...)
    writer.start_swmr()          # SWMR on (the file keeps its temporary name)
    for each round: writer.commit(round_ended_event, state)   # after every hook has run;
                                 # the first commit moves the run onto path (see below)
    writer.close("complete")     # or "diverged" / "interrupted" / "failed", with a message

Written with HDF5 single-writer/multiple-reader (SWMR) mode and flushed after every round, so a
reader can follow a live run and a run killed at any moment leaves a valid file with every
committed round. SWMR forbids creating objects once it is on, so every dataset is created before.

Safety (one writer per path, no stub and no lost run, a dead writer is visible, checksums, write
errors as one error): ``docs/file-format.md``, section "The writer's safety".
"""

from __future__ import annotations

import contextlib
import glob
import os
import resource
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from driftscope.config import RunConfig
from driftscope.engine.events import RoundEnded, StateRows
from driftscope.errors import RunFileError
from driftscope.models.layout import ModelLayout
from driftscope.runfile import schema
from driftscope.runfile.h5write import CHUNK_CACHE, append, growable
from driftscope.runfile.outputs import Lock, RunWriteError, check_output, unwritable, write_error
from driftscope.runfile.static import write_static

__all__ = ["RunWriter"]


class RunWriter:
    """Creates the run file, commits rounds, closes it with a status.

    Use :meth:`create`; let other writers (the recorder) declare their datasets on ``.file``, call
    :meth:`declare_state` if the run keeps resume state, then :meth:`start_swmr` before training.
    """

    def __init__(
        self,
        file: h5py.File,
        path: Path,
        num_clients: int,
        temp: Path | None = None,
        lock: Lock | None = None,
    ) -> None:
        self.file = file
        self.path = path
        self.num_clients = num_clients
        self._temp = temp  # where the file lives until start_swmr moves it onto path
        self._lock = lock
        self._swmr = False
        self._closed = False
        self._state: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._handles: dict[str, h5py.Dataset] = {}
        self._size = 0  # file size after the last commit
        self._most = 0  # the most one round has added
        self._failed = False  # /clients/failed declared (an engine that may lose clients)

    # ------------------------------------------------------------------ create
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        config: RunConfig | Mapping[str, Any],
        layout: ModelLayout,
        label_histogram: np.ndarray,
        overwrite: bool = False,
        engine: str = "inprocess",
        device: str | None = None,
    ) -> RunWriter:
        """Create a new run for ``path`` (at a temporary name until the first round commits).

        ``config``: the run's RunConfig (or a JSON-able dict); ``label_histogram`` (clients,
        classes); ``engine``: the engine's name (root attr ``engine``); ``device``: the training
        device as :func:`driftscope.device.device_name` names it (stored in the environment).
        """
        path = check_output(path, overwrite)
        lock = Lock(path)
        try:
            # checked again under the lock: another writer may have finished in between
            check_output(path, overwrite)
            _remove_stale_temps(path)
            temp = schema.temp_path(path, os.getpid())
            try:
                f = h5py.File(temp, "w", libver="latest", **CHUNK_CACHE)
            except OSError as err:
                raise RunFileError(unwritable(path, err)) from None
        except BaseException:
            lock.release()
            raise
        hist = np.asarray(label_histogram, dtype=np.int64)
        writer = cls(f, path, int(hist.shape[0]), temp, lock)
        try:
            write_static(f, config, layout, hist, engine, device)
        except BaseException as err:
            writer.abandon()
            if isinstance(err, OSError):
                raise RunFileError(unwritable(path, err)) from None
            raise
        return writer

    @classmethod
    def in_memory(
        cls,
        config: RunConfig | Mapping[str, Any],
        layout: ModelLayout,
        label_histogram: np.ndarray,
        engine: str = "inprocess",
    ) -> RunWriter:
        """A writer of a file held only in memory, with the datasets :meth:`create` makes: the
        reference a resume checks a run file's layout against (nothing is written to disk)."""
        f = h5py.File(
            f"driftscope-reference-{id(config)}-{time.monotonic_ns()}",
            "w",
            driver="core",
            backing_store=False,
            libver="latest",
        )
        hist = np.asarray(label_histogram, dtype=np.int64)
        writer = cls(f, Path(f.filename), int(hist.shape[0]))
        write_static(f, config, layout, hist, engine)
        return writer

    def declare_state(self, shapes: Mapping[str, Any]) -> None:
        """Create the resume-state slots ``state/<name>`` (2, *shape) and ``state/round`` (2,).

        ``shapes``: ``{name: (shape, dtype)}`` (or ``{name: shape}`` for float32). Round r's state
        goes to slot r % 2, so a round killed while its state is written leaves the previous
        committed round's state whole. Call before :meth:`start_swmr`."""
        if self._swmr:
            raise RunFileError("declare_state must come before start_swmr")
        f = self.file
        if schema.STATE_ROUND not in f:  # chunked for the checksum: it says which slot is whole
            f.create_dataset(
                schema.STATE_ROUND,
                data=np.full(schema.STATE_SLOTS, -1, np.int64),
                chunks=(schema.STATE_SLOTS,),
                fletcher32=schema.CHECKSUM,
            )
        for name, spec in shapes.items():
            if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], tuple | list):
                dtype: np.dtype[Any]
                shape, dtype = tuple(int(s) for s in spec[0]), np.dtype(spec[1])
            else:
                shape, dtype = tuple(int(s) for s in spec), np.dtype(np.float32)
            full = (schema.STATE_SLOTS, *shape)
            kwargs: dict[str, Any] = {}
            if int(np.prod(full)) > 0:
                chunks = (1, *shape) if shape else True
                if len(shape) >= 2:  # per-client rows (c_clients): chunks of whole rows, <= 1 MiB,
                    # so writing the rows changed in a round touches only their chunks
                    row = int(np.prod(shape[1:])) * dtype.itemsize
                    chunks = (1, max(1, min(shape[0], (1 << 20) // max(1, row))), *shape[1:])
                kwargs = {"chunks": chunks, "fletcher32": schema.CHECKSUM}
            f.create_dataset(schema.state_path(name), shape=full, dtype=dtype, **kwargs)
            self._state[name] = (shape, dtype)

    def declare_algorithm_record(self, record: Mapping[str, Any]) -> None:
        """Create ``algorithm/<key>`` (round, layer) for each per-layer array the algorithm reports
        each round (``Algorithm.round_record``, e.g. fedpvr_auto's chosen layers); call before
        :meth:`start_swmr` with the record's shape (its value before round 0). {} creates nothing."""
        if self._swmr:
            raise RunFileError("declare_algorithm_record must come before start_swmr")
        if not record:
            return
        g = self.file.require_group(schema.ALGORITHM)
        for key, value in record.items():
            value = np.asarray(value)
            growable(g, key, value.shape, value.dtype, schema.AX_ROUND_LAYER)

    def declare_failed_clients(self) -> None:
        """Create ``/clients/failed`` (round, client) int8, before :meth:`start_swmr`: each
        commit appends 1 where a sampled client failed (``RoundEnded.failed``)."""
        ds = growable(
            self.file.require_group(schema.CLIENTS),
            schema.CLIENT_FAILED.split("/", 1)[1],
            (self.num_clients,),
            np.int8,
            schema.AX_ROUND_CLIENT,
        )
        ds.attrs["description"] = (
            "1 where a sampled client's reply was an error or never came; "
            "its Gram rows are NaN and it is left out of the average"
        )
        self._failed = True

    def start_swmr(self) -> None:
        """Turn on SWMR. The run stays at its temporary name until its first round commits."""
        self._guard(self._start_swmr)

    def _start_swmr(self) -> None:
        self.file.flush()
        self.file.swmr_mode = True
        self._swmr = True
        with contextlib.suppress(OSError, ValueError, RuntimeError, TypeError):
            self._size = os.fstat(int(self.file.id.get_vfd_handle())).st_size

    def _move_into_place(self) -> None:
        """The new run replaces ``path`` (an old run there included): after its first commit, or
        when it is closed as complete without one."""
        if self._temp is not None:
            os.replace(self._temp, self.path)
            self._temp = None

    # ------------------------------------------------------------------ rounds
    def _ds(self, path: str) -> h5py.Dataset:
        handle = self._handles.get(path)
        if handle is None:
            handle = self._handles[path] = self.file[path]
        return handle

    def commit(
        self,
        event: RoundEnded,
        state: Mapping[str, Any] | None = None,
        algorithm_record: Mapping[str, Any] | None = None,
    ) -> None:
        """Write one round and commit it: client metrics, round metrics, failed clients (when
        declared), resume state (into slot ``round % 2``), the algorithm's per-layer record
        (``algorithm/<key>``, see :meth:`declare_algorithm_record`), then the commit marker
        ``metrics/round``, then flush."""
        self._guard(self._commit, event, state, algorithm_record)

    def _commit(
        self,
        event: RoundEnded,
        state: Mapping[str, Any] | None,
        algorithm_record: Mapping[str, Any] | None = None,
    ) -> None:
        losses = np.full(self.num_clients, np.nan)
        accs = np.full(self.num_clients, np.nan)
        for client, value in event.client_train_loss.items():
            losses[int(client)] = value
        for client, value in event.client_train_accuracy.items():
            accs[int(client)] = value
        append(self._ds(schema.client_metric_path("train_loss")), losses)
        append(self._ds(schema.client_metric_path("train_accuracy")), accs)
        for name in schema.METRIC_NAMES:
            append(self._ds(schema.metric_path(name)), getattr(event, name))
        if self._failed:
            row = np.zeros(self.num_clients, dtype=np.int8)
            row[list(event.failed)] = 1
            append(self._ds(schema.CLIENT_FAILED), row)
        rnd = int(event.round)
        if state:
            self._write_state(rnd, state)
        for key, value in (algorithm_record or {}).items():
            append(self._ds(schema.algorithm_record_path(key)), np.asarray(value))
        self._mark(rnd)
        self._move_into_place()
        self._check_room(rnd)

    def _write_state(self, round: int, state: Mapping[str, Any]) -> None:
        """Overwrite slot ``round % 2``, then say which round it holds; the other slot keeps the
        previous committed round's state until this round's commit marker is written."""
        slot = schema.state_slot(round)
        for name, value in state.items():
            if schema.state_path(name) not in self.file:
                raise RunFileError(f"resume state '{name}' was not declared (declare_state)")
            if isinstance(value, StateRows):  # only the rows changed since this slot's round
                if len(value.rows):
                    self._ds(schema.state_path(name))[slot, value.rows] = value.values
                continue
            arr = value.detach().cpu().numpy() if hasattr(value, "detach") else value
            self._ds(schema.state_path(name))[slot] = np.asarray(arr)
        self._ds(schema.STATE_ROUND)[slot] = round

    def _mark(self, round: int) -> None:
        append(self._ds(schema.METRICS_ROUND), round)  # commit marker: written last
        self.file.flush()

    def _check_room(self, rnd: int) -> None:
        """Stop cleanly before a round that would not fit: HDF5 cannot recover from a write that
        fails half-way (its metadata may then point past the end of the file), so the writer
        refuses to start a round when the space left (free disk, or the file-size limit) is less
        than the most any round took so far, plus a margin."""
        try:
            size = os.fstat(int(self.file.id.get_vfd_handle())).st_size
            vfs = os.statvfs(self.path.parent)
        except (OSError, ValueError, RuntimeError, TypeError):
            return
        grown = size - self._size
        self._size = size
        self._most = max(self._most, grown)  # rounds differ (updates every few rounds)
        grown = self._most
        room = vfs.f_bavail * vfs.f_frsize
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY:
            room = min(room, limit - size)
        if grown > 0 and room < grown + grown // 4 + (1 << 16):
            what = (
                "file size limit"
                if limit != resource.RLIM_INFINITY and room == limit - size
                else "disk"
            )
            reason = (
                f"the {what} leaves {room:,} bytes, too few for another round ({grown:,} bytes); "
                f"stopped after round {rnd}, the file keeps every committed round"
            )
            self._set_status("failed", reason)
            self._closed = True
            self.file.close()
            if self._lock is not None:
                self._lock.release()
            raise RunFileError(f"cannot write {self.path}: {reason}")

    # ------------------------------------------------------------------ status, close
    def set_status(self, status: str, message: str = "") -> None:
        self._guard(self._set_status, status, message)

    def _set_status(self, status: str, message: str) -> None:
        self.file[schema.STATUS][()] = np.bytes_(status)
        msg = message.encode()[: int(schema.MESSAGE_DTYPE[1:]) - 1]
        self.file[schema.STATUS_MESSAGE][()] = np.bytes_(msg)
        self.file.flush()

    def close(self, status: str = "complete", message: str = "") -> None:
        """Write the final status and close; safe to call more than once, and after a write error.

        A run with no committed round was never moved into place: closing it as anything but
        "complete" deletes it and leaves what was at ``path`` (an older run, or nothing)."""
        if self._closed:
            return
        if self._temp is not None and (status != "complete" or not self._swmr):
            self.abandon()
            return
        self._closed = True
        try:
            if self.file.id.valid:
                with contextlib.suppress(Exception):
                    self._set_status(status, message)
                with contextlib.suppress(Exception):
                    self.file.close()
            if self._temp is not None:  # complete without a committed round
                self._move_into_place()
        finally:
            if self._lock is not None:
                self._lock.release()

    def abandon(self) -> None:
        """Close and delete a run that never committed a round (bad input, a failure in round 0)."""
        self._closed = True
        with contextlib.suppress(Exception):
            self.file.close()
        if self._temp is not None:
            with contextlib.suppress(OSError):
                self._temp.unlink()
            self._temp = None
        if self._lock is not None:
            self._lock.release()

    def guarded(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)``, a write into this file by another part, as :meth:`commit` runs its
        own: an OSError marks the run failed once, closes the file and becomes one RunFileError.
        The recorder's whole-chunk writes need it: they reach the disk at once, not at a flush."""
        self._guard(fn, *args)

    def _guard(self, fn: Any, *args: Any) -> None:
        """Run a write; an OSError (disk full, size limit) marks the run failed once, closes the
        file and becomes one RunFileError."""
        if self._closed:
            raise RunFileError(f"{self.path} is closed")
        try:
            fn(*args)
        except (OSError, RuntimeError) as err:
            reason = write_error(err)
            self._fail(reason)
            raise RunWriteError(f"cannot write {self.path}: {reason}") from None

    def _fail(self, reason: str) -> None:
        """After a write error: mark the run failed if that can still be written, then close.

        HDF5 keeps the metadata it could not write and retries on every later flush and close
        (and on the garbage collection of every handle), which ends in a storm of tracebacks and a
        segfault. So once the status is written (or not), the file's descriptor is pointed at
        /dev/null: the close "succeeds" there, and the file on disk stays as of its last
        successful flush, which holds every committed round.
        """
        self._closed = True
        try:
            status_written = False
            with contextlib.suppress(Exception):
                self._set_status("failed", reason)
                status_written = True
            if not status_written:
                self._detach()
            with contextlib.suppress(Exception):
                self.file.close()
        finally:
            if self._temp is not None:
                with contextlib.suppress(OSError):
                    self._temp.unlink()
                self._temp = None
            if self._lock is not None:
                self._lock.release()

    def _detach(self) -> None:
        """Point the HDF5 file's descriptor at /dev/null, so nothing more reaches the disk."""
        with contextlib.suppress(Exception):
            fd = int(self.file.id.get_vfd_handle())
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, fd)
            os.close(null)


def _remove_stale_temps(path: Path) -> None:
    """Delete temporary files of earlier writers on ``path`` that were killed before their first
    commit. Called under ``path``'s lock, which every writer holds for its whole life, so no
    living writer owns one."""
    prefix = f".{path.name}."
    for stale in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        if stale.name[len(prefix) : -len(".tmp")].isdigit():
            with contextlib.suppress(OSError):
                stale.unlink()
