"""The shared harness: interleaved arms, summaries, table rows, the environment, the README table.

Every figure is a ratio of two things run side by side in this process (or one invocation),
interleaved A, B, B, A, A, B, ... so that load from other processes on a shared machine hits both
arms alike; each figure is the median over repeats with its interquartile range and min/max.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from driftscope.data import Dataset
from driftscope.engine.inprocess import Simulator

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
README = BENCH_DIR / "README.md"
# torch's own choice of intra-op threads (one per core), read before the suite sets its own
TORCH_DEFAULT_THREADS = (
    os.cpu_count() or 1 if "OMP_NUM_THREADS" in os.environ else torch.get_num_threads()
)
START, END = "<!-- results:start -->", "<!-- results:end -->"
# section name -> module (each has ``bench(quick, tmp, threads) -> {"rows", "config", "extra"}``);
# the README table lists the sections in this order
SECTIONS = {
    "recording": "benchmarks.recording",
    "simulator": "benchmarks.simulator",
    "threads": "benchmarks.threads",
    "cka": "benchmarks.cka",
    "io": "benchmarks.fileio",
    "growth": "benchmarks.growth",
    "cli": "benchmarks.cli_startup",
}


# ------------------------------------------------------------------------------------ harness
def summarise(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    q25, med, q75 = np.percentile(a, [25, 50, 75])
    return {
        "median": float(med),
        "q25": float(q25),
        "q75": float(q75),
        "min": float(a.min()),
        "max": float(a.max()),
        "n": len(a),
    }


def row(
    name: str,
    values: list[float],
    target: tuple[str, float] | None,
    unit: str = "x",
    note: str = "",
) -> dict[str, Any]:
    """One table row: a measured figure (list of repeats), its target (op, threshold) if any."""
    s = summarise(values)
    met = None
    if target is not None:
        op, thr = target
        met = bool(s["median"] <= thr) if op == "<=" else bool(s["median"] >= thr)
    return {
        "name": name,
        "values": [float(v) for v in values],
        **s,
        "unit": unit,
        "target": None if target is None else f"{target[0]} {target[1]:g}",
        "met": met,
        "note": note,
    }


def interleaved(arms: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Wall time of each arm, ``repeats`` times, in alternating order (A B, B A, A B, ...).

    An arm returns None (time the whole call) or its own measured seconds (time a part of it).
    """
    names = list(arms)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            own = arms[n]()
            elapsed = time.perf_counter() - t0
            times[n].append(float(own) if isinstance(own, float) else elapsed)
    return times


def ratios(num: list[float], den: list[float]) -> list[float]:
    return [a / b for a, b in zip(num, den, strict=True)]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def synthetic_cifar(n_train: int, n_test: int, seed: int = 0) -> Dataset:
    """CIFAR-shaped random data: float32 (N, 3, 32, 32) in [0, 1], 10 classes, no augmentation."""
    g = torch.Generator().manual_seed(seed)
    return Dataset(
        "synthetic_cifar",
        torch.rand(n_train, 3, 32, 32, generator=g),
        torch.randint(0, 10, (n_train,), generator=g),
        torch.rand(n_test, 3, 32, 32, generator=g),
        torch.randint(0, 10, (n_test,), generator=g),
        num_classes=10,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        augment=False,
    )


def flat_to_state(sim: Simulator, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        p.name: flat[p.offset : p.offset + p.numel].view(p.shape).clone() for p in sim.layout.params
    }


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ``ru_maxrss``: Linux carries that over from the
    parent across fork + exec, so a child would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------- output, README
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(args: argparse.Namespace) -> dict[str, Any]:
    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/run.py", *sys.argv[1:]]),
        "quick": args.quick,
        "git_commit": commit,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "torch_cka": version("torch-cka"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def fmt(v: float, unit: str) -> str:
    if unit == "":
        return f"{v:.1e}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def table(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        f"Measured {env['date']} on {env['cpu']} ({env['cpu_count']} cores), "
        f"torch {env['torch']} with {env['torch_threads']} thread(s), numpy {env['numpy']}, "
        f"h5py {env['h5py']} (HDF5 {env['hdf5']}), torch-cka {env['torch_cka']}; "
        f"load average {env['loadavg_start']} at start, {env.get('loadavg_end')} at end"
        + (" (QUICK smoke run: not representative)" if env["quick"] else "")
        + f". Command: `{env['command']}`.",
        "",
        "| Benchmark | Measured: median [IQR] (min-max), n | Target | Met |",
        "|---|---|---|---|",
    ]
    for section in SECTIONS:
        if section not in results["sections"]:
            continue
        for r in results["sections"][section]["rows"]:
            u = r["unit"]
            spread = (
                f" [{fmt(r['q25'], u)}-{fmt(r['q75'], u)}] ({fmt(r['min'], u)}-{fmt(r['max'], u)})"
                if r["n"] > 1
                else ""
            )
            measured = f"**{fmt(r['median'], u)}{u}**{spread}, n={r['n']}"
            if r["note"]:
                measured += f"<br>{r['note']}"
            met = {True: "met", False: "**missed**", None: "-"}[r["met"]]
            name = r["name"].replace("  ", "&nbsp;&nbsp;&nbsp;")
            lines.append(f"| {name} | {measured} | {r['target'] or 'report'} | {met} |")
    return "\n".join(lines)


def write_readme(results: dict[str, Any]) -> None:
    text = README.read_text()
    a, b = text.index(START) + len(START), text.index(END)
    README.write_text(text[:a] + "\n" + table(results) + "\n" + text[b:])
