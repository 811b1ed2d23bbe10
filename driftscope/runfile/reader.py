"""Read run files: ``driftscope.open_run(path)`` returns a :class:`Run`. Torch-free.

The reader trusts only committed rounds: ``/metrics/round`` is written last in each round, so rows
beyond it (a round in flight when a run was killed) are ignored. It can follow a run that is still
being written (call :meth:`Run.refresh` to see new rounds).

Robustness: a file still marked for writing (a live run, or a killed one) is
opened in SWMR read mode with a bounded number of metadata read attempts, so damaged metadata fails
in milliseconds instead of hanging; "running" with a writer that is no longer alive (same host, dead
PID) counts as stopped, so the truncation check applies; every read goes through one place that
turns a missing or damaged dataset (checksum errors included) into a one-line
:class:`~driftscope.errors.RunFileError` naming it. Every path comes from :mod:`driftscope.runfile.schema`.
"""

from __future__ import annotations

import contextlib
import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from driftscope.errors import DriftscopeError, RunFileError
from driftscope.runfile import schema
from driftscope.runfile.h5open import SWMR_READ_ATTEMPTS, open_file, writer_alive
from driftscope.runfile.h5open import one_line as _one_line
from driftscope.runfile.read_app import AppMixin
from driftscope.runfile.read_global import GlobalMixin
from driftscope.runfile.read_layout import LayoutMixin
from driftscope.runfile.read_records import RecordsMixin
from driftscope.runfile.read_tables import TablesMixin

__all__ = ["SWMR_READ_ATTEMPTS", "Run", "open_run", "writer_alive"]


def open_run(path: str | os.PathLike) -> Run:
    """Open a driftscope run file for reading; a clear :class:`RunFileError` if it is not one."""
    path = Path(path)
    if not path.exists():
        raise RunFileError(f"{path} does not exist: check the path")
    if path.is_dir():
        raise RunFileError(f"{path} is a directory, not a run file")
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError:
        is_hdf5 = False
    if not is_hdf5:
        raise RunFileError(
            f"{path} is not an HDF5 file: give a run file written by 'driftscope run'"
        )
    f = open_file(path)
    try:
        attrs = f.attrs
        fmt = attrs.get(schema.ATTR_FORMAT)
        if isinstance(fmt, bytes):
            fmt = fmt.decode(errors="replace")
        if fmt != schema.FORMAT:
            raise RunFileError(
                f"{path} is an HDF5 file but not a driftscope run (no format={schema.FORMAT!r})"
            )
        try:
            version = int(attrs.get(schema.ATTR_SCHEMA_VERSION, -1))
        except (TypeError, ValueError):
            version = -1
        if version > max(schema.READABLE_VERSIONS):
            raise RunFileError(
                f"{path} uses run-file schema {version}, newer than this driftscope reads "
                f"({max(schema.READABLE_VERSIONS)}): upgrade driftscope"
            )
        if version not in schema.READABLE_VERSIONS:
            raise RunFileError(f"{path} has an invalid schema_version {version}")
        run = Run(f, path)
        if not run.live:
            expected, actual = f.id.get_filesize(), path.stat().st_size
            if actual < expected:
                raise RunFileError(
                    f"{path} is truncated ({actual:,} of {expected:,} bytes): copy the whole "
                    "file again"
                )
        return run
    except DriftscopeError:
        f.close()
        raise
    except (KeyError, OSError, ValueError, TypeError, RuntimeError) as err:
        f.close()
        raise RunFileError(
            f"{path} is a damaged driftscope run ({_one_line(err)}): re-run the training"
        ) from None


class Run(LayoutMixin, TablesMixin, RecordsMixin, AppMixin, GlobalMixin):
    """A recorded run. Use as a context manager or call :meth:`close`.

    ``config`` (RunConfig), ``environment`` (dict), ``layout`` (:class:`ModelLayout`: ``params``
    and ``layers`` in model order, each head or body), ``clients`` (ids), ``rounds`` (recorded
    rounds), ``metrics`` (DataFrame, one row per committed round). Only this class opens the file.

    Its accessors come by job: here opening, the one checked place for raw reads, lifecycle, file
    facts, config and status; the model layout from :class:`~driftscope.runfile.read_layout.LayoutMixin`,
    per-round tables from :class:`~driftscope.runfile.read_tables.TablesMixin`, per-layer records from
    :class:`~driftscope.runfile.read_records.RecordsMixin`, per-client evaluation and the kept
    global models from :class:`~driftscope.runfile.read_global.GlobalMixin`.
    """

    def __init__(self, file: h5py.File, path: Path) -> None:
        self._file = file
        self.path = path

    @property
    def file(self) -> h5py.File:
        """The open h5py file, for low-level inspection in tests and the file-format notebook only;
        library code uses the methods of this class (which check what they read)."""
        return self._file

    # ------------------------------------------------------------------ raw access (one place)
    def _check_open(self) -> None:
        if not self._file.id.valid:
            raise RunFileError(
                f"{self.path.name} is closed: read it before close() (inside 'with open_run(...)') "
                "or open it again"
            )

    def _get(self, name: str) -> Any:
        """The dataset or group at ``name``; a missing or damaged one is a one-line RunFileError."""
        self._check_open()
        try:
            return self._file[name]
        except (KeyError, OSError, ValueError, RuntimeError, TypeError) as err:
            missing = isinstance(err, KeyError) and "doesn't exist" in str(err)
            what = "is missing" if missing else f"is damaged ({_one_line(err)})"
            raise RunFileError(
                f"{self.path.name}: {name} {what}; the rest of the file may still be readable"
            ) from None

    def _read(self, name: str, sel: Any = ()) -> np.ndarray:
        """Read ``name[sel]``; checksum and other read errors become a RunFileError naming it.
        A static dataset listed in :data:`schema.STATIC_CRC` is checked against its CRC-32."""
        ds = self._dataset(name)
        try:
            data = ds[sel]
        except (OSError, ValueError, RuntimeError, TypeError, IndexError) as err:
            raise RunFileError(
                f"{self.path.name}: {name} is damaged ({_one_line(err)}); its checksum or "
                "layout does not match: copy the file again or re-run"
            ) from None
        if isinstance(sel, tuple) and sel == ():
            self._check_static(name, data)
        return data

    def _check_static(self, name: str, value: Any) -> None:
        """Compare a static part with its CRC-32 in :data:`schema.STATIC_CRC` (if listed)."""
        if not hasattr(self, "_static_crc"):
            raw = self._attr(schema.STATIC_CRC)
            try:
                sums = json.loads(raw) if raw is not None else {}
            except ValueError:
                sums = None
            if not isinstance(sums, dict):
                raise RunFileError(
                    f"{self.path.name}: the attribute {schema.STATIC_CRC} is damaged: copy the "
                    "file again or re-run"
                )
            self._static_crc: dict[str, Any] = sums
        want = self._static_crc.get(name)
        if want is not None and schema.static_crc32(value) != want:
            raise RunFileError(
                f"{self.path.name}: {name} is damaged (CRC-32 mismatch): copy the file again "
                "or re-run"
            )

    def _dataset(self, name: str) -> h5py.Dataset:
        """The dataset at ``name``, checked against the schema's kind and number of axes."""
        ds = self._get(name)
        if not isinstance(ds, h5py.Dataset):
            raise RunFileError(f"{self.path.name}: {name} is damaged (a group, not a dataset)")
        kind, ndim = schema.expected(name)
        try:
            dkind = ds.dtype.kind
            shape = ds.shape
        except (OSError, ValueError, RuntimeError, TypeError) as err:
            raise RunFileError(f"{self.path.name}: {name} is damaged ({_one_line(err)})") from None
        ok = dkind in "fiub" if kind == "num" else dkind in "OSU"
        if not ok or (ndim is not None and len(shape or ()) != ndim):
            raise RunFileError(
                f"{self.path.name}: {name} is damaged (dtype {ds.dtype}, shape {shape}; expected "
                f"{'numbers' if kind == 'num' else 'strings'} with {ndim} axes)"
            )
        return ds

    def _has(self, name: str) -> bool:
        """Whether ``name`` exists. A group whose links cannot be read (HDF5's metadata checksum
        failed) is damage, a one-line RunFileError: taken for "absent", it would make a
        recorded part look never recorded."""
        self._check_open()
        try:
            return name in self._file
        except (OSError, KeyError, ValueError, RuntimeError) as err:
            raise RunFileError(
                f"{self.path.name}: cannot tell whether {name} exists, the group holding it is "
                f"damaged ({_one_line(err)}); copy the file again or re-run"
            ) from None

    def _attr(self, name: str, default: Any = None, obj: str = "/") -> Any:
        """The attribute ``name`` of ``obj`` (``default`` when either is absent); one that
        cannot be read is a one-line RunFileError, never the default."""
        self._check_open()
        if not self._has(obj):
            return default
        try:
            attrs = self._file[obj].attrs
            if name not in attrs:
                return default
            value = attrs[name]
        except (OSError, KeyError, ValueError, RuntimeError, TypeError) as err:
            raise RunFileError(
                f"{self.path.name}: the attribute {name} of {obj} is damaged ({_one_line(err)}); "
                "copy the file again or re-run"
            ) from None
        return value.decode(errors="replace") if isinstance(value, bytes) else value

    def _length(self, name: str) -> int:
        return int(self._dataset(name).shape[0])

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._file.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def refresh(self) -> None:
        """See rounds written since opening (for a live run)."""
        if not self._file.swmr_mode:
            return
        out: list[h5py.Dataset] = []
        self._file.visititems(
            lambda _, obj: out.append(obj) if isinstance(obj, h5py.Dataset) else None
        )
        # the commit marker first: what a round wrote before its marker is then at least as long
        # when refreshed after it (refreshed in name order, metrics/downlink_bytes could show a
        # round fewer than metrics/round)
        out.sort(key=lambda ds: ds.name.lstrip("/") != schema.METRICS_ROUND)
        for ds in out:
            ds.refresh()

    def _read_rows(self, name: str, n: int) -> np.ndarray:
        """The first ``n`` rows of ``name``; in a live file (SWMR) a dataset seen shorter than the
        commit marker is refreshed once more before the caller calls it damaged."""
        data = self._read(name, slice(0, n))
        if len(data) < n and self._file.swmr_mode:
            with contextlib.suppress(Exception):
                self._dataset(name).refresh()
            data = self._read(name, slice(0, n))
        return data

    def __repr__(self) -> str:
        if not self._file.id.valid:
            return f"<Run {self.path.name}: closed>"
        try:
            c = self.config
            what = (
                self.describe_what() or f"{c.train.algorithm} on {c.data.dataset} ({c.model.name})"
            )
            what += ", "
        except DriftscopeError:
            what = ""
        try:
            n = f"{self.num_rounds} rounds, {len(self.clients)} clients, "
        except DriftscopeError:
            n = ""
        return f"<Run {self.path.name}: {what}{n}status {self.status_text}>"

    # ------------------------------------------------------------------ file facts
    @property
    def schema_version(self) -> int:
        return int(self._attr(schema.ATTR_SCHEMA_VERSION, -1))

    @property
    def created(self) -> str:
        return str(self._attr(schema.ATTR_CREATED, "unknown"))

    @property
    def engine(self) -> str:
        """The engine that produced the run ("inprocess" for schema-1 files)."""
        return str(self._attr(schema.ATTR_ENGINE, "inprocess"))

    @property
    def writer(self) -> dict[str, Any]:
        """Host, PID and start time (seconds since the epoch) of the writing process (schema 2)."""
        pid = self._attr(schema.WRITER_PID)
        started = self._attr(schema.WRITER_STARTED)
        return {  # a damaged value (not a number) reads as unknown
            "host": self._attr(schema.WRITER_HOST),
            "pid": pid
            if isinstance(pid, int)
            else int(pid)
            if isinstance(pid, np.integer)
            else None,
            "started": float(started)
            if isinstance(started, int | float | np.integer | np.floating)
            else None,
        }

    @property
    def live(self) -> bool:
        """Whether a writer is still adding rounds: status "running" and the writer alive."""
        try:
            status = self.status
        except DriftscopeError:
            return False
        if status != schema.RUNNING:
            return False
        w = self.writer
        return writer_alive(w["host"], w["pid"], w["started"])

    # ------------------------------------------------------------------ config
    @cached_property
    def config_dict(self) -> dict[str, Any]:
        """The config as stored (JSON), for tools that show it verbatim."""
        raw = self._attr(schema.ATTR_CONFIG)
        if raw is None:
            raise RunFileError(f"{self.path.name}: the config attribute is missing")
        self._check_static(schema.ATTR_CONFIG, str(raw))
        try:
            value = json.loads(raw)
        except (TypeError, ValueError) as err:
            raise RunFileError(f"{self.path.name}: the config is damaged ({err})") from None
        if not isinstance(value, dict):
            raise RunFileError(f"{self.path.name}: the config is damaged (not a JSON object)")
        return value

    @cached_property
    def config(self) -> Any:
        """The run's :class:`~driftscope.config.RunConfig` (schema-1 configs migrated on load).

        Read as stored: dataset, model and algorithm names this process has never registered
        (a user's own objects) stay strings, and an unknown algorithm's params a dict."""
        from driftscope.config import RunConfig
        from driftscope.registry import names_unchecked

        try:
            with names_unchecked():
                return RunConfig.from_dict(self.config_dict, source=f"{self.path.name} config")
        except DriftscopeError as err:
            raise RunFileError(f"{self.path.name}: the stored config is invalid ({err})") from None

    @cached_property
    def environment(self) -> dict[str, Any]:
        try:
            value = json.loads(self._attr(schema.ATTR_ENVIRONMENT, "{}"))
        except (TypeError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    # ------------------------------------------------------------------ status
    @property
    def status(self) -> str:
        """As written: running | complete | diverged | interrupted | failed."""
        ds = self._get(schema.STATUS)
        if self._file.swmr_mode:
            with contextlib.suppress(Exception):
                ds.refresh()
        value = self._read(schema.STATUS)
        status = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        if status not in schema.STATUSES:  # a changed byte: no status is one byte from another
            raise RunFileError(
                f"{self.path.name}: {schema.STATUS} is damaged ({status!r} is none of "
                f"{', '.join(schema.STATUSES)}); copy the file again or re-run"
            )
        return status

    @property
    def status_message(self) -> str:
        try:
            value = self._read(schema.STATUS_MESSAGE)
        except RunFileError:
            return ""
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value)

    @property
    def status_text(self) -> str:
        """The status for people: "running (writer not alive)" for a killed run."""
        try:
            status = self.status
        except DriftscopeError:
            return "unknown (status missing)"
        if status == schema.RUNNING and not self.live:
            return "running (writer not alive: killed or crashed)"
        return status
