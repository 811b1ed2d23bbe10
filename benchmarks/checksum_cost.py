"""What checksums cost the run file's update writes, design by design, against a plain write.

Writes the same rounds of client updates (S clients x numel float32 values per round) five ways,
alternating the arms (A B C D E, E D C B A, ...), and prints the median time of each, its
throughput and its ratio to the plain write, with the load average before and after:

* ``plain``: ``write`` of each client's row straight from the update matrix, flush per round;
* ``hdf5``: ``ds[n] = block`` through HDF5 into chunks (1, S, cols), no filter;
* ``fletcher32``: the same with HDF5's fletcher32 filter (the run file's updates until now);
* ``numpy_fletcher32``: whole chunks (1, S, cols) written with ``H5Dwrite_chunk``, the filter's
  checksum computed in numpy (``h5write.fletcher32``): any HDF5 reader still checks it;
* ``crc32`` (the run file's choice): whole chunks as ``Recorder`` lays them out
  (``h5write.update_chunks``: one client's row per chunk for large rows, written from the
  matrix without a copy), no filter, a CRC-32 per client row in a side dataset.

All HDF5 arms run in SWMR mode with a flush per round, as a run does. Torch-free.

    PYTHONPATH=. python benchmarks/checksum_cost.py [--numel 2000000] [--clients 10] [--rounds 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from driftscope.runfile.h5write import (
    CHUNK_BYTES,
    ChunkWriter,
    append,
    chunk_columns,
    growable,
    update_chunks,
)

ARMS = ("plain", "hdf5", "fletcher32", "numpy_fletcher32", "crc32")


def write_h5(path: Path, data: np.ndarray, rounds: int, arm: str) -> float:
    s, numel = data.shape
    across = (1, s, chunk_columns(numel, CHUNK_BYTES // (4 * s)))
    chunks = update_chunks(s, numel, 4) if arm == "crc32" else across
    fletcher = arm in ("fletcher32", "numpy_fletcher32")
    with h5py.File(path, "w", libver="latest") as f:
        labels = ("update", "client", "value")
        ds = growable(f, "u", (s, numel), np.float32, labels, chunks, fletcher32=fletcher)
        crc = growable(f, "crc", (1, s), np.uint32, ("u", "p", "c")) if arm == "crc32" else None
        rnd = growable(f, "round", (), np.int64, ("round",))
        f.swmr_mode = True
        writer = ChunkWriter()
        t0 = time.perf_counter()
        for r in range(rounds):
            if arm in ("hdf5", "fletcher32"):
                append(ds, data)
            else:
                sums = writer.append(ds, data)
                if crc is not None:
                    append(crc, sums[None])
            append(rnd, r)
            f.flush()
        elapsed = time.perf_counter() - t0
    return elapsed


def write_plain(path: Path, data: np.ndarray, rounds: int) -> float:
    t0 = time.perf_counter()
    with open(path, "wb") as fh:
        for _ in range(rounds):
            for row in data:
                fh.write(row)
            fh.flush()
        elapsed = time.perf_counter() - t0
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--numel", type=int, default=2_000_000)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args()
    data = np.random.default_rng(0).standard_normal((args.clients, args.numel), dtype=np.float32)
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:

        def run(arm: str) -> float:
            # each arm rewrites its own file: page cache freed by the unlink is reused at once
            path = Path(tmp) / f"{arm}.out"
            path.unlink(missing_ok=True)
            os.sync()  # no dirty pages left by the previous arm (not timed)
            if arm == "plain":
                return write_plain(path, data, args.rounds)
            return write_h5(path, data, args.rounds, arm)

        arms: dict[str, Callable[[], float]] = {arm: (lambda a=arm: run(a)) for arm in ARMS}
        for fn in arms.values():  # warm-up
            fn()
        for r in range(args.repeats):
            for arm in ARMS if r % 2 == 0 else ARMS[::-1]:
                times[arm].append(arms[arm]())
    load.append(os.getloadavg()[0])
    mb = args.rounds * data.nbytes / 1e6
    plain = statistics.median(times["plain"])
    print(
        f"{mb:.0f} MB in {args.rounds} rounds ({args.clients} x {args.numel:,} float32), "
        f"median of {args.repeats}, load average {load[0]:.2f} -> {load[1]:.2f}"
    )
    print("  arm               median    MB/s   plain/arm of medians; per repeat: median [IQR]")
    for arm in ARMS:
        t = statistics.median(times[arm])
        paired = [a / b for a, b in zip(times["plain"], times[arm], strict=True)]
        q1, q2, q3 = statistics.quantiles(paired, n=4)
        print(
            f"  {arm:17s} {t:.3f} s  {mb / t:6.0f}  {plain / t:.2f}x; {q2:.2f}x [{q1:.2f}-{q3:.2f}]"
        )


if __name__ == "__main__":
    main()
