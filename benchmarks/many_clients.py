"""Memory and time per round with many clients and partial participation (issue 11).

Each configuration runs in its own child process (so its RSS and peak RSS are its own): digits,
iid partition, FedAvg, 2 local steps, client fraction 0.1, the default recording policy (Grams every
round, updates every 5 rounds, probe CKA on 128 inputs every 10 rounds), 1 torch thread. RSS
(``psutil``) is sampled after every round (recorder and commit included) by a hook, and a round's
time runs from its start to the next round's start (training, recording, commit).
torch's allocations are invisible to ``tracemalloc``, hence RSS.

    python benchmarks/many_clients.py                 # 10, 100, 1000 clients, 30 rounds each
    python benchmarks/many_clients.py --rounds 10     # quicker
    python benchmarks/many_clients.py --clients 1000  # one size

Writes ``benchmarks/results/many_clients.json`` and prints a Markdown table (quoted in
benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def rss_parts_mb() -> tuple[float, float]:
    """(anonymous, file-backed) resident MiB from /proc/self/status (Linux; else (nan, nan)).
    File-backed pages (the control-variate scratch file, mapped libraries) are reclaimable."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return float("nan"), float("nan")
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    kib = [float(fields.get(k, "nan kB").split()[0]) for k in ("RssAnon", "RssFile")]
    return kib[0] / 1024, kib[1] / 1024


def child(clients: int, rounds: int, algorithm: str, budget_mb: float, out: str) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from driftscope import RunConfig, train
    from driftscope.data import load_dataset
    from driftscope.events import Hook

    ds = load_dataset("digits")
    cfg = RunConfig().replace(
        {
            "data.partition": "iid",
            "train.algorithm": algorithm,
            "train.clients": clients,
            "train.client_fraction": 0.1,
            "train.rounds": rounds,
            "train.local_steps": 2,
            "train.device": "cpu",
            "train.state_budget_mb": budget_mb,
            # SCAFFOLD's control variates from 1-2 samples per client diverge at lr 0.05
            "train.lr": 0.05 if algorithm == "fedavg" else 0.01,
        }
    )

    class Sampler(Hook):
        def __init__(self) -> None:
            self.rss: list[float] = []
            self.anon: list[float] = []
            self.file: list[float] = []
            self.starts: list[float] = []

        # sampled at the start of each round and at the end of the run: after the previous
        # round's recorder and commit (hooks given to train() run before the recorder)
        def sample(self) -> None:
            self.starts.append(time.perf_counter())
            self.rss.append(rss_mb())
            anon, file = rss_parts_mb()
            self.anon.append(anon)
            self.file.append(file)

        def on_round_start(self, event: Any) -> None:
            self.sample()

        def on_run_end(self, event: Any) -> None:
            self.sample()

    base = rss_mb()
    sampler = Sampler()
    t0 = time.perf_counter()
    train(cfg, out, dataset=ds, overwrite=True, hooks=[sampler])
    wall = time.perf_counter() - t0
    size = Path(out).stat().st_size
    Path(out).unlink(missing_ok=True)
    per_round = [b - a for a, b in zip(sampler.starts, sampler.starts[1:], strict=False)]
    return {
        "clients": clients,
        "clients_per_round": cfg.train.clients_per_round,
        "algorithm": algorithm,
        "state_budget_mb": budget_mb,
        "lr": cfg.train.lr,
        "rounds": rounds,
        "wall_s": wall,
        "round_s": per_round,
        "rss_mb": sampler.rss[1:],  # after each round
        "rss_anon_mb": sampler.anon[1:],
        "rss_file_mb": sampler.file[1:],
        "base_rss_mb": base,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "file_mb": size / 2**20,
    }


def spawn(clients: int, rounds: int, algorithm: str, budget_mb: float, tmp: Path) -> dict:
    out = tmp / f"mc-{clients}-{algorithm}.h5"
    cmd = [sys.executable, __file__, "--child", f"{clients},{rounds},{algorithm},{budget_mb},{out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode:
        raise RuntimeError(f"child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _third(values: list[float], which: int) -> float:
    import statistics

    k = max(1, len(values) // 3)
    part = values[:k] if which == 0 else values[-k:]
    return statistics.median(part)


def table(rows: list[dict]) -> str:
    lines = [
        "| clients (sampled) | algorithm, client state | RSS after round 1 | RSS, median of first third"
        " / last third of rounds | anonymous RSS, first / last third | peak RSS | above start |"
        " s per round (median, first / last third) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        state = (
            "-"
            if r["algorithm"] == "fedavg"
            else f"c_i in a scratch file (budget {r['state_budget_mb']:g} MiB), lr {r['lr']:g}"
        )
        rss, t = r["rss_mb"], r["round_s"]
        lines.append(
            f"| {r['clients']} ({r['clients_per_round']}) | {r['algorithm']}, {state} | "
            f"{rss[0]:.0f} MiB | {_third(rss, 0):.0f} / {_third(rss, 2):.0f} MiB | "
            f"{_third(r['rss_anon_mb'], 0):.0f} / {_third(r['rss_anon_mb'], 2):.0f} MiB | "
            f"{r['peak_rss_mb']:.0f} MiB | {r['peak_rss_mb'] - r['base_rss_mb']:.0f} MiB | "
            f"{_third(t, 0):.2f} / {_third(t, 2):.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--scaffold", action="store_true", help="also SCAFFOLD at the largest size")
    p.add_argument("--budget-mb", type=float, default=64.0, help="SCAFFOLD's state budget")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        clients, rounds, algorithm, budget, out = args.child.split(",")
        print(json.dumps(child(int(clients), int(rounds), algorithm, float(budget), out)))
        return
    RESULTS.mkdir(exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=RESULTS, prefix="tmp-") as tmp:
        runs = [(n, "fedavg", 1024.0) for n in args.clients]
        if args.scaffold:
            runs.append((max(args.clients), "scaffold", args.budget_mb))
        for n, algorithm, budget in runs:
            print(f"{n} clients, {algorithm}, {args.rounds} rounds ...", file=sys.stderr)
            rows.append(spawn(n, args.rounds, algorithm, budget, Path(tmp)))
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
