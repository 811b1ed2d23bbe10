"""Small HDF5 helpers of the run-file writer: growable labelled datasets and the environment record.

Torch-free. Paths, labels and dtypes come from :mod:`driftscope.runfile.schema`.
"""

from __future__ import annotations

import functools
import platform
import sys
from typing import Any

import h5py
import numpy as np

from driftscope.runfile import schema

# The run writer's chunk cache per open dataset (h5py.File's rdcc_nbytes, rdcc_nslots). HDF5 2.0
# raised the default from 1 MiB / 521 slots to 8 MiB / 8191 slots, and the writer and the recorder
# keep every dataset open for the whole run: each then held up to 8 MiB of chunks it had already
# written, filling over hundreds of rounds (benchmarks/many_clients.py). 1 MiB holds the
# one chunk a dataset appends to (growable's multi-row chunks are at most 1 MiB), so no append
# reads a chunk back from the file.
CHUNK_CACHE: dict[str, int] = {"rdcc_nbytes": 1 << 20, "rdcc_nslots": 521}


def environment() -> dict[str, Any]:
    """Versions and machine facts stored with every run (torch's, if torch is imported)."""
    import driftscope

    env: dict[str, Any] = {
        "driftscope": driftscope.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
    return env


def growable(
    group: h5py.Group,
    name: str,
    shape: tuple[int, ...],
    dtype: Any,
    labels: tuple[str, ...],
    chunks: tuple[int, ...] | None = None,
    fill: Any = None,
    fletcher32: bool | None = None,
) -> h5py.Dataset:
    """A dataset shaped (0, *shape) that grows along its first (round) axis, axes labelled, with a
    fletcher32 checksum on every chunk (``fletcher32=False``: none; default ``schema.CHECKSUM``)."""
    kwargs: dict[str, Any] = {}
    if fill is not None:
        kwargs["fillvalue"] = fill
    ds = group.create_dataset(
        name,
        shape=(0, *shape),
        maxshape=(None, *shape),
        dtype=dtype,
        chunks=chunks or (max(1, min(64, 2**20 // max(1, int(np.prod(shape)) * 8))), *shape),
        fletcher32=schema.CHECKSUM if fletcher32 is None else fletcher32,
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


# ------------------------------------------------------------------------- direct chunk writes
CHUNK_BYTES = 1 << 20  # about this much per chunk of stored updates


def chunk_columns(numel: int, max_cols: int) -> int:
    """Columns per chunk of an updates dataset: at most ``max_cols``, splitting ``numel`` evenly.

    HDF5 allocates whole chunks, so a last chunk holding a few columns of a ``max_cols``-wide
    chunk would waste most of it: 36,928 values in chunks of 26,214 store 52,428.
    """
    max_cols = max(1, max_cols)
    pieces = -(-numel // max_cols)  # ceil
    return max(1, -(-numel // pieces))


def update_chunks(clients: int, numel: int, itemsize: int) -> tuple[int, int, int]:
    """Chunks of an updates dataset (rows, S, numel), about 1 MiB each: one client's row (its
    columns split evenly) when a row holds at least a quarter of that, so that each chunk is
    written straight from the update matrix; else all S clients' columns, gathered."""
    if numel * itemsize >= CHUNK_BYTES // 4:
        return (1, 1, chunk_columns(numel, CHUNK_BYTES // itemsize))
    return (1, clients, chunk_columns(numel, CHUNK_BYTES // (itemsize * clients)))


FLETCHER_MOD = 65535  # HDF5's fletcher32 sums 16-bit words modulo 2**16 - 1
_MAX_EXACT_ROWS = 30  # rows of 65535 words whose column sums keep the weighted sum below 2**53


def fletcher32(chunks: np.ndarray) -> np.ndarray:
    """HDF5's fletcher32 checksum (``H5_checksum_fletcher32``) of each row of ``chunks``.

    ``chunks``: (k, nbytes) uint8, each row contiguous, nbytes even. Returns (k,) uint32, equal
    to what HDF5's filter computes and appends (little-endian) to a chunk of those bytes.

    HDF5 sums big-endian 16-bit words W_j: sum1 = sum(W_j), sum2 = sum((n - j) W_j), both modulo
    65535 (ones' complement: a sum is 0 only for all-zero data, else in 1..65535). Because
    2**16 = 1 (mod 65535), byteswapping a word multiplies it by 256, and the weights j only matter
    modulo 65535, so with the little-endian words w reshaped into rows of 65535 the sums follow
    from the column sums c_i of that matrix: sum(w) = sum(c_i), sum(j w_j) = sum(i c_i) (mod
    65535). One pass of vectorised adds over the data, then a (k, 65535) x (65535, 2) product in
    float64 that is exact (every partial sum is an integer below 2**53).
    """
    k, nbytes = chunks.shape
    if nbytes % 2:
        raise ValueError("fletcher32 here needs an even number of bytes per chunk")
    words = chunks.view("<u2")  # (k, n)
    n = nbytes // 2
    p = FLETCHER_MOD
    rows, tail = divmod(n, p)
    if rows == 0:
        cols = words.astype(np.float64)
        width = n
    else:
        body = words[:, : rows * p].reshape(k, rows, p)
        col = np.add.reduce(body, axis=1, dtype=np.uint32)  # (k, p), exact: rows < 65537
        if tail:
            col[:, :tail] += words[:, rows * p :]
        if rows + 1 > _MAX_EXACT_ROWS:  # a chunk above ~4 MiB: keep the products exact
            nonzero = col.any(axis=1)
            col %= p
        cols = col.astype(np.float64)
        width = p
    sums = cols @ _weights(width)  # (k, 2): exact integers
    total = sums[:, 0].astype(np.uint64)  # sum of the words, exact
    weighted = sums[:, 1].astype(np.uint64) % p  # sum(j w_j) mod p
    a = total % p
    s1 = (256 * a) % p
    s2 = (256 * (((n % p) * a + p * p - weighted) % p)) % p
    s1 = np.where(s1 == 0, p, s1)
    s2 = np.where(s2 == 0, p, s2)
    zero = total == 0 if rows + 1 <= _MAX_EXACT_ROWS else ~nonzero
    s1[zero] = 0
    s2[zero] = 0
    return ((s2 << np.uint64(16)) | s1).astype(np.uint32)


@functools.lru_cache(maxsize=4)
def _weights(width: int) -> np.ndarray:
    """(width, 2) float64: ones, and each word's position in its row of 65535."""
    weights = np.empty((width, 2), np.float64)
    weights[:, 0] = 1.0
    weights[:, 1] = np.arange(width, dtype=np.float64)
    weights.flags.writeable = False
    return weights


class ChunkWriter:
    """Appends rows to (rows, S, numel) datasets chunked ``(1, S, cols)`` or ``(1, 1, cols)`` by
    writing whole chunks (``H5Dwrite_chunk``) instead of going through HDF5's chunk cache.

    Chunks of one client's row, ``(1, 1, cols)`` (the recorder's choice for rows of 256 KiB and
    more), are written straight from the caller's array: no copy in user space, as a plain
    ``write`` of the row. Chunks across clients, ``(1, S, cols)``, are gathered into one reused
    buffer first (one copy; small parameters, and run files written before). An edge chunk is
    padded with zeros, HDF5's fill value.

    :meth:`append` returns the CRC-32 of each client's row as stored (what
    :func:`driftscope.runfile.schema.row_crc32` gives), computed piece by piece, each piece right after its
    write, while the bytes are still in the CPU cache. A dataset
    with HDF5's fletcher32 filter (updates of a file written before the CRC) gets the filter's
    checksum computed here (:func:`fletcher32`) and appended to each chunk, so HDF5 still checks
    it. Any other chunking or filter is written with :func:`append`.
    """

    def __init__(self) -> None:
        self._buf = np.empty(0, np.uint8)
        # dataset -> (whole chunks?, fletcher32?, dtype, chunks): asking HDF5 costs ~0.1 ms
        self._plans: dict[str, tuple[bool, bool, np.dtype, tuple[int, ...]]] = {}

    def _scratch(self, nbytes: int) -> np.ndarray:
        if self._buf.nbytes < nbytes:
            self._buf = np.empty(nbytes, np.uint8)
        return self._buf[:nbytes]

    def append(self, ds: h5py.Dataset, value: Any) -> np.ndarray:
        """Grow ``ds`` by one row and write ``value`` (shape ``ds.shape[1:]``) into it; returns
        the CRC-32 of each of its rows as stored, (S,) uint32 (:func:`schema.row_crc32`)."""
        plan = self._plans.get(ds.name)
        if plan is None:
            plan = self._plans[ds.name] = (_direct(ds), bool(ds.fletcher32), ds.dtype, ds.chunks)
        direct, fletcher, dtype, chunks = plan
        value = np.asarray(value)
        if value.dtype != dtype:
            value = value.astype(dtype)
        if not direct:
            append(ds, value)
            return schema.row_crc32(value.reshape(-1, value.shape[-1]))
        n = ds.shape[0]
        ds.resize(n + 1, axis=0)
        if chunks[1] == 1:
            sums = self._by_client(ds, n, value, fletcher, chunks[-1])
        else:
            sums = self._across_clients(ds, n, value, fletcher, chunks[-1])
        return np.array(sums, np.uint32)

    def _by_client(
        self, ds: h5py.Dataset, n: int, rows: np.ndarray, fletcher: bool, cols: int
    ) -> list[int]:
        numel = rows.shape[1]
        sums = []
        for i, row in enumerate(rows):
            row = np.ascontiguousarray(row)  # a no-op for rows of the update matrix
            h = 0
            for c0 in range(0, numel, cols):
                piece = row[c0 : c0 + cols]
                if len(piece) < cols or fletcher:
                    buf = self._pad(piece, cols, fletcher)
                    ds.id.write_direct_chunk((n, i, c0), buf)
                else:
                    ds.id.write_direct_chunk((n, i, c0), piece)
                # after the write: the piece is in the CPU cache now
                h = schema.crc32(piece.view(np.uint8), h)
            sums.append(h)
        return sums

    def _pad(self, piece: np.ndarray, cols: int, fletcher: bool) -> np.ndarray:
        nbytes = cols * piece.itemsize
        buf = self._scratch(nbytes + (4 if fletcher else 0))
        data = buf[:nbytes].view(piece.dtype)
        data[: len(piece)] = piece
        data[len(piece) :] = 0  # the fill value HDF5 pads an edge chunk with
        if fletcher:
            buf[nbytes:] = fletcher32(buf[None, :nbytes]).astype("<u4").view(np.uint8)
        return buf

    def _across_clients(
        self, ds: h5py.Dataset, n: int, rows: np.ndarray, fletcher: bool, cols: int
    ) -> list[int]:
        s, numel = rows.shape
        item = rows.dtype.itemsize
        cb = s * cols * item
        buf = self._scratch(cb + (4 if fletcher else 0))
        chunk = buf[:cb].view(rows.dtype).reshape(s, cols)
        chunk_bytes = buf[:cb].reshape(s, cols * item)
        sums = [0] * s
        for c0 in range(0, numel, cols):
            width = min(cols, numel - c0)
            np.copyto(chunk[:, :width], rows[:, c0 : c0 + width])
            if width < cols:
                chunk[:, width:] = 0  # the fill value HDF5 pads an edge chunk with
            if fletcher:
                buf[cb:] = fletcher32(buf[None, :cb]).astype("<u4").view(np.uint8)
            ds.id.write_direct_chunk((n, 0, c0), buf)
            for i in range(s):
                sums[i] = schema.crc32(chunk_bytes[i, : width * item], sums[i])
        return sums


def _direct(ds: h5py.Dataset) -> bool:
    """Whether ``ds`` can take whole-chunk writes here: (rows, S, numel) chunked (1, S or 1, cols),
    no filter but (optionally) fletcher32, a little-endian numeric dtype."""
    chunks = ds.chunks
    if chunks is None or ds.ndim != 3 or chunks[0] != 1 or chunks[1] not in (1, ds.shape[1]):
        return False
    if ds.compression is not None or ds.shuffle or ds.scaleoffset is not None:
        return False
    order = ds.dtype.byteorder
    little = order == "<" or (order in "=|" and sys.byteorder == "little")
    return ds.dtype.kind in "fiu" and little  # the chunk bytes are numpy's, as in memory
