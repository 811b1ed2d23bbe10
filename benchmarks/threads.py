"""3. The thread policy: a FedAvg round with 1 torch thread against torch's default, on an idle
machine and with one CPU-heavy competitor process (a Python busy loop) running.

driftscope picks 1 thread for models under 1M parameters (``--threads N`` overrides). The rows say
what that buys on the default workload and what it costs (or not) on VGG-11.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import (
    TORCH_DEFAULT_THREADS,
    interleaved,
    log,
    ratios,
    row,
    summarise,
    synthetic_cifar,
)
from driftscope.config import RunConfig
from driftscope.data import load_dataset
from driftscope.engine.inprocess import Simulator

BUSY_LOOP = "while True: pass"


def competitor() -> subprocess.Popen:
    """One CPU-heavy process (a pure-Python busy loop: one core, no threads of its own)."""
    return subprocess.Popen([sys.executable, "-c", BUSY_LOOP])


def bench(quick: bool, tmp: Path, threads: int) -> dict[str, Any]:
    default = TORCH_DEFAULT_THREADS
    base = RunConfig().replace({"train.rounds": 100_000, "train.eval_every": 100_000})
    vgg = base.replace(
        {
            "model.name": "vgg11",
            "data.partition": "iid",
            "train.clients": 2 if quick else 5,
            "train.local_steps": 1 if quick else 2,
        }
    )
    cases = [
        ("digits, small_cnn, 10 clients x 2 epochs", "digits", base, load_dataset("digits"), 2, 5),
        (
            f"VGG-11 CIFAR-shaped, {vgg.train.clients} clients x {vgg.train.local_steps} steps",
            "vgg11",
            vgg,
            synthetic_cifar(320, 16),
            1,
            3,
        ),
    ]
    rows, extra = [], {}
    try:
        for label, key, cfg, ds, quick_reps, full_reps in cases:
            reps = quick_reps if quick else full_reps
            sim = Simulator(cfg, ds)

            def round_with(n: int, sim: Simulator = sim) -> None:
                torch.set_num_threads(n)
                sim.run_round()

            arms = {"one": lambda: round_with(1), "default": lambda: round_with(default)}
            for go in arms.values():  # warm-up
                go()
            for load in ("idle", "busy"):
                proc = competitor() if load == "busy" else None
                try:
                    log(f"threads: {label}, 1 vs {default} threads, {load}, {reps} repeats")
                    t = interleaved(arms, reps)
                finally:
                    if proc is not None:
                        proc.kill()
                        proc.wait()
                one, dflt = summarise(t["one"])["median"], summarise(t["default"])["median"]
                what = "no competitor started" if load == "idle" else "one busy-loop competitor"
                rows.append(
                    row(
                        f"Threads: FedAvg round, {default} threads / 1 thread ({label}; {what})",
                        ratios(t["default"], t["one"]),
                        None,
                        note=f"1 thread {one:.2f} s/round, {default} threads {dflt:.2f} s/round"
                        " (> 1: one thread is faster)",
                    )
                )
                extra[f"{key}_{load}"] = {k: summarise(v) for k, v in t.items()}
    finally:
        torch.set_num_threads(threads)
    return {
        "rows": rows,
        "config": {
            "default_threads": default,
            "competitor": f"python -c '{BUSY_LOOP}'",
            "digits": base.train.__dict__,
            "vgg11": vgg.train.__dict__,
        },
        "extra": extra,
    }
