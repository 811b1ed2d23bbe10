"""Memory and time per round with many clients and partial participation.

Each configuration runs in its own child process (so its RSS and peak RSS are its own): digits,
iid partition, 2 local steps, the default recording policy (Grams every round, updates every 5
rounds, probe CKA on 128 inputs every 10 rounds), 1 torch thread. A hook samples at the start of
every round and at the end of the run (so after the previous round's recorder and commit):

* RSS and its two parts from ``/proc/self/status``: ``RssAnon`` (heap, torch tensors, HDF5's
  caches) and ``RssFile`` (mapped files: libraries, SCAFFOLD's scratch file of control variates);
* the C heap in use (glibc ``mallinfo2``: ``uordblks + hblkhd``), which unlike RSS does not move
  with freed-but-kept heap pages or ``malloc_trim``;
* the peak RSS *during* the round (``VmHWM``, reset at each round's start through
  ``/proc/self/clear_refs``), i.e. what one round needs on top of what stays between rounds (the
  reset restarts ``ru_maxrss`` too, so the run's peak is the largest round's);
* the number of open HDF5 objects.

The slope is the least-squares fit in MiB per round over the last two thirds of the rounds (the
first third is warm-up: lazy imports, caches filling). ``--tracemalloc`` also traces Python and
numpy allocations (1 frame; torch's allocations are invisible to it) and reports the lines whose
held memory grew most between the end of the first third and the end of the run; it slows the
run, so its times are not comparable.

    python benchmarks/many_clients.py --rounds 60           # 100 clients f=0.1 (S=10),
                                                            # 1000 f=0.01 (S=10), 1000 f=0.1 (S=100)
    python benchmarks/many_clients.py --configs 1000:0.1 --rounds 10      # one configuration
    python benchmarks/many_clients.py --rounds 60 --scaffold              # + SCAFFOLD, scratch file
    python benchmarks/many_clients.py --configs 1000:0.1 --no-fedavg --scaffold   # SCAFFOLD only
    python benchmarks/many_clients.py --configs 1000:0.1 --tracemalloc    # top Python growth

Writes ``benchmarks/results/many_clients.json`` and prints a Markdown table (quoted in
benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MIB = 2**20


def proc_status() -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon, RssFile in MiB from /proc/self/status (Linux; else {})."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    keys = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    return {k: float(fields[k].split()[0]) / 1024 for k in keys if k in fields}


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the next reading is this round's peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def heap_in_use_mb() -> float:
    """The C heap in use (glibc ``mallinfo2``) in MiB; nan without glibc."""
    from driftscope.engine.heap import heap_in_use_bytes

    used = heap_in_use_bytes()
    return float("nan") if used is None else used / MIB


def slope(values: list[float]) -> float:
    """Least-squares MiB per round over the last two thirds of ``values`` (one per round)."""
    import numpy as np

    y = np.asarray(values, dtype=np.float64)
    start = len(y) // 3
    y = y[start:]
    if len(y) < 2 or not np.isfinite(y).all():
        return float("nan")
    return float(np.polyfit(np.arange(len(y)), y, 1)[0])


def child(
    clients: int,
    fraction: float,
    rounds: int,
    algorithm: str,
    budget_mb: float,
    out: str,
    trace: bool,
) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    import h5py

    from driftscope import RunConfig, train
    from driftscope.data import load_dataset
    from driftscope.engine.events import Hook

    ds = load_dataset("digits")
    cfg = RunConfig().replace(
        {
            "data.partition": "iid",
            "train.algorithm": algorithm,
            "train.clients": clients,
            "train.client_fraction": fraction,
            "train.rounds": rounds,
            "train.local_steps": 2,
            "train.device": "cpu",
            "train.state_budget_mb": budget_mb,
            # SCAFFOLD's control variates from 1-2 samples per client diverge at lr 0.05
            "train.lr": 0.05 if algorithm == "fedavg" else 0.01,
        }
    )
    if trace:
        import tracemalloc

        tracemalloc.start(1)
    snapshots: list[Any] = []
    first_third = max(1, rounds // 3)

    class Sampler(Hook):
        def __init__(self) -> None:
            self.rows: list[dict[str, float]] = []
            self.starts: list[float] = []

        # at the start of each round and at the end of the run: after the previous round's
        # recorder and commit (hooks given to train() run before the recorder)
        def sample(self, round: int) -> None:
            self.starts.append(time.perf_counter())
            status = proc_status()
            row = {
                "rss": status.get("VmRSS", float("nan")),
                "anon": status.get("RssAnon", float("nan")),
                "file": status.get("RssFile", float("nan")),
                "peak": status.get("VmHWM", float("nan")),  # since the previous reset
                "heap": heap_in_use_mb(),
                "h5_objects": h5py.h5f.get_obj_count(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_ALL),
            }
            if trace and round in (first_third, rounds):
                import tracemalloc

                snapshots.append(tracemalloc.take_snapshot())
            self.rows.append(row)
            reset_peak()

        def on_round_start(self, event: Any) -> None:
            self.sample(event.round)

        def on_run_end(self, event: Any) -> None:
            self.sample(rounds)

    base = proc_status().get("VmRSS", float("nan"))
    sampler = Sampler()
    t0 = time.perf_counter()
    train(cfg, out, dataset=ds, overwrite=True, hooks=[sampler])
    wall = time.perf_counter() - t0
    size = Path(out).stat().st_size
    Path(out).unlink(missing_ok=True)
    per_round = [b - a for a, b in zip(sampler.starts, sampler.starts[1:], strict=False)]
    rows = sampler.rows
    after = rows[1:]  # row k + 1: after round k; its "peak" is round k's peak
    growth = []
    if len(snapshots) == 2:
        import tracemalloc

        mine = [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, __file__),
        ]
        a, b = (snap.filter_traces(mine) for snap in snapshots)
        for stat in b.compare_to(a, "lineno")[:5]:
            frame = stat.traceback[0]
            growth.append(
                {
                    "where": f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}",
                    "size_diff_kib": stat.size_diff / 1024,
                    "count_diff": stat.count_diff,
                }
            )
    return {
        "clients": clients,
        "clients_per_round": cfg.train.clients_per_round,
        "fraction": fraction,
        "algorithm": algorithm,
        "state_budget_mb": budget_mb,
        "lr": cfg.train.lr,
        "rounds": rounds,
        "tracemalloc": trace,
        "wall_s": wall,
        "round_s": per_round,
        "rss_mb": [r["rss"] for r in after],
        "rss_anon_mb": [r["anon"] for r in after],
        "rss_file_mb": [r["file"] for r in after],
        "heap_mb": [r["heap"] for r in after],
        "round_peak_mb": [r["peak"] for r in after],
        # what a round needs above the RSS it started with
        "round_extra_mb": [b["peak"] - a["rss"] for a, b in zip(rows, after, strict=False)],
        "h5_objects": [r["h5_objects"] for r in after],
        "base_rss_mb": base,
        # the largest round's peak: VmHWM and ru_maxrss restart at every reset_peak()
        "peak_rss_mb": max(r["peak"] for r in after),
        "file_mb": size / MIB,
        "tracemalloc_growth": growth,
    }


def spawn(
    clients: int,
    fraction: float,
    rounds: int,
    algorithm: str,
    budget: float,
    tmp: Path,
    trace: bool,
) -> dict:
    out = tmp / f"mc-{clients}-{fraction}-{algorithm}.h5"
    spec = f"{clients},{fraction},{rounds},{algorithm},{budget},{out},{int(trace)}"
    cmd = [sys.executable, __file__, "--child", spec]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode:
        raise RuntimeError(f"child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _third(values: list[float], which: int) -> float:
    k = max(1, len(values) // 3)
    part = values[:k] if which == 0 else values[-k:]
    return statistics.median(part)


def table(rows: list[dict]) -> str:
    lines = [
        "| clients (sampled) | algorithm | RSS, first / last third | RssAnon, first / last third"
        " | RssFile, first / last third | slope, MiB/round: RssAnon / C heap | a round's peak above"
        " its start, median / max | peak RSS | s per round, first / last third |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        algo = r["algorithm"]
        if algo != "fedavg":
            algo += f", budget {r['state_budget_mb']:g} MiB, lr {r['lr']:g}"
        if r["tracemalloc"]:
            algo += ", tracemalloc on"
        extra = r["round_extra_mb"][1:] or r["round_extra_mb"]  # round 0 imports lazily
        t = r["round_s"]

        def pair(key: str, r: dict = r) -> str:
            return f"{_third(r[key], 0):.0f} / {_third(r[key], 2):.0f} MiB"

        lines.append(
            f"| {r['clients']} ({r['clients_per_round']}) | {algo} | {pair('rss_mb')} | "
            f"{pair('rss_anon_mb')} | {pair('rss_file_mb')} | "
            f"{slope(r['rss_anon_mb']):+.2f} / {slope(r['heap_mb']):+.2f} | "
            f"{statistics.median(extra):.0f} / {max(extra):.0f} MiB | "
            f"{r['peak_rss_mb']:.0f} MiB | {_third(t, 0):.2f} / {_third(t, 2):.2f} |"
        )
    for r in rows:
        if r["tracemalloc_growth"]:
            top = "; ".join(
                f"{g['where']} {g['size_diff_kib']:+.0f} KiB" for g in r["tracemalloc_growth"][:3]
            )
            lines.append(
                f"\ntracemalloc, {r['clients']} ({r['clients_per_round']}) clients, top growth "
                f"from round {max(1, r['rounds'] // 3)} to {r['rounds']}: {top}"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--configs",
        nargs="+",
        default=["100:0.1", "1000:0.01", "1000:0.1"],
        help="CLIENTS:FRACTION pairs (default: S = 10 of 100 and of 1,000, S = 100 of 1,000)",
    )
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--scaffold", action="store_true", help="also SCAFFOLD at the last config")
    p.add_argument(
        "--fedavg", action=argparse.BooleanOptionalAction, default=True, help="FedAvg runs"
    )
    p.add_argument("--budget-mb", type=float, default=64.0, help="SCAFFOLD's state budget")
    p.add_argument("--tracemalloc", action="store_true", help="trace Python allocations too")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        clients, fraction, rounds, algorithm, budget, out, trace = args.child.split(",")
        result = child(
            int(clients), float(fraction), int(rounds), algorithm, float(budget), out, trace == "1"
        )
        print(json.dumps(result))
        return
    RESULTS.mkdir(exist_ok=True)
    configs = [(int(c), float(f)) for c, f in (spec.split(":") for spec in args.configs)]
    runs = [(n, f, "fedavg", 1024.0) for n, f in configs] if args.fedavg else []
    if args.scaffold:
        runs.append((*configs[-1], "scaffold", args.budget_mb))
    rows = []
    with tempfile.TemporaryDirectory(dir=RESULTS, prefix="tmp-") as tmp:
        for n, f, algorithm, budget in runs:
            print(f"{n} clients x {f:g}, {algorithm}, {args.rounds} rounds ...", file=sys.stderr)
            rows.append(spawn(n, f, args.rounds, algorithm, budget, Path(tmp), args.tracemalloc))
            save(rows)
    print(table(rows))


def save(rows: list[dict]) -> None:
    import torch

    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python benchmarks/many_clients.py " + " ".join(sys.argv[1:]),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": 1,
        "load_average": os.getloadavg(),
        "runs": rows,
    }
    (RESULTS / "many_clients.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
