"""What HDF5's fletcher32 checksums cost the run file's writes.

Writes the same rounds of client updates (S clients x numel float32 values per round, chunked as
the recorder chunks them) with and without the checksum, alternating the arms, and prints the
median time of each and their ratio. Torch-free.

    PYTHONPATH=. python benchmarks/checksum_cost.py [--numel 2000000] [--clients 10] [--rounds 8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from driftscope import schema
from driftscope.runfile import append, growable

CHUNK_BYTES = 1 << 20


def write(path: Path, data: np.ndarray, rounds: int, checksum: bool) -> float:
    schema.CHECKSUM = checksum
    s, numel = data.shape
    cols = max(1, CHUNK_BYTES // (4 * s))
    with h5py.File(path, "w", libver="latest") as f:
        ds = growable(f, "u", (s, numel), np.float32, ("update", "client", "value"), (1, s, cols))
        rnd = growable(f, "round", (), np.int64, ("round",))
        f.swmr_mode = True
        t0 = time.perf_counter()
        for r in range(rounds):
            append(ds, data)
            append(rnd, r)
            f.flush()
        elapsed = time.perf_counter() - t0
    path.unlink()
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--numel", type=int, default=2_000_000)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    data = np.random.default_rng(0).standard_normal((args.clients, args.numel), dtype=np.float32)
    times: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for checksum in (False, True):
                times[checksum].append(write(Path(tmp) / "x.h5", data, args.rounds, checksum))
    off, on = statistics.median(times[False]), statistics.median(times[True])
    mb = args.rounds * data.nbytes / 1e6
    print(
        f"{mb:.0f} MB in {args.rounds} rounds ({args.clients} x {args.numel:,} float32): "
        f"without checksum {off:.3f} s ({mb / off:.0f} MB/s), with fletcher32 {on:.3f} s "
        f"({mb / on:.0f} MB/s); ratio {on / off:.2f}"
    )


if __name__ == "__main__":
    main()
