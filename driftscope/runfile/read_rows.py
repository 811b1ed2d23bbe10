"""Reading a few rows of a run's growing datasets at a time: :class:`Rows`. Torch-free.

The accessors of :class:`~driftscope.runfile.reader.Run` read whole records (every round of a
layer's Gram matrices) and look each dataset up by path on every call. A reader that follows a
live run round by round (the live logger) needs only the rows committed since its last read:
:class:`Rows` looks each dataset up once, through the Run's checked :meth:`Run._dataset`, keeps
the handle, refreshes it (SWMR) before each read and reads only the rows asked for; a missing or
damaged dataset is the same one-line :class:`~driftscope.errors.RunFileError` as the Run's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import h5py
import numpy as np

from driftscope.errors import RunFileError
from driftscope.runfile.h5open import one_line

if TYPE_CHECKING:
    from driftscope.runfile.reader import Run

__all__ = ["Rows"]


class Rows:
    """Rows of ``run``'s per-round datasets (``metrics/...``, ``records/...``), read by slice."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self._swmr = bool(run.file.swmr_mode)
        self._handles: dict[str, h5py.Dataset] = {}

    def has(self, name: str) -> bool:
        """Whether the file has the dataset ``name`` (the file's layout is fixed while it is live)."""
        return self.run._has(name)

    def _handle(self, name: str) -> h5py.Dataset:
        ds = self._handles.get(name)
        if ds is None:
            ds = self._handles[name] = self.run._dataset(name)  # checked: kind and axes
        if self._swmr:
            try:
                ds.refresh()  # see rows the writer appended since the last read
            except (OSError, ValueError, RuntimeError) as err:
                raise RunFileError(
                    f"{self.run.path.name}: {name} is damaged ({one_line(err)}); the rest of the "
                    "file may still be readable"
                ) from None
        return ds

    def length(self, name: str) -> int:
        """The rows of ``name`` now (a live writer appends more)."""
        return int(self._handle(name).shape[0])

    def read(self, name: str, rows: slice) -> np.ndarray:
        """Rows ``rows`` (start and stop given) of ``name``; fewer rows than asked is damage."""
        ds = self._handle(name)
        try:
            data = np.asarray(ds[rows])
        except (OSError, ValueError, RuntimeError, TypeError, IndexError) as err:
            raise RunFileError(
                f"{self.run.path.name}: {name} is damaged ({one_line(err)}); its checksum or "
                "layout does not match: copy the file again or re-run"
            ) from None
        want = rows.stop - rows.start
        if data.shape[0] != want:
            raise RunFileError(
                f"{self.run.path.name}: {name} ends before row {rows.stop - 1} ({data.shape[0]} "
                f"of rows {rows.start}-{rows.stop - 1} read): it is damaged; copy the file again "
                "or re-run"
            )
        return data
