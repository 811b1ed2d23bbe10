"""Two versions of driftscope side by side: the recording overhead, the in-process round and ``--help``.

``python benchmarks/side_by_side.py --before REV`` exports revision ``REV`` of this repository
(``git archive``) into a temporary folder and measures it against the working tree ("after"), each
measurement in a fresh process whose ``PYTHONPATH`` puts that version's ``driftscope`` first (the
process checks which one it imported). Versions alternate (before, after, after, before, ...) so that
load from other processes on a shared machine hits both alike. Each worker process, with one torch
thread, on the embedded digits and the default config (small CNN, FedAvg, 10 clients):

- trains one warm-up round, then ``train()`` for ``--rounds`` rounds with ``record.enabled=False``
  and with the default recording policy, in alternating order: the run times and their ratio, the
  recording overhead (``make bench``'s recording row);
- times ``Simulator.run_round()`` (evaluation off) over ``--sim-rounds`` rounds after one warm-up
  round (``make bench``'s simulator row times the same call against a bare PyTorch loop that does not
  change between versions).

``driftscope --help`` is timed as the ``cli`` section does: ``python -m driftscope --help`` in a fresh
process, versions alternating, after one untimed call each; both versions load their modules from
bytecode (``PYTHONDONTWRITEBYTECODE`` is removed from the workers' environment), as an installed
package does. The summary (median, interquartile range, min-max of the after/before
ratios) is printed and written as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# the worker: imports the driftscope found first on PYTHONPATH; both versions have train(),
# RunConfig.replace and Simulator(cfg, dataset) (driftscope.simulator before the engine package)
WORKER = r"""
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
import driftscope
tree, tmp, rounds, sim_rounds, flip = sys.argv[1], Path(sys.argv[2]), *map(int, sys.argv[3:6])
assert str(Path(driftscope.__file__).resolve()).startswith(tree), driftscope.__file__
from driftscope import RunConfig, train
from driftscope.data import load_dataset
try:
    from driftscope.engine.inprocess import Simulator
except ImportError:
    from driftscope.simulator import Simulator
ds = load_dataset("digits")
cfg = RunConfig().replace({"train.rounds": rounds})
train(cfg.replace({"train.rounds": 1}), tmp / "warmup.h5", dataset=ds, overwrite=True)
arms = {"off": cfg.replace({"record.enabled": False}), "on": cfg}
out = {}
for name in (["on", "off"] if flip else ["off", "on"]):
    t0 = time.perf_counter()
    train(arms[name], tmp / f"{name}.h5", dataset=ds, overwrite=True)
    out[name] = time.perf_counter() - t0
sim = Simulator(RunConfig().replace({"train.rounds": 100_000, "train.eval_every": 100_000}), ds)
sim.run_round()
t0 = time.perf_counter()
for _ in range(sim_rounds):
    sim.run_round()
out["round"] = (time.perf_counter() - t0) / sim_rounds
print(json.dumps(out))
"""


def export(rev: str, dest: Path) -> str:
    """Revision ``rev``'s files (``git archive``) into ``dest``; returns its short hash."""
    short = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    data = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return short


def env_for(tree: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # both versions load their modules from bytecode, as an installed package does
    for name in ("ATEN_CPU_CAPABILITY", "PYTHONDONTWRITEBYTECODE"):
        env.pop(name, None)
    return env


def worker(tree: Path, tmp: Path, rounds: int, sim_rounds: int, flip: bool) -> dict[str, float]:
    argv = [sys.executable, "-c", WORKER, str(tree.resolve()), str(tmp), str(rounds)]
    argv += [str(sim_rounds), str(int(flip))]
    proc = subprocess.run(argv, env=env_for(tree), cwd=tmp, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"side_by_side: the worker failed in {tree}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def help_time(tree: Path, tmp: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "driftscope", "--help"],
        env=env_for(tree),
        cwd=tmp,
        capture_output=True,
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"side_by_side: driftscope --help failed in {tree}")
    return elapsed


def summary(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    q25, med, q75 = np.percentile(a, [25, 50, 75])
    return {"median": med, "q25": q25, "q75": q75, "min": a.min(), "max": a.max(), "n": len(a)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="git revision to compare the working tree with")
    p.add_argument(
        "--repeats", type=int, default=8, help="worker processes per version (0: --help only)"
    )
    p.add_argument("--rounds", type=int, default=10, help="rounds of each timed train() run")
    p.add_argument("--sim-rounds", type=int, default=5, help="timed Simulator.run_round() calls")
    p.add_argument("--help-repeats", type=int, default=15, help="--help processes per version")
    p.add_argument("--out", type=Path, default=RESULTS / "side_by_side.json")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="driftscope-sbs-") as tmpdir:
        tmp = Path(tmpdir)
        before_tree = tmp / "before"
        before_tree.mkdir()
        short = export(args.before, before_tree)
        trees = {"before": before_tree, "after": ROOT}
        scratch = {k: tmp / f"runs-{k}" for k in trees}
        for d in scratch.values():
            d.mkdir()
        load_start = os.getloadavg()
        raw: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
        for rep in range(args.repeats):
            order = ["before", "after"] if rep % 2 == 0 else ["after", "before"]
            for k in order:
                raw[k].append(
                    worker(trees[k], scratch[k], args.rounds, args.sim_rounds, rep % 2 == 1)
                )
                r = raw[k][-1]
                print(
                    f"{rep} {k:6s} off {r['off']:.2f} s  on {r['on']:.2f} s  round {r['round']:.3f} s"
                )
        helps: dict[str, list[float]] = {"before": [], "after": []}
        for k in trees:  # the workers above wrote each version's bytecode; warm the page cache
            help_time(trees[k], scratch[k])
        for rep in range(args.help_repeats):
            for k in ["before", "after"] if rep % 2 == 0 else ["after", "before"]:
                helps[k].append(help_time(trees[k], scratch[k]))
        load_end = os.getloadavg()

    def per_version(key: str) -> dict[str, list[float]]:
        return {k: [r[key] for r in raw[k]] for k in raw}

    overhead = {k: [r["on"] / r["off"] for r in raw[k]] for k in raw}
    measured = [
        ("recording overhead (on/off)", overhead),
        ("train(), recording off, s", per_version("off")),
        ("train(), default recording, s", per_version("on")),
        ("Simulator.run_round(), s", per_version("round")),
    ]
    rows: dict[str, Any] = {}
    for name, values in [*(measured if args.repeats else []), ("driftscope --help, s", helps)]:
        b, a = summary(values["before"]), summary(values["after"])
        # pairs in the order they ran: repeat i of each version ran next to each other
        ratios = [x / y for x, y in zip(values["after"], values["before"], strict=True)]
        rows[name] = {"before": b, "after": a, "after/before": summary(ratios)}
    result = {
        "before": short,
        "after": "working tree",
        "repeats": args.repeats,
        "rounds": args.rounds,
        "sim_rounds": args.sim_rounds,
        "help_repeats": args.help_repeats,
        "load_average": {"start": load_start, "end": load_end},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"\nbefore = {short}, after = the working tree; load average {load_start} -> {load_end}")
    for name, row in rows.items():
        b, a, r = row["before"], row["after"], row["after/before"]
        print(
            f"{name:32s} before {b['median']:.4g}  after {a['median']:.4g}  "
            f"after/before {r['median']:.3f} [{r['q25']:.3f}-{r['q75']:.3f}] "
            f"({r['min']:.3f}-{r['max']:.3f}), n={r['n']}"
        )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
