"""driftscope performance benchmarks (not part of the test suite).

    python benchmarks/run.py                 # the whole suite, < 20 min on 2 cores
    python benchmarks/run.py --quick         # smoke run, a few minutes
    python benchmarks/run.py --only cka      # one section (recording, simulator, threads, cka, io,
                                             # growth, cli); python -m benchmarks works the same

Every figure is a ratio of two things run side by side in this process (or one invocation),
interleaved A, B, B, A, A, B, ... so that load from other processes on a shared machine hits both
arms alike; each figure is the median over repeats with its interquartile range and min/max.
Results go to ``benchmarks/results/latest.json`` (with versions, CPU, thread count, load average)
and the table between the markers in ``benchmarks/README.md`` is regenerated from that file.
Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import (
    README,
    RESULTS,
    ROOT,
    SECTIONS,
    environment,
    log,
    write_readme,
)


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true", help="smoke run (~1 min), not representative")
    ap.add_argument("--only", choices=list(SECTIONS), action="append", help="run only this section")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared machine torch's default, one thread per core, "
        "oversubscribes the cores and times become erratic)",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        from benchmarks.growth import child_growth

        clients, rounds, out = args.child.split(",", 2)
        print(json.dumps(child_growth(int(clients), int(rounds), out), default=str))
        return 0

    RESULTS.mkdir(parents=True, exist_ok=True)
    latest = RESULTS / "latest.json"
    results: dict[str, Any] = {"sections": {}}
    if args.only and latest.exists():  # keep the other sections' last results
        results = json.loads(latest.read_text())
    results["environment"] = environment(args)
    todo = args.only or list(SECTIONS)
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=RESULTS, prefix="tmp-") as tmp_name:
        tmp = Path(tmp_name)
        for section in todo:
            t0 = time.perf_counter()
            out = importlib.import_module(SECTIONS[section]).bench(args.quick, tmp, args.threads)
            out["seconds"] = round(time.perf_counter() - t0, 1)
            out["environment"] = {"date": results["environment"]["date"], "quick": args.quick}
            results["sections"][section] = out
            log(f"{section}: done in {out['seconds']} s")
            for r in out["rows"]:
                log(
                    f"  {r['name'].strip()}: {r['median']:.4g} (target {r['target']}, met {r['met']})"
                )
            # after every section: a later section's failure keeps the finished ones
            latest.write_text(json.dumps(results, indent=1, default=str) + "\n")
    results["environment"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["environment"]["total_seconds"] = round(time.perf_counter() - t_all, 1)
    latest.write_text(json.dumps(results, indent=1, default=str) + "\n")
    write_readme(results)
    log(f"wrote {latest.relative_to(ROOT)} and the table in {README.relative_to(ROOT)}")
    return 0
