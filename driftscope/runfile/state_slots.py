"""The resume state in the run file: two slots per name, round r's state in slot r % 2.

``state/<name>`` (2, *shape) holds the state by name and ``state/round`` (2,) the round whose end
state each slot holds (-1: none). A round's state overwrites the slot of its parity and then
``state/round`` says which round that slot holds, all before the round's commit marker: a round
killed while its state is written leaves the previous committed round's state whole in the other
slot. :class:`~driftscope.runfile.writer.RunWriter` declares and writes the slots;
:func:`driftscope.runfile.resume.reopen_for_resume` reads the last committed round's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from driftscope.engine.events import StateRows
from driftscope.errors import RunFileError
from driftscope.runfile import schema

ROW_CHUNK_BYTES = 1 << 20  # the most bytes of a chunk of per-client rows


class StateSlots:
    """The two resume-state slots of an open run file: :meth:`declare` before SWMR,
    :meth:`write` each round."""

    def __init__(self, file: h5py.File) -> None:
        self.file = file
        self._handles: dict[str, h5py.Dataset] = {}

    def declare(self, shapes: Mapping[str, Any]) -> None:
        """Create ``state/<name>`` (2, *shape) for each name and ``state/round`` (2,).

        ``shapes``: ``{name: (shape, dtype)}`` (or ``{name: shape}`` for float32)."""
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
                kwargs = {"chunks": _chunks(shape, dtype), "fletcher32": schema.CHECKSUM}
            f.create_dataset(schema.state_path(name), shape=full, dtype=dtype, **kwargs)

    def write(self, round: int, state: Mapping[str, Any]) -> None:
        """Overwrite slot ``round % 2``, then say which round it holds; the other slot keeps the
        previous committed round's state until this round's commit marker is written.

        ``state``: ``{name: array}`` (numpy or torch), or :class:`StateRows` for only the rows of a
        per-client table changed since the slot's round."""
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

    def _ds(self, path: str) -> h5py.Dataset:
        handle = self._handles.get(path)
        if handle is None:
            handle = self._handles[path] = self.file[path]
        return handle


def _chunks(shape: tuple[int, ...], dtype: np.dtype[Any]) -> tuple[int, ...] | bool:
    """One slot per chunk; a table of per-client rows (c_clients) in chunks of whole rows of at
    most :data:`ROW_CHUNK_BYTES`, so writing the rows changed in a round touches only their
    chunks."""
    if not shape:
        return True
    if len(shape) < 2:
        return (1, *shape)
    row = int(np.prod(shape[1:])) * dtype.itemsize
    return (1, max(1, min(shape[0], ROW_CHUNK_BYTES // max(1, row))), *shape[1:])
