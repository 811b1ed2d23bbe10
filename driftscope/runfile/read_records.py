"""The record accessors of :class:`driftscope.runfile.reader.Run`: recorded rounds, Gram matrices, stored
updates, probe CKA, control-variate norms, resume state and the file's description.

A mixin so that ``reader.py`` stays readable; every read goes through the Run's checked
``_read``. Torch-free.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import pandas as pd

from driftscope.errors import DriftscopeError, RunFileError
from driftscope.models.layout import LayerInfo, ParamInfo
from driftscope.runfile import schema
from driftscope.runfile.h5open import one_line


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn an inconsistency between datasets (shapes that do not fit together, values of the
    wrong kind) into a one-line RunFileError naming the call."""

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except DriftscopeError:
            raise
        except (ValueError, IndexError, TypeError, KeyError, OSError, RuntimeError) as err:
            raise RunFileError(
                f"{self.path.name} is damaged: {fn.__name__} failed ({one_line(err)})"
            ) from None

    return wrapper


class RecordsMixin:
    """Per-layer records of a run (mixed into :class:`~driftscope.runfile.reader.Run`)."""

    if TYPE_CHECKING:
        path: Path
        _file: h5py.File

        @property
        def params(self) -> tuple[ParamInfo, ...]: ...

        @property
        def num_rounds(self) -> int: ...
        def _read(self, name: str, sel: Any = ()) -> Any: ...
        def _read_rows(self, name: str, n: int) -> Any: ...
        def _has(self, name: str) -> bool: ...
        def _get(self, name: str) -> Any: ...
        def _attr(self, name: str, default: Any = None, obj: str = "/") -> Any: ...
        def layer(self, name: str) -> LayerInfo: ...
        def param(self, name: str) -> ParamInfo: ...

    # ------------------------------------------------------------------ records
    @property
    def recorded(self) -> bool:
        """Whether the run has per-layer records (False for a ``--no-record`` run)."""
        return self._has(schema.RECORD_ROUND)

    @_guarded
    def _committed(self, index: str) -> np.ndarray:
        """Rows of a record index whose round is committed (<= last committed round)."""
        if not self._has(index):
            return np.zeros(0, dtype=np.int64)
        rounds = np.asarray(self._read(index))
        n = self.num_rounds
        last = int(self._read(schema.METRICS_ROUND, n - 1)) if n else -1
        return rounds[rounds <= last]

    @property
    def rounds(self) -> np.ndarray:
        """Rounds with per-layer records (Gram matrices), in order."""
        return self._committed(schema.RECORD_ROUND)

    @property
    def update_rounds(self) -> np.ndarray:
        """Rounds whose full client updates are stored."""
        return self._committed(schema.UPDATE_ROUND)

    @property
    def cka_rounds(self) -> np.ndarray:
        return self._committed(schema.CKA_ROUND)

    @property
    @_guarded
    def cka_skipped(self) -> dict[str, str]:
        """Layers that probe CKA could not measure, with the reason (empty: every layer)."""
        return dict(json.loads(self._attr(schema.CKA_SKIPPED_ATTR, "{}", schema.RECORDS)))

    @property
    @_guarded
    def participants(self) -> np.ndarray:
        """(recorded rounds, S) client ids in the row order of every record."""
        return self._read(schema.RECORD_CLIENTS, slice(0, len(self.rounds)))

    @property
    @_guarded
    def probe_index(self) -> np.ndarray:
        """Test-set rows of the CKA probe set (empty without probe CKA)."""
        if not self._has(schema.PROBE_INDEX):
            return np.zeros(0, dtype=np.int64)
        return np.asarray(self._read(schema.PROBE_INDEX))

    def _row(self, rounds: np.ndarray, round: int, what: str) -> int:
        hits = np.flatnonzero(rounds == round)
        if not len(hits):
            shown = ", ".join(str(int(r)) for r in rounds[:10]) + (
                " ..." if len(rounds) > 10 else ""
            )
            raise RunFileError(
                f"round {round} has no {what} in {self.path.name}; recorded: {shown or 'none'}"
            )
        return int(hits[0])

    def _rows(self, path: str, n: int, what: str) -> np.ndarray:
        data = self._read_rows(path, n)
        if data.shape[0] < n:
            raise RunFileError(
                f"{self.path.name}: {path} has {data.shape[0]} rows for {n} {what}: it is damaged"
            )
        return data

    @_guarded
    def gram(self, name: str, round: int | None = None) -> np.ndarray:
        """Gram matrices of client updates for a parameter or a layer (sum of its parameters'):
        (rounds, S, S), or (S, S) for one ``round``."""
        names = self._names(name)
        if not self.recorded:
            raise RunFileError(
                f"{self.path.name} has no per-layer records (recording was off): re-run without "
                "--no-record"
            )
        n = len(self.rounds)
        blocks = [self._rows(schema.gram_path(p), n, "recorded rounds") for p in names]
        try:
            out = np.asarray(sum(blocks))
        except ValueError:
            raise RunFileError(
                f"{self.path.name}: the Gram matrices of '{name}' differ in shape"
            ) from None
        if round is None:
            return out
        return out[self._row(self.rounds, round, "records")]

    @property
    def has_global_weights(self) -> bool:
        """Whether the run recorded the global model's ``||w||^2`` and ``<w, d_i>`` (L-DAWA's
        angle); False for files written before they were recorded."""
        return self.recorded and self._has(schema.GLOBAL_WEIGHTS)

    @_guarded
    def global_weights(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """For a parameter or a layer (sums over its parameters): ``||w||^2`` (rounds,) of the
        global model each recorded round started from, and ``<w, d_i>`` (rounds, S) with each
        client's update, rows as in :meth:`gram`."""
        names = self._names(name)
        if not self.has_global_weights:
            raise RunFileError(
                f"{self.path.name} has no global-model norms (records/global): it was recorded "
                "before driftscope stored them, or with recording off; re-run to record them"
            )
        n = len(self.rounds)
        sq = sum(self._rows(schema.global_sq_norm_path(p), n, "recorded rounds") for p in names)
        dot = sum(self._rows(schema.global_dot_path(p), n, "recorded rounds") for p in names)
        return np.asarray(sq, dtype=np.float64), np.asarray(dot, dtype=np.float64)

    def has_global_params(self, name: str) -> bool:
        """Whether the global value of parameter ``name`` is stored (LoRA factors only)."""
        return self._has(schema.global_params_path(name))

    @_guarded
    def global_params(self, name: str) -> np.ndarray:
        """The global value of a stored LoRA factor (a parameter) that each stored-update round
        started from, shaped (update rounds, *param shape), rows as in :meth:`updates`."""
        path = schema.global_params_path(name)
        if not self._has(path):
            raise RunFileError(
                f"{self.path.name} has no global value of '{name}' (records/global_params): only "
                "LoRA factors whose updates are stored have one, in runs recorded since"
            )
        block = self._rows(path, len(self.update_rounds), "update rounds")
        return block.reshape(block.shape[0], *self.param(name).shape)

    @_guarded
    def updates(self, name: str, round: int | None = None) -> np.ndarray:
        """Stored client updates of a parameter, shaped (rounds, S, *param shape), or of a layer,
        shaped (rounds, S, layer numel) with its parameters concatenated. ``round`` selects one."""
        names = self._names(name)
        missing = [p for p in names if not self._has(schema.updates_path(p))]
        if missing:
            raise RunFileError(
                f"updates of '{missing[0]}' were not stored in {self.path.name} "
                "(record.update_layers): use gram() for drift metrics"
            )
        n = len(self.update_rounds)
        if round is None:
            rows = slice(0, n)
            blocks = [self._rows(schema.updates_path(p), n, "update rounds") for p in names]
        else:
            row = self._row(self.update_rounds, round, "stored updates")
            rows = slice(row, row + 1)
            blocks = [self._read(schema.updates_path(p), rows) for p in names]
        for p, block in zip(names, blocks, strict=True):
            self._check_crc(p, block, rows)
        try:
            if len(names) == 1 and names[0] == name:
                shape = self.param(name).shape
                out = blocks[0].reshape(*blocks[0].shape[:2], *shape)
            else:
                out = np.concatenate(blocks, axis=-1)
        except ValueError as err:
            raise RunFileError(
                f"{self.path.name}: the stored updates of '{name}' are damaged ({err})"
            ) from None
        return out[0] if round is not None else out

    def _check_crc(self, param: str, block: np.ndarray, rows: slice) -> None:
        """Check the rows of ``param``'s stored updates just read against their CRC-32s
        (``records/update_crc``); files written before the CRC rely on HDF5's fletcher32 filter."""
        path = schema.updates_path(param)
        if self._attr(schema.UPDATE_CHECKSUM_ATTR, None, path) != schema.UPDATE_CHECKSUM_CRC32:
            return
        names = self._attr(schema.UPDATE_CRC_PARAMS, "[]", schema.UPDATE_CRC)
        try:
            column = json.loads(names).index(param)
        except ValueError:
            raise RunFileError(
                f"{self.path.name}: {schema.UPDATE_CRC} does not list '{param}': it is damaged"
            ) from None
        stored = np.asarray(self._read(schema.UPDATE_CRC, (rows, column)))
        flat = block.reshape(block.shape[0], block.shape[1], -1)
        if stored.shape != flat.shape[:2]:
            raise RunFileError(
                f"{self.path.name}: {schema.UPDATE_CRC} has {stored.shape} values for updates "
                f"{flat.shape[:2]}: it is damaged"
            )
        for k in range(flat.shape[0]):
            bad = np.flatnonzero(schema.row_crc32(flat[k]) != stored[k])
            if len(bad):
                update = self.update_rounds[(rows.start or 0) + k]
                raise RunFileError(
                    f"{self.path.name}: {path} is damaged (CRC-32 mismatch in round {update}, "
                    f"client row {bad[0]}); copy the file again or re-run"
                )

    def has_cka(self, layer: str, kind: str = "linear") -> bool:
        """Whether probe CKA of ``kind`` was recorded for the layer named ``layer``."""
        return self._has(schema.CKA) and self._has(schema.cka_path(kind, layer))

    @_guarded
    def cka(self, layer: str, kind: str = "linear", round: int | None = None) -> np.ndarray:
        """Pairwise CKA of the S client models and the global model (last index) on the probe set:
        (cka rounds, S+1, S+1), or (S+1, S+1) for one ``round``."""
        if not self._has(schema.CKA):
            raise RunFileError(f"{self.path.name} has no probe CKA (recorded with probe_size 0)")
        if kind not in schema.CKA_KINDS:
            raise RunFileError(
                f"unknown CKA kind '{kind}': choose one of {', '.join(schema.CKA_KINDS)}"
            )
        ly = self.layer(layer)
        skipped = self.cka_skipped.get(ly.name)
        if skipped is not None:
            raise RunFileError(f"layer '{ly.name}' has no probe CKA: {skipped}")
        n = len(self.cka_rounds)
        data = self._rows(schema.cka_path(kind, ly.name), n, "CKA rounds")
        if round is None:
            return data
        return data[self._row(self.cka_rounds, round, "CKA")]

    @_guarded
    def control_norms(self, param: str) -> np.ndarray:
        """(rounds, 1 + clients): ||c|| then each ||c_i|| after each recorded round."""
        path = schema.control_norm_path(param)
        if not self._has(path):
            raise RunFileError(f"no control-variate norms for '{param}' in {self.path.name}")
        return self._rows(path, len(self.rounds), "recorded rounds")

    def control_norm_names(self) -> list[str]:
        """Parameters (or state names) with recorded control-variate norms."""
        if not self._has(schema.CONTROL_NORM):
            return []
        return list(self._get(schema.CONTROL_NORM).keys())

    def _names(self, name: str) -> tuple[str, ...]:
        if name in {p.name for p in self.params}:
            return (name,)
        return self.layer(name).params

    # ------------------------------------------------------------------ resume state
    @_guarded
    def resume_state(self) -> tuple[int, dict[str, np.ndarray]] | None:
        """(round, {name: array}) of the last committed round's resume state, or None if the file
        keeps none (schema 1, or no round committed with state)."""
        if not self._has(schema.STATE_ROUND) or not self.num_rounds:
            return None
        last = int(self._read(schema.METRICS_ROUND, self.num_rounds - 1))
        slots = np.asarray(self._read(schema.STATE_ROUND))
        hits = np.flatnonzero(slots == last)
        if not len(hits):
            return None
        slot = int(hits[0])
        names: list[str] = []
        self._get(schema.STATE).visititems(
            lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None
        )
        return last, {
            n: self._read(schema.state_path(n), slot)
            for n in names
            if schema.state_path(n) != schema.STATE_ROUND
        }

    # ------------------------------------------------------------------ description
    @cached_property
    def records_policy(self) -> dict[str, int]:
        """The recording schedule: every, updates_every, cka_every, probe_size (empty: no records)."""
        if not self._has(schema.RECORDS):
            return {}
        out = {}
        for k in schema.RECORD_POLICY_ATTRS:
            value = self._attr(k, None, obj=schema.RECORDS)
            if value is not None:
                with contextlib.suppress(TypeError, ValueError):
                    out[k] = int(value)
        return out

    def missing(self) -> list[str]:
        """Required parts of the file that are missing (empty for a whole run)."""
        required = [
            schema.STATUS,
            *(schema.param_field(f) for f in schema.PARAM_FIELDS if f != "numel"),
            *(schema.layer_field(f) for f in schema.LAYER_FIELDS),
            schema.LABEL_HISTOGRAM,
            schema.CLIENT_SIZE,
            schema.METRICS_ROUND,
            *(schema.metric_path(m) for m in schema.METRIC_NAMES),
            *(schema.client_metric_path(m) for m in schema.CLIENT_METRICS),
        ]
        if self.recorded:
            required.append(schema.RECORD_CLIENTS)
            if not self._has(schema.GRAM):
                required.append(schema.GRAM)  # the whole group, not each of its datasets
            else:
                with contextlib.suppress(DriftscopeError):
                    required += [schema.gram_path(p.name) for p in self.params]
        return [p for p in required if not self._has(p)]

    def describe_datasets(self) -> pd.DataFrame:
        """Every dataset in the file: path, shape, dtype, stored bytes."""
        rows = []

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                try:
                    size = int(obj.id.get_storage_size())
                except Exception:
                    size = 0
                rows.append(
                    {
                        "dataset": name,
                        "shape": tuple(obj.shape or ()),
                        "dtype": str(obj.dtype),
                        "bytes": size,
                    }
                )

        try:
            self._file.visititems(visit)
        except (OSError, KeyError, ValueError, RuntimeError):
            pass  # a damaged group: list what was reached
        return pd.DataFrame(rows, columns=["dataset", "shape", "dtype", "bytes"])
