"""2. The simulator's FedAvg round against a bare PyTorch loop doing the same SGD steps."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.harness import (
    flat_to_state,
    log,
    ratios,
    row,
    summarise,
    synthetic_cifar,
)
from driftscope.config import RunConfig
from driftscope.data import Dataset, load_dataset
from driftscope.data.transforms import augment_batch
from driftscope.engine.inprocess import Simulator
from driftscope.engine.local import batches
from driftscope.models.registry import build_model
from driftscope.seeding import derive_seed, torch_generator


def bench(quick: bool, tmp: Path, threads: int) -> dict[str, Any]:
    """A FedAvg round of the simulator against a bare PyTorch loop doing the same SGD steps."""
    digits = RunConfig().replace({"train.rounds": 100_000, "train.eval_every": 100_000})
    vgg = digits.replace(
        {
            "model.name": "vgg11",
            "data.partition": "iid",
            "train.clients": 2 if quick else 5,
            "train.local_steps": 1 if quick else 2,
        }
    )
    cases = [
        ("digits, small_cnn, 10 clients x 2 epochs", digits, load_dataset("digits"), 3, 15),
        (
            f"VGG-11 CIFAR-shaped, {vgg.train.clients} clients x {vgg.train.local_steps} steps",
            vgg,
            synthetic_cifar(320, 16),
            1,
            6,
        ),
    ]
    rows, config, extra = [], {}, {}
    for label, cfg, ds, quick_reps, full_reps in cases:
        reps = quick_reps if quick else full_reps
        log(f"simulator: FedAvg round vs bare loop, {label}, {reps} repeats")
        ts, tb, diffs, scale = _sim_vs_bare(cfg, ds, reps)
        rows.append(
            row(
                f"Simulator FedAvg round / bare PyTorch loop ({label})",
                ratios(ts, tb),
                ("<=", 1.10),
                note=f"same batches, same SGD; new global models agree to max abs diff "
                f"{max(diffs):.1e} (max abs param {scale:.2f})",
            )
        )
        config[label] = cfg.train.__dict__ | {"model": cfg.model.name}
        extra[label] = {
            "sim_round_s": summarise(ts),
            "bare_round_s": summarise(tb),
            "max_abs_diff_per_round": diffs,
        }
    return {"rows": rows, "config": config, "extra": extra}


def _sim_vs_bare(
    cfg: RunConfig, ds: Dataset, reps: int, sync: Callable[[], None] = lambda: None
) -> tuple[list[float], list[float], list[float], float]:
    """Seconds of ``reps`` simulator rounds and of a bare PyTorch loop doing the same SGD steps
    (interleaved), on the config's device, with the dataset's augmentation when it has one.
    ``sync`` waits for the device before and after each timed arm (``torch.cuda.synchronize``)."""
    t = cfg.train
    # the bare loop below implements exactly this case
    assert t.algorithm == "fedavg" and t.momentum == 0 and t.weight_decay == 0
    assert t.weighting == "uniform" and t.client_fraction == 1 and t.server_lr == 1
    sim = Simulator(cfg, ds)
    aug = sim.augmentation
    model = build_model(cfg.model.name, ds.input_shape, ds.num_classes).to(sim.device)
    dropout = any(isinstance(m, torch.nn.Dropout) for m in model.modules())

    def bare_round(r: int, global_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        states = []
        for c in range(t.clients):
            model.load_state_dict(global_state)
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=t.lr)
            x, y = sim.client_x[c], sim.client_y[c]
            gen = torch_generator(cfg.seed, "batches", r, c)
            if dropout:  # the simulator's dropout stream for (round, client)
                torch.manual_seed(derive_seed(cfg.seed, "dropout", r, c))
            # the simulator's batch indices (and augmentation draws) from the same generator
            for idx in batches(len(y), t, gen, x.device):
                xb = x[idx].to(sim.device, non_blocking=True)
                yb = y[idx].to(sim.device, non_blocking=True)
                if aug is not None:
                    xb = (augment_batch(xb, aug.padding, gen) - aug.mean) / aug.std
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {k: torch.stack([s[k] for s in states]).mean(0) for k in states[0]}

    sim.run_round()  # warm-up (both arms' kernels)
    bare_round(0, flat_to_state(sim, sim.global_params))
    ts: list[float] = []
    tb: list[float] = []
    diffs: list[float] = []
    for rep in range(reps):
        r = sim.round
        before = flat_to_state(sim, sim.global_params)
        out: dict[str, Any] = {}

        def a() -> None:
            sim.run_round()

        def b(r: int = r, before: dict = before, out: dict = out) -> None:
            out["bare"] = bare_round(r, before)

        for name, fn in [("sim", a), ("bare", b)][:: 1 if rep % 2 == 0 else -1]:
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            (ts if name == "sim" else tb).append(time.perf_counter() - t0)
        got = flat_to_state(sim, sim.global_params)
        diffs.append(max(float((got[k] - out["bare"][k]).abs().max()) for k in got))
    return ts, tb, diffs, float(sim.global_params.abs().max())
