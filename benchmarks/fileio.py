"""4. Run-file I/O: updates written through the recorder against a plain write; reading one layer
with ``Run.updates`` against plain reads. (Not ``io.py``: that would shadow the standard library
for ``python benchmarks/run.py``.)"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.harness import (
    interleaved,
    log,
    ratios,
    row,
    summarise,
    synthetic_cifar,
)
from driftscope.config import RunConfig
from driftscope.engine.events import RoundEnded
from driftscope.engine.inprocess import Simulator
from driftscope.engine.recorder import Recorder
from driftscope.runfile.reader import open_run
from driftscope.runfile.writer import RunWriter


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def bench(quick: bool, tmp: Path, threads: int) -> dict[str, Any]:
    """Updates written through ``Recorder.store_updates`` (whole chunks, CRC-32 per client) vs a
    plain sequential write of the same bytes straight from the update matrix (no copy); reading
    one layer across rounds and clients with Run.updates (CRC-32s checked) vs plain reads."""
    s = 5
    rounds = 1 if quick else 2
    ds = synthetic_cifar(64, 16)
    cfg = RunConfig().replace(
        {
            "model.name": "vgg11",
            "data.partition": "iid",
            "train.clients": s,
            "record.updates_every": 1,
            "record.update_dtype": "float32",
            "record.probe_size": 0,
        }
    )
    sim = Simulator(cfg, ds)
    dtype = np.dtype(cfg.record.update_dtype)
    rng = np.random.default_rng(0)
    d = torch.from_numpy(rng.standard_normal((s, sim.layout.numel), dtype=np.float32))
    nbytes = rounds * s * sim.layout.numel * dtype.itemsize
    # Each arm rewrites its own file (unlinked first). Page cache freed by the unlink is reused
    # at once; fresh pages are not: on this VM (free-page reporting) a write into never-used
    # memory ran at ~200 MiB/s instead of ~2 GiB/s, whichever arm it hit.
    io_dir = tmp / "io"
    io_dir.mkdir()
    made: list[Path] = []

    def fresh(suffix: str) -> Path:
        path = io_dir / f"arm{suffix}"
        path.unlink(missing_ok=True)
        if path not in made:
            made.append(path)
        return path

    summary = RoundEnded(
        0, tuple(range(s)), 0.0, 0.0, 0.0, 0.0, 0, 0, 0.0, {}, {}, torch.empty(0), {}
    )

    def h5_write(sync: bool, suffix: str) -> float:
        path = fresh(suffix)
        os.sync()  # start each arm with no dirty pages left by the other (not timed)
        writer = RunWriter.create(
            path, config=sim.cfg, layout=sim.layout, label_histogram=sim.label_histogram
        )
        # creates the datasets as in a real run
        rec = Recorder(writer, cfg.record, sim.layout, s, sim.num_clients, sim.build_model)
        writer.start_swmr()
        t0 = time.perf_counter()
        for r in range(rounds):  # what Recorder.on_round_end does on a round that stores updates
            rec.store_updates(r, d)
            writer.commit(replace(summary, round=r))  # metrics row (the commit marker) + flush
        writer.close()
        if sync:
            fsync_path(path)
        return time.perf_counter() - t0

    def raw_write(sync: bool, suffix: str) -> float:
        """The floor: each client's row of each parameter written from the update matrix itself
        (``write`` of a contiguous row: no copy in user space), one flush per round."""
        path = fresh(suffix)
        os.sync()
        f = open(path, "wb")
        t0 = time.perf_counter()
        for _ in range(rounds):
            for p in sim.layout.params:
                block = d[:, p.offset : p.offset + p.numel].numpy()
                for client_row in block.astype(dtype, copy=False):
                    f.write(client_row)
            f.flush()
        if sync:
            os.fsync(f.fileno())
        f.close()
        return time.perf_counter() - t0

    reps = 2 if quick else 15
    load_start = os.getloadavg()
    log(f"io: VGG-11 updates, {s} clients x {rounds} rounds = {nbytes / 2**20:.0f} MiB per write")
    for suffix in (".h5", "-sync.h5"):  # warm-up: each arm's file once
        h5_write(False, suffix)
    for suffix in (".bin", "-sync.bin"):
        raw_write(False, suffix)
    w = interleaved(
        {
            "h5": lambda: h5_write(False, ".h5"),
            "raw": lambda: raw_write(False, ".bin"),
            "h5_sync": lambda: h5_write(True, "-sync.h5"),
            "raw_sync": lambda: raw_write(True, "-sync.bin"),
        },
        reps,
    )

    # read one layer (weight + bias) across all rounds and clients
    big = max(sim.layout.layers, key=lambda ly: ly.numel)
    params = [sim.layout.param(n) for n in big.params]
    layer_bytes = rounds * s * big.numel * dtype.itemsize
    run = open_run(io_dir / "arm.h5")
    raw = open(io_dir / "arm.bin", "rb")
    row_bytes = s * sim.layout.numel * dtype.itemsize

    def h5_read() -> None:
        out = run.updates(big.name)
        assert out.shape == (rounds, s, big.numel)

    def raw_read() -> None:
        out = np.empty((rounds, s, big.numel), dtype=dtype)
        col = 0
        for p in params:
            for r in range(rounds):
                raw.seek(r * row_bytes + s * p.offset * dtype.itemsize)
                buf = np.empty((s, p.numel), dtype=dtype)
                raw.readinto(memoryview(buf).cast("B"))
                out[r, :, col : col + p.numel] = buf
            col += p.numel

    load_end = os.getloadavg()
    h5_read()
    rd = interleaved({"h5": h5_read, "raw": raw_read}, 3 if quick else 7)
    run.close()
    raw.close()
    mb = 2**20

    def write_row(label: str, h5: str, raw: str) -> dict[str, Any]:
        def rate(key: str) -> float:
            return nbytes / mb / summarise(w[key])["median"]

        return row(
            f"Run-file write throughput / plain write ({label})",
            ratios(w[raw], w[h5]),
            (">=", 0.80),
            note=f"h5 {rate(h5):.0f} MiB/s, plain {rate(raw):.0f} MiB/s; load average "
            f"{load_start[0]:.1f} -> {load_end[0]:.1f}",
        )

    rows = [
        write_row("page cache, no fsync", "h5", "raw"),
        write_row("fsync at end, both", "h5_sync", "raw_sync"),
        row(
            f"Run.updates('{big.name}') read, MiB/s (warm page cache)",
            [layer_bytes / mb / v for v in rd["h5"]],
            None,
            unit=" MiB/s",
            note=f"plain seek+read of the same bytes: "
            f"{layer_bytes / mb / summarise(rd['raw'])['median']:.0f} MiB/s; "
            f"ratio {summarise(ratios(rd['raw'], rd['h5']))['median']:.2f}",
        ),
    ]
    for p in made:
        p.unlink()
    return {
        "rows": rows,
        "config": {
            "model": "vgg11 (9,750,922 params)",
            "clients": s,
            "rounds": rounds,
            "dtype": str(dtype),
            "bytes_per_write": nbytes,
            "read_layer": big.name,
            "read_bytes": layer_bytes,
            "disk": str(tmp),
            "checksums": "CRC-32 per client row of each parameter (records/update_crc)",
            "load_average_writes": [list(load_start), list(load_end)],
        },
        "extra": {
            "write_s": {k: summarise(v) for k, v in w.items()},
            "read_s": {k: summarise(v) for k, v in rd.items()},
        },
    }
