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
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from driftscope.config import RunConfig
from driftscope.engine.events import RoundEnded
from driftscope.errors import RunFileError
from driftscope.models.layout import ModelLayout
from driftscope.runfile import schema
from driftscope.runfile.h5write import CHUNK_CACHE, append, growable
from driftscope.runfile.outputs import (
    Lock,
    RunWriteError,
    check_output,
    remove_stale_temps,
    room_shortfall,
    unwritable,
    write_error,
)
from driftscope.runfile.state_slots import StateSlots
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
        self._slots = StateSlots(file)  # the resume state, two slots
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
            remove_stale_temps(path)
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
        self._slots.declare(shapes)

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
        (``algorithm/<key>``, see :meth:`declare_algorithm_record`), flush, then the commit
        marker ``metrics/round``, then flush again."""
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
            self._slots.write(rnd, state)
        for key, value in (algorithm_record or {}).items():
            append(self._ds(schema.algorithm_record_path(key)), np.asarray(value))
        # A flush writes its metadata in no set order, and a kill during one can keep any part
        # of it: the round's columns (the recorder's included) reach the file in a flush of
        # their own before the marker is appended and flushed.
        self.file.flush()
        self._mark(rnd)
        self._move_into_place()
        self._check_room(rnd)

    def _mark(self, round: int) -> None:
        append(self._ds(schema.METRICS_ROUND), round)  # commit marker: written last
        self.file.flush()

    def _check_room(self, rnd: int) -> None:
        """Stop cleanly before a round that would not fit (:func:`room_shortfall`): status
        "failed", the file closed with every committed round."""
        try:
            size = os.fstat(int(self.file.id.get_vfd_handle())).st_size
        except (OSError, ValueError, RuntimeError, TypeError):
            return
        self._most = max(self._most, size - self._size)  # rounds differ (updates every few rounds)
        self._size = size
        short = room_shortfall(size, self._most, self.path.parent)
        if short is None:
            return
        reason = f"{short}; stopped after round {rnd}, the file keeps every committed round"
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

    def guarded(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)``, a write into this file by another part, as :meth:`commit` runs its
        own: an OSError marks the run failed once, closes the file and becomes one RunFileError.
        The recorder's whole-chunk writes need it: they reach the disk at once, not at a flush."""
        self._guard(fn, *args)

    def _guard(self, fn: Callable[..., object], *args: Any) -> None:
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
