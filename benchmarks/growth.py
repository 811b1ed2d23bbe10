"""5. Growth with clients and rounds: each configuration in its own process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import (
    ROOT,
    log,
    peak_rss_mb,
    row,
    rss_mb,
)
from driftscope.config import RunConfig
from driftscope.data import load_dataset
from driftscope.engine.events import Hook, RoundStarted, RunEnded, RunStarted
from driftscope.engine.inprocess import Simulator
from driftscope.engine.recorder import stored_params
from driftscope.engine.training import train
from driftscope.runfile import schema


class Sampler(Hook):
    """Per-round wall time (start of round to start of the next), RSS and run-file size."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.starts: list[float] = []
        self.rss: list[float] = []
        self.size: list[int] = []

    def on_run_start(self, event: RunStarted) -> None:
        self.size0 = self.path.stat().st_size

    def on_round_start(self, event: RoundStarted) -> None:
        self.starts.append(time.perf_counter())
        self.rss.append(rss_mb())
        self.size.append(self.path.stat().st_size)

    def on_run_end(self, event: RunEnded) -> None:
        self.starts.append(time.perf_counter())
        self.rss.append(rss_mb())


def predicted_bytes(cfg: RunConfig, sim: Simulator) -> int:
    """Payload the storage policy implies for a whole run (no HDF5 overhead or chunk rounding),
    from the run-file schema's schedule and dtypes."""
    rc, s, n = cfg.record, cfg.train.clients_per_round, cfg.train.clients
    lay = sim.layout
    gram = np.dtype(schema.GRAM_DTYPE).itemsize
    cka = np.dtype(schema.CKA_DTYPE).itemsize
    # resume state: two slots of the global model and the algorithm's state (control variates)
    total = schema.STATE_SLOTS * sum(v.numel() * v.element_size() for v in sim.state().values())
    metrics = sum(np.dtype(schema.metric_dtype(m)).itemsize for m in schema.METRIC_NAMES)
    stored = stored_params(rc, lay)
    for r in range(cfg.train.rounds):
        # metrics, the commit marker, clients/* (8-byte values)
        total += metrics + 8 + len(schema.CLIENT_METRICS) * 8 * n
        if not rc.enabled or not schema.records(r, rc.every):
            continue
        total += len(lay.params) * s * s * gram + s * 8 + 8  # gram/*, clients, round
        if schema.stores_updates(r, rc.every, rc.updates_every):
            total += sum(p.numel for p in stored) * s * np.dtype(rc.update_dtype).itemsize + 8
        if schema.does_cka(r, rc.every, rc.cka_every, rc.probe_size):
            total += len(schema.CKA_KINDS) * len(lay.layers) * (s + 1) ** 2 * cka + 8
    return total


def child_growth(clients: int, rounds: int, out: str) -> dict[str, Any]:
    """One recorded run in a fresh process (so peak RSS is this run's)."""
    ds = load_dataset("digits")
    base_rss = rss_mb()
    cfg = RunConfig().replace(
        {
            "data.partition": "iid",
            "train.clients": clients,
            "train.rounds": rounds,
            "train.local_steps": 2,
            "train.batch_size": 8,
        }
    )
    path = Path(out)
    sampler = Sampler(path)
    t0 = time.perf_counter()
    train(cfg, path, dataset=ds, overwrite=True, hooks=[sampler])
    wall = time.perf_counter() - t0
    sim = Simulator(cfg, ds)  # layout only
    per_round = np.diff(sampler.starts).tolist()
    result = {
        "clients": clients,
        "rounds": rounds,
        "wall_s": wall,
        "round_s": per_round,
        "rss_mb": sampler.rss,
        "base_rss_mb": base_rss,
        "peak_rss_mb": peak_rss_mb(),
        "size0": sampler.size0,
        "sizes": sampler.size,
        "final_size": path.stat().st_size,
        "predicted_bytes": predicted_bytes(cfg, sim),
        "config": {"train": cfg.train.__dict__, "record": cfg.record.__dict__},
    }
    path.unlink(missing_ok=True)
    return result


def spawn_child(clients: int, rounds: int, tmp: Path, threads: int) -> dict[str, Any]:
    out = tmp / f"growth-{clients}-{rounds}.h5"
    cmd = [sys.executable, "-m", "benchmarks", "--threads", str(threads), "--child"]
    cmd += [f"{clients},{rounds},{out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"growth child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench(quick: bool, tmp: Path, threads: int) -> dict[str, Any]:
    rows = []
    sizes = (10, 50) if quick else (10, 50, 100)
    rounds = 3 if quick else 5
    log(f"growth: clients {sizes}, {rounds} rounds each (child processes)")
    by = {c: spawn_child(c, rounds, tmp, threads) for c in sizes}
    # per-client round time, rounds after the first (warm-up), relative to 10 clients
    per_client = {c: np.asarray(r["round_s"][1:]) / c for c, r in by.items()}
    lo, hi = sizes[0], sizes[-1]
    rows.append(
        row(
            f"Growth: time per client-round at {hi} vs {lo} clients",
            list(per_client[hi] / np.median(per_client[lo])),
            ("<=", 1.25),
            note=", ".join(
                f"{c}: {np.median(r['round_s'][1:]):.2f} s/round" for c, r in by.items()
            ),
        )
    )
    growth_mb = {c: r["peak_rss_mb"] - r["base_rss_mb"] for c, r in by.items()}
    rows.append(
        row(
            f"Growth: peak RSS of the run at {hi} vs {lo} clients",
            [growth_mb[hi] / growth_mb[lo]],
            None,
            note="peak RSS above the process baseline: "
            + ", ".join(f"{c}: {v:.0f} MiB" for c, v in growth_mb.items()),
        )
    )

    long_rounds = 12 if quick else 60
    log(f"growth: 10 clients, {long_rounds} rounds (child process)")
    lr = spawn_child(10, long_rounds, tmp, threads)
    times = np.asarray(lr["round_s"])
    third = len(times) // 3
    first, last = times[1 : third + 1], times[-third:]  # skip round 0 (warm-up)
    rows.append(
        row(
            f"Growth: per-round time, last vs first third of {long_rounds} rounds",
            list(last / np.median(first)),
            ("<=", 1.10),
            note=f"first third {np.median(first):.3f} s, last third {np.median(last):.3f} s",
        )
    )
    rss = np.asarray(lr["rss_mb"])
    rows.append(
        row(
            "Growth: RSS, last vs first third of rounds",
            list(rss[-third:] / np.median(rss[1 : third + 1])),
            ("<=", 1.05),
            note=f"{np.median(rss[1 : third + 1]):.0f} -> {np.median(rss[-third:]):.0f} MiB",
        )
    )
    measured = lr["final_size"] - lr["size0"]
    rows.append(
        row(
            "Run-file size / size the storage policy predicts",
            [measured / lr["predicted_bytes"]],
            ("<=", 1.25),
            note=f"{measured / 2**20:.2f} MiB written vs {lr['predicted_bytes'] / 2**20:.2f} MiB "
            f"payload over {long_rounds} rounds (+{lr['size0'] / 2**10:.0f} KiB at creation)",
        )
    )
    return {
        "rows": rows,
        "config": {
            "data": "digits, iid partition",
            "train": "local_steps=2, batch_size=8, default record policy",
            "clients_sweep": list(sizes),
            "rounds_per_client_sweep": rounds,
            "long_run_rounds": long_rounds,
        },
        "extra": {"clients": by, "long_run": lr},
    }
