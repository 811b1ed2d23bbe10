"""A per-client state table: one float32 row per client, apart from the arithmetic done on it.

The rows (N, width) are held in memory (on the training device) or, when they do not fit the
memory budget, in a float32 scratch file (a numpy memmap in a temporary directory, deleted with
the table) of which only the rows a round uses are read and written. The table also keeps, per
client, the norms of some column segments (what the recorder stores; kept up to date per written
row, so reading them never passes over all N x width values) and which rows changed in the last
two rounds (what the run file's checkpoint rewrites). Nothing here imports torch at module level.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

MIB = 1 << 20


class ClientTable:
    """``rows`` (N, width) float32, in memory or in a scratch file; per-client segment norms;
    the rows changed in the last two rounds (None: every row, after a load or a reset)."""

    def __init__(self, num_clients: int, width: int, in_memory: bool) -> None:
        import numpy as np
        import torch

        self.num_clients = num_clients
        self._scratch: tempfile.TemporaryDirectory | None = None
        self.memmap: Any = None  # the scratch file's numpy memmap (None in memory)
        if in_memory:
            self.rows = torch.zeros(num_clients, width)
        else:
            self._scratch = tempfile.TemporaryDirectory(prefix="driftscope-state-")
            mm = np.lib.format.open_memmap(
                Path(self._scratch.name) / "c_clients.npy",
                mode="w+",
                dtype=np.float32,
                shape=(num_clients, width),
            )
            self.rows = torch.from_numpy(mm)  # a view of the file's pages, zero-filled
            self.memmap = mm
        self.segments: list[slice] = []  # the column segments whose norms are kept
        self.norms = torch.zeros(num_clients, 0)  # (N, segments)
        self._changed: list[set[int] | None] = [set(), set()]  # rows changed: last, this round

    @property
    def in_memory(self) -> bool:
        """Whether the rows are held in memory (else in the scratch file)."""
        return self._scratch is None

    @property
    def width(self) -> int:
        return int(self.rows.shape[1])

    def to(self, device: Any) -> None:
        """Moves the norms, and the rows when in memory, to ``device``."""
        self.norms = self.norms.to(device)
        if self.in_memory:
            self.rows = self.rows.to(device)

    def set_segments(self, segments: Sequence[slice], keep_changes: bool = True) -> None:
        """Keep the norms of these column segments; recomputes them over every row. Unless
        ``keep_changes``, every row counts as changed at the next two commits."""
        import torch

        self.segments = list(segments)
        norms = torch.zeros(self.num_clients, len(self.segments))
        for k, cols in enumerate(self.segments):
            norms[:, k] = self.rows[:, cols].float().norm(dim=1).cpu()
        self.norms = norms.to(self.norms.device)
        if not keep_changes:
            self._changed = [None, None]

    def wrote(self, client: int, norms: torch.Tensor) -> None:
        """Row ``client`` was written; ``norms`` are its segments' norms."""
        self.norms[client] = norms
        changed = self._changed[1]
        if changed is not None:
            changed.add(client)

    def segment_norms(self, row: torch.Tensor) -> torch.Tensor:
        """The kept segments' norms of one row (width,)."""
        import torch

        return torch.stack([row[cols].norm() for cols in self.segments])

    def zero_columns(self, cols: slice) -> None:
        """Columns ``cols`` of every row = 0 (in the scratch file: one strided pass)."""
        self.rows[:, cols] = 0

    def changed_rows(self) -> np.ndarray | None:
        """Rows changed in the last two rounds (None: every row); then a new round begins (the
        writer's slot for the next round held the state of two rounds before)."""
        import numpy as np

        last, now = self._changed
        self._changed = [now, set()]
        if last is None or now is None:
            return None
        return np.array(sorted(last | now), dtype=np.int64)

    def load(self, rows: Any) -> None:
        """rows = ``rows`` (N, width; a tensor or an array, e.g. an HDF5 dataset), copied in
        bounded blocks with the kept norms; every row counts as changed at the next commit."""
        import torch

        step = max(1, (64 * MIB) // max(1, 4 * self.width))
        for a in range(0, self.num_clients, step):
            block = torch.as_tensor(rows[a : a + step]).detach()
            self.rows[a : a + step] = block.to(self.rows.device, self.rows.dtype)
            dev_block = block.to(self.norms.device, torch.float32)
            for k, cols in enumerate(self.segments):
                self.norms[a : a + step, k] = dev_block[:, cols].norm(dim=1)
        self._changed = [None, set()]
        self.release_pages()

    def snapshot(self) -> torch.Tensor:
        """The rows: a copy when in memory; the live scratch-file tensor otherwise (copying it
        would need the memory the budget keeps free)."""
        return self.rows.clone() if self.in_memory else self.rows

    def release_pages(self) -> None:
        """Unmap the scratch file's pages from this process once a round is done (no-op in memory).

        Every row a round touched stays mapped, so the process's file-backed RSS would grow towards
        the whole file as more clients are sampled. After ``madvise(MADV_DONTNEED)`` on the shared
        mapping the rows stay in the kernel's page cache (dirty ones are written back, never lost)
        and the next access maps them again, so the process maps only what a round touches."""
        import mmap

        base = getattr(self.memmap, "base", None) if self._scratch is not None else None
        if isinstance(base, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
            base.madvise(mmap.MADV_DONTNEED)
