"""The run file's side of resuming a run (:func:`driftscope.engine.training.resume`).

Check that a file can be resumed, copy it truncated to its committed rounds, and read the saved
state of the last committed round (written double-buffered by :class:`~driftscope.runfile.writer.RunWriter`).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from pathlib import Path

import h5py
import numpy as np

from driftscope.errors import RunFileError
from driftscope.runfile import schema
from driftscope.runfile.h5open import open_file, writer_alive
from driftscope.runfile.h5write import CHUNK_CACHE
from driftscope.runfile.outputs import Lock, write_error
from driftscope.runfile.writer import RunWriter


def _mark_writer(f: h5py.File) -> None:
    """Record which process writes the file, so a resume can refuse a live run."""
    f.attrs[schema.WRITER_HOST] = platform.node()
    f.attrs[schema.WRITER_PID] = os.getpid()
    f.attrs[schema.WRITER_STARTED] = time.time()


def _writer_alive(f: h5py.File) -> int | None:
    """The pid of the process writing ``f`` if it still runs on this host, else None."""
    host, pid = f.attrs.get(schema.WRITER_HOST), f.attrs.get(schema.WRITER_PID)
    started = f.attrs.get(schema.WRITER_STARTED)
    if host is None or pid is None or int(pid) == os.getpid():
        return None
    host = host.decode() if isinstance(host, bytes) else str(host)
    if host != platform.node():
        return None  # another machine: cannot be checked from here
    alive = writer_alive(host, int(pid), None if started is None else float(started))
    return int(pid) if alive else None


def _open_for_read(path: Path) -> h5py.File:
    if not path.is_file():
        raise RunFileError(f"{path} does not exist: give the run file to resume")
    return open_file(path)  # plain or SWMR with bounded retries: a damaged file fails fast


def damaged(path: Path, what: str) -> RunFileError:
    """The one-line error of a run file that cannot be resumed because a part of it is damaged."""
    return RunFileError(
        f"{path} is damaged ({what}): it cannot be resumed and was left unchanged; "
        "start a new run (its committed rounds stay readable where undamaged)"
    )


def _integer_attr(f: h5py.File, path: Path, name: str, default: int | None = None) -> int | None:
    value = f.attrs.get(name)
    if value is None:
        return default
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if not isinstance(value, int | np.integer) or isinstance(value, bool | np.bool_):
        raise damaged(path, f"attribute '{name}' is {value!r}, not an integer")
    return int(value)


def _check_parts(f: h5py.File, path: Path) -> str:
    """The parts a resume reads before copying: their presence and types. Returns the status."""
    _integer_attr(f, path, schema.WRITER_PID)
    started = f.attrs.get(schema.WRITER_STARTED)
    if started is not None and not isinstance(started, int | float | np.integer | np.floating):
        raise damaged(path, f"attribute '{schema.WRITER_STARTED}' is {started!r}, not a time")
    for name in (schema.STATUS, schema.METRICS_ROUND):
        if not isinstance(f.get(name), h5py.Dataset):
            raise damaged(path, f"'{name}' is missing")
    status = f[schema.STATUS][()]
    if not isinstance(status, bytes):
        raise damaged(path, f"'{schema.STATUS}' holds {status!r}, not a status")
    try:
        config = json.loads(str(f.attrs.get(schema.ATTR_CONFIG)))
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise damaged(path, f"attribute '{schema.ATTR_CONFIG}' is not a JSON table")
    return status.decode(errors="replace")


def resume_config(path: str | os.PathLike) -> str:
    """The config (JSON) of a run that can be resumed; a one-line error if it cannot."""
    path = Path(path)
    f = _open_for_read(path)
    try:
        if f.attrs.get("format") != schema.FORMAT:
            raise RunFileError(f"{path} is not a driftscope run: it cannot be resumed")
        version = _integer_attr(f, path, schema.ATTR_SCHEMA_VERSION, -1)
        assert version is not None
        if version > schema.SCHEMA_VERSION:
            raise RunFileError(
                f"{path} uses run-file schema {version}, newer than this driftscope writes "
                f"({schema.SCHEMA_VERSION}): resume it with a newer driftscope"
            )
        status = _check_parts(f, path)
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


def check_layout(path: str | os.PathLike, reference: h5py.File) -> None:
    """Every dataset a fresh writer of the same run creates (``reference``) must be in the file
    with its dtype, its chunked layout if it grows (a fixed-size one may be contiguous, as files
    written before its checksum have it) and its shape (all but the rounds axis where it grows):
    a resume writes into them. A one-line :func:`damaged` error names the first that is
    missing or changed; the file is only read."""
    path = Path(path)
    f = _open_for_read(path)
    try:
        names: list[str] = []
        reference.visititems(
            lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None
        )
        for name in names:
            want, got = reference[name], f.get(name)
            if not isinstance(got, h5py.Dataset) and name.startswith(f"{schema.STATE}/buffers/"):
                raise RunFileError(
                    f"{path} has no buffers in its resume state ('{name}'): it was written before "
                    "module buffers were resume state; start a new run"
                )
            if name.startswith(f"{schema.GLOBAL_WEIGHTS}/") and schema.GLOBAL_WEIGHTS not in f:
                continue  # written before the global model's norms were recorded: stays without
            if not isinstance(got, h5py.Dataset):
                raise damaged(path, f"'{name}' is missing")
            grows = bool(want.maxshape) and want.maxshape[0] is None
            shape_ok = got.shape[1:] == want.shape[1:] if grows else got.shape == want.shape
            if (
                got.dtype != want.dtype
                or got.maxshape != want.maxshape
                or (grows and (got.chunks is None) != (want.chunks is None))
                or not shape_ok
            ):
                raise damaged(
                    path,
                    f"'{name}' is {got.dtype} {got.shape} "
                    f"{'chunked' if got.chunks else 'contiguous'}, not what this run writes "
                    f"({want.dtype} {want.shape} {'chunked' if want.chunks else 'contiguous'})",
                )
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
        if group in f:  # algorithm/ exists only where the algorithm reports per-round values
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
    lock = Lock(path)  # no second writer (or resume) on the same file meanwhile
    try:
        src = _open_for_read(path)
    except BaseException:
        lock.release()
        raise
    dst = None
    try:
        dst = h5py.File(tmp, "w", libver="latest", **CHUNK_CACHE)
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
        # clean up whatever the failure left (a full disk may fail the closes too), then say why
        with contextlib.suppress(Exception):
            src.close()
        if dst is not None:
            with contextlib.suppress(Exception):
                dst.close()
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        lock.release()
        if isinstance(err, OSError | RuntimeError):  # h5py reports a failed write either way
            raise RunFileError(
                f"{path} could not be copied for resuming ({write_error(err)}); "
                "it is unchanged: free disk space or check the file"
            ) from None
        if isinstance(err, KeyError | ValueError | TypeError | IndexError):
            raise damaged(
                path, str(err).splitlines()[0] if str(err) else type(err).__name__
            ) from None
        raise
    return RunWriter(dst, path, num_clients, lock=lock), state, last + 1
