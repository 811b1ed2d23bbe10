#!/usr/bin/env python
"""Sequential vs batched clients (``train.batched``): a FedAvg round's time at 10, 100 and 1,000
clients, and the bare-PyTorch floor for the same SGD steps (not part of the test suite).

    python benchmarks/batched_clients.py            # digits- and MNIST-shaped, 10/100/1000 clients
    python benchmarks/batched_clients.py --quick    # smoke run
    python benchmarks/batched_clients.py --clients 10 100 --shapes digits
    python benchmarks/batched_clients.py --device cuda   # on a GPU (times synchronise the device)

Each case builds one simulator per arm on the same synthetic data (iid, ``--samples`` per client,
one local epoch of batch ``--batch``, small_cnn, no evaluation, no recording) and times
``run_round()``: "sequential" (``train.batched = off``), "batched" (``on``) and "bare" (a plain
loop over clients: ``load_state_dict``, ``torch.optim.SGD``, the simulator's batch indices,
forward/backward/step, mean of the state dicts). Arms are interleaved (A B C, C B A, ...) so that
load from other processes hits all alike; each figure is the median over repeats. One torch
thread unless ``--threads``. Writes ``benchmarks/results/batched_clients.json`` (gitignored).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from driftscope.config import RunConfig  # noqa: E402
from driftscope.data import Dataset  # noqa: E402
from driftscope.engine.inprocess import Simulator  # noqa: E402
from driftscope.models.registry import build_model  # noqa: E402
from driftscope.seeding import torch_generator  # noqa: E402

SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28)}


def synthetic(shape: tuple[int, int, int], n_train: int, seed: int = 0) -> Dataset:
    """Random images of ``shape`` in [0, 1] with 10 random labels (no augmentation)."""
    g = torch.Generator().manual_seed(seed)
    return Dataset(
        f"synthetic{shape[1]}",
        torch.rand(n_train, *shape, generator=g),
        torch.randint(0, 10, (n_train,), generator=g),
        torch.rand(16, *shape, generator=g),
        torch.randint(0, 10, (16,), generator=g),
        num_classes=10,
        mean=(0.5,) * shape[0],
        std=(0.25,) * shape[0],
        augment=False,
    )


def bare_round(sim: Simulator, model: torch.nn.Module, r: int, x: torch.Tensor) -> torch.Tensor:
    """The same SGD steps as the simulator's FedAvg round, in plain PyTorch."""
    t = sim.cfg.train
    layout = sim.layout
    state = {p.name: x[p.offset : p.offset + p.numel].view(p.shape) for p in layout.params}
    total = torch.zeros_like(x)
    for c in range(t.clients):
        model.load_state_dict(state)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=t.lr)
        xs, ys = sim.client_x[c], sim.client_y[c]
        device = x.device
        n = len(ys)
        b = min(t.batch_size, n)
        steps = t.local_epochs * math.ceil(n / b)
        gen = torch_generator(sim.cfg.seed, "batches", r, c)
        done = 0
        while done < steps:
            perm = torch.randperm(n, generator=gen)
            for k in range(min(math.ceil(n / b), steps - done)):
                idx = perm[k * b : (k + 1) * b]
                opt.zero_grad()
                xb, yb = xs[idx.to(xs.device)].to(device), ys[idx.to(ys.device)].to(device)
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
                done += 1
        total += torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return total / t.clients


def run_case(shape_name: str, clients: int, args: argparse.Namespace) -> dict[str, Any]:
    shape = SHAPES[shape_name]
    ds = synthetic(shape, clients * args.samples)
    base = RunConfig().replace(
        {
            "data.partition": "iid",
            "train.clients": clients,
            "train.local_epochs": 1,
            "train.batch_size": args.batch,
            "train.rounds": 100_000,
            "train.eval_every": 100_000,
            "record.enabled": False,
            "train.device": args.device,
        }
    )
    sims = {m: Simulator(base.replace({"train.batched": m}), ds) for m in ("off", "on")}
    x0 = sims["off"].global_params.clone()
    model = build_model("small_cnn", ds.input_shape, ds.num_classes).to(x0.device)
    sync = torch.cuda.synchronize if x0.device.type == "cuda" else (lambda: None)
    out: dict[str, list[float]] = {"sequential": [], "batched": [], "bare": []}
    diffs: list[float] = []

    def seq() -> None:
        sims["off"].round = 0
        sims["off"].global_params = x0.clone()
        sims["off"].run_round()

    def bat() -> None:
        sims["on"].round = 0
        sims["on"].global_params = x0.clone()
        sims["on"].run_round()

    res: dict[str, torch.Tensor] = {}

    def bare() -> None:
        res["bare"] = bare_round(sims["off"], model, 0, x0)

    arms = [("sequential", seq), ("batched", bat), ("bare", bare)]
    reps = args.repeats if clients < 1000 else max(1, args.repeats - 1)
    if clients < 1000:  # warm-up (a 1,000-client case runs after smaller ones, already warm)
        for _name, fn in arms:
            fn()
    for rep in range(reps):
        for name, fn in arms[:: 1 if rep % 2 == 0 else -1]:
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            out[name].append(time.perf_counter() - t0)
        diffs.append(float((sims["off"].global_params - sims["on"].global_params).abs().max()))
    steps = clients * math.ceil(args.samples / args.batch)
    med = {k: statistics.median(v) for k, v in out.items()}
    result = {
        "shape": shape_name,
        "clients": clients,
        "steps_per_round": steps,
        "round_s": out,
        "median_s": med,
        "speedup_batched_vs_sequential": med["sequential"] / med["batched"],
        "sequential_vs_bare": med["sequential"] / med["bare"],
        "batched_vs_bare": med["batched"] / med["bare"],
        "max_abs_diff_seq_vs_batched": max(diffs),
    }
    print(
        f"{shape_name:6s} {clients:5d} clients: sequential {med['sequential']:.3f} s, "
        f"batched {med['batched']:.3f} s, bare {med['bare']:.3f} s "
        f"(batched {result['speedup_batched_vs_sequential']:.2f}x faster; "
        f"max |dx| {max(diffs):.1e})",
        flush=True,
    )
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--samples", type=int, default=32, help="samples per client")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu", help="train.device of every arm (default cpu)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "batched_clients.json"))
    args = p.parse_args()
    if args.quick:
        args.clients, args.repeats = [10, 100], 1
    torch.set_num_threads(args.threads)
    cases = [run_case(s, n, args) for s in args.shapes for n in args.clients]
    env = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "loadavg": os.getloadavg(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"env": env, "args": vars(args), "cases": cases}, indent=1)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
