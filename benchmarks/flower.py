#!/usr/bin/env python
"""driftscope on Flower vs in-process, and Flower's own FedAvg as the peer (not part of the tests).

    python benchmarks/flower.py [--rounds 40] [--loopback-rounds 3] [--clients 10]
        [--out benchmarks/results/flower.json]

The default workload (digits, small CNN, 10 clients, Dirichlet 0.1, 2 local epochs, recording
on) three ways, one after another in this invocation:

- ``inprocess``: ``driftscope run`` (every client in turn in this process, one torch thread);
- ``driftscope-flower``: ``driftscope run --engine flower`` (Flower's simulation engine, one CPU
  per ClientApp: on 2 cores two clients train at once);
- ``flower-fedavg``: Flower's own ``FedAvg`` strategy and a plain ClientApp (torch SGD, the same
  model, partition and hyperparameters; no driftscope recording), evaluated centrally each round;
- ``loopback-deployment``: ``scripts/flower_loopback.py`` (a SuperLink and one SuperNode per
  client on 127.0.0.1, ``flwr run`` of driftscope's app, one torch thread per process) for
  ``--loopback-rounds`` rounds of the same config (each SuperNode with one long-lived ClientApp
  executor; Flower's polling makes a round cost seconds). Its per-round seconds are the
  server's, from the run file; its wall time includes the daemons' start-up.

Reported: wall time end to end, the first round (engine start-up included), and the median of the
later rounds; the per-round overhead is ``median(later rounds) - median(in-process rounds)``.
Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def inprocess(cfg, out: Path) -> dict:
    from driftscope import open_run, train

    t = time.perf_counter()
    train(cfg, out)
    wall = time.perf_counter() - t
    with open_run(out) as run:
        seconds = run.metrics.seconds.tolist()
        acc = float(run.metrics.test_accuracy.iloc[-1])
    return {"wall_s": wall, "round_s": seconds, "final_accuracy": acc}


def driftscope_flower(cfg, out: Path) -> dict:
    from driftscope import open_run
    from driftscope.flower.simulation import run_simulation

    t = time.perf_counter()
    run_simulation(cfg, out)
    wall = time.perf_counter() - t
    with open_run(out) as run:
        seconds = run.metrics.seconds.tolist()
        acc = float(run.metrics.test_accuracy.iloc[-1])
    return {"wall_s": wall, "round_s": seconds, "final_accuracy": acc}


def loopback(cfg, out: Path, rounds: int) -> dict:
    import subprocess

    from driftscope import open_run

    t = time.perf_counter()
    n = cfg.train.clients
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "flower_loopback.py"), "--nodes", str(n),
         "--out", str(out), "--run-config", f"train.rounds={rounds} train.clients={n}"],
        check=True,
    )  # fmt: skip
    wall = time.perf_counter() - t
    with open_run(out) as run:
        seconds = run.metrics.seconds.tolist()
        acc = float(run.metrics.test_accuracy.iloc[-1])
    return {"wall_s": wall, "round_s": seconds, "final_accuracy": acc}


def flower_fedavg(cfg) -> dict:
    """Flower's FedAvg with a plain PyTorch ClientApp on the same model and client data."""
    import torch
    import torch.nn.functional as F
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    from driftscope.engine.inprocess import Simulator
    from driftscope.flower.simulation import simulate_app

    sim = Simulator(cfg)  # the same partition, model and test set as the other two arms
    t = cfg.train
    client_app = ClientApp()

    @client_app.train()
    def fit(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        pid = int(context.node_config["partition-id"])
        model = sim.model  # the closure (and sim) travel to the Ray actors by value
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict(), strict=True)
        x, y = sim.client_x[pid], sim.client_y[pid]
        opt = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum)
        model.train()
        for _ in range(t.local_epochs):
            perm = torch.randperm(len(y))
            for k in range(0, len(y), t.batch_size):
                idx = perm[k : k + t.batch_size]
                opt.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
        arrays = ArrayRecord(model.state_dict())
        metrics = MetricRecord({"num-examples": len(y)})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    stamps: list[float] = []
    accs: list[float] = []

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        stamps.append(time.perf_counter())
        if server_round == 0:
            return MetricRecord({})
        flat = torch.cat([v.reshape(-1) for v in arrays.to_torch_state_dict().values()])
        loss, acc = sim.evaluate(flat)
        accs.append(acc)
        stamps[-1] = time.perf_counter()
        return MetricRecord({"accuracy": acc, "loss": loss})

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        init = ArrayRecord(sim.model.state_dict())
        strategy = FedAvg(
            fraction_evaluate=0.0, min_train_nodes=t.clients, min_available_nodes=t.clients
        )
        strategy.start(grid, init, num_rounds=t.rounds, evaluate_fn=evaluate)

    start = time.perf_counter()
    simulate_app(server_app, client_app, t.clients, client_cpus=1)
    wall = time.perf_counter() - start
    edges = [start, *stamps[1:]] if stamps else [start]
    rounds = [b - a for a, b in itertools.pairwise(edges)]
    return {"wall_s": wall, "round_s": rounds, "final_accuracy": accs[-1] if accs else None}


def summarize(name: str, result: dict, base: list[float] | None) -> dict:
    rounds = result["round_s"]
    later = rounds[1:]
    row = {
        "arm": name,
        "wall_s": round(result["wall_s"], 2),
        "first_round_s": round(rounds[0], 2) if rounds else None,
        "later_round_median_s": round(statistics.median(later), 3) if later else None,
        "final_accuracy": result["final_accuracy"],
    }
    if base and later:
        row["overhead_per_round_s"] = round(statistics.median(later) - statistics.median(base), 3)
    return row


def main() -> None:
    import torch

    from driftscope.config import RunConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--loopback-rounds", type=int, default=3, help="0: skip that arm")
    parser.add_argument("--clients", type=int, default=10, help="clients (and SuperNodes)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "flower.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = RunConfig().replace({"train.rounds": args.rounds, "train.clients": args.clients})
    with tempfile.TemporaryDirectory() as tmp:
        a = inprocess(cfg, Path(tmp) / "inprocess.h5")
        b = driftscope_flower(cfg, Path(tmp) / "flower.h5")
        c = flower_fedavg(cfg)
        d = (
            loopback(cfg, Path(tmp) / "loopback.h5", args.loopback_rounds)
            if args.loopback_rounds
            else None
        )
    base = a["round_s"][1:]
    rows = [
        summarize("inprocess", a, None),
        summarize("driftscope-flower", b, base),
        summarize("flower-fedavg (peer)", c, base),
    ]
    if d is not None:
        rows.append(summarize("loopback-deployment", d, base))
    report = {
        "rows": rows,
        "config": {"rounds": args.rounds, "clients": cfg.train.clients, "dataset": "digits"},
        "machine": {
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "flwr": __import__("flwr").__version__,
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
