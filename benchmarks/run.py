#!/usr/bin/env python
"""driftscope performance benchmarks (not part of the test suite).

    python benchmarks/run.py                 # the whole suite, < 15 min on 2 cores
    python benchmarks/run.py --quick         # smoke run, about a minute
    python benchmarks/run.py --only cka      # one section (recording, simulator, cka, io, growth)

Every figure is a ratio of two things run side by side in this process (or one invocation),
interleaved A, B, B, A, A, B, ... so that load from other processes on a shared machine hits both
arms alike; each figure is the median over repeats with its interquartile range and min/max.
Results go to ``benchmarks/results/latest.json`` (with versions, CPU, thread count, load average)
and the table between the markers in ``benchmarks/README.md`` is regenerated from that file.
Nothing here asserts on time.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # torch-cka draws a progress bar per comparison

import argparse
import copy
import datetime as dt
import itertools
import json
import math
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout: use this tree's driftscope
    sys.path.insert(0, str(ROOT))

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from driftscope import schema  # noqa: E402
from driftscope.config import RunConfig  # noqa: E402
from driftscope.data import Dataset, load_dataset  # noqa: E402
from driftscope.events import Hook, RoundEnded, RoundStarted, RunEnded, RunStarted  # noqa: E402
from driftscope.metrics.cka import pairwise_cka  # noqa: E402
from driftscope.metrics.gram import centred_gram  # noqa: E402
from driftscope.models import build_model  # noqa: E402
from driftscope.reader import open_run  # noqa: E402
from driftscope.recorder import CKA_KINDS, Recorder, capture_activations  # noqa: E402
from driftscope.runfile import METRIC_NAMES, RunWriter, append  # noqa: E402
from driftscope.seeding import derive_seed, torch_generator  # noqa: E402
from driftscope.simulator import Simulator  # noqa: E402
from driftscope.training import train  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
README = BENCH_DIR / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
SECTIONS = ("recording", "simulator", "cka", "io", "growth")


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


# ------------------------------------------------------------------------------ 1. recording
def bench_recording(quick: bool, tmp: Path) -> dict[str, Any]:
    """Same run (same seed) with recording off and on, as ``driftscope.training.train`` runs it."""
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}

    def timed_train(cfg: RunConfig, ds: Dataset, name: str) -> Callable[[], None]:
        def go() -> None:
            path = tmp / f"rec-{name}.h5"
            train(cfg, path, dataset=ds, overwrite=True)
            extra.setdefault("file_mb", {})[name] = round(path.stat().st_size / 2**20, 2)

        return go

    # --- embedded default: digits, small_cnn
    digits = load_dataset("digits")
    base = RunConfig().replace({"train.rounds": 3 if quick else 10})
    rc = base.record
    arms = {
        "off": base.replace({"record.enabled": False}),
        "default": base,
        "default_no_cka": base.replace({"record.probe_size": 0}),
        "everything": base.replace(
            {"record.updates_every": 1, "record.update_dtype": "float32", "record.cka_every": 1}
        ),
        "everything_no_cka": base.replace(
            {"record.updates_every": 1, "record.update_dtype": "float32", "record.probe_size": 0}
        ),
    }
    train(base.replace({"train.rounds": 1}), tmp / "warmup.h5", dataset=digits, overwrite=True)
    reps = 2 if quick else 5
    log(
        f"recording: digits/small_cnn, {base.train.rounds} rounds, {reps} repeats x {len(arms)} arms"
    )
    t = interleaved({k: timed_train(c, digits, f"digits-{k}") for k, c in arms.items()}, reps)
    # recording must not change training: same metrics with and without it
    with open_run(tmp / "rec-digits-off.h5") as a, open_run(tmp / "rec-digits-default.h5") as b:
        same = bool(np.array_equal(a.metrics["test_loss"], b.metrics["test_loss"]))
    extra["digits_metrics_identical_on_off"] = same
    extra["digits_seconds"] = {k: summarise(v)["median"] for k, v in t.items()}
    rows += [
        row(
            f"Recording overhead, default policy (digits, small_cnn, {base.train.rounds} rounds)",
            ratios(t["default"], t["off"]),
            ("<=", 1.05),
            note=(
                f"Grams every round; updates f32 every {rc.updates_every} rounds; probe CKA "
                f"({rc.probe_size} inputs, 3 kinds) every {rc.cka_every} rounds"
            ),
        ),
        row(
            "  same, probe CKA off (probe_size=0): Grams + updates only",
            ratios(t["default_no_cka"], t["off"]),
            ("<=", 1.05),
            note="diagnostic: isolates the cost of probe CKA",
        ),
        row(
            "Recording everything every round (updates f32, probe CKA every round)",
            ratios(t["everything"], t["off"]),
            ("<=", 1.10),
            note=f"probe CKA on {rc.probe_size} inputs x 11 models x 7 layers every round",
        ),
        row(
            "  same, probe CKA off: Grams + all updates every round",
            ratios(t["everything_no_cka"], t["off"]),
            ("<=", 1.10),
            note="diagnostic: everything but probe CKA",
        ),
    ]

    # --- paper-scale policy on VGG-11 with CIFAR-shaped synthetic data, a few local steps.
    # The policy a paper-scale run would use: Grams every round, head updates float16 every
    # round, probe CKA every 10 rounds. A few-round benchmark cannot amortise "every 10 rounds",
    # so CKA is timed every round in its own arm and the policy's cost is derived from the two.
    cifar = synthetic_cifar(n_train=320 if quick else 640, n_test=256)
    vbase = RunConfig().replace(
        {
            "model.name": "vgg11",
            "data.partition": "iid",
            "train.clients": 2 if quick else 5,
            "train.local_steps": 1 if quick else 2,
            "train.batch_size": 32,
            "train.rounds": 1 if quick else 3,
            "record.every": 1,
            "record.updates_every": 1,
            "record.update_dtype": "float16",
            "record.update_layers": ["classifier.*"],
            "record.probe_size": 128,
            "record.cka_every": 1,
        }
    )
    cka_every = 10
    varms = {
        "off": vbase.replace({"record.enabled": False}),
        "paper_no_cka": vbase.replace({"record.probe_size": 0}),
        "paper_cka_every_round": vbase,
    }
    vreps = 1 if quick else 3
    log(
        f"recording: vgg11 synthetic CIFAR, {vbase.train.clients} clients x "
        f"{vbase.train.local_steps} steps x {vbase.train.rounds} rounds, {vreps} repeats x 3 arms"
    )
    vt = interleaved({k: timed_train(c, cifar, f"vgg-{k}") for k, c in varms.items()}, vreps)
    extra["vgg_seconds"] = {k: summarise(v)["median"] for k, v in vt.items()}
    no_cka = ratios(vt["paper_no_cka"], vt["off"])
    every = ratios(vt["paper_cka_every_round"], vt["off"])
    derived = [a + (b - a) / cka_every for a, b in zip(no_cka, every)]
    rows += [
        row(
            "Recording overhead, paper-scale policy (VGG-11, CIFAR-shaped, 5 clients x 2 steps)",
            derived,
            ("<=", 1.05),
            note=(
                f"Grams every round, head updates f16 every round, probe CKA (128 inputs) every "
                f"{cka_every} rounds: derived per repeat as A + (B - A) / {cka_every} from the rows below"
            ),
        ),
        row(
            "  A: Grams + head updates f16, every round (measured)",
            no_cka,
            ("<=", 1.05),
        ),
        row(
            "  B: same + probe CKA every round (measured)",
            every,
            None,
            note=(
                "a CKA round runs 6 models x 128 probe inputs forward; a training round 5 x 2 x 32 "
                "inputs forward and backward (about 960 forward-equivalents)"
            ),
        ),
    ]
    config = {
        "digits": {k: c.record.__dict__ for k, c in arms.items()} | {"train": base.train.__dict__},
        "vgg11": {k: c.record.__dict__ for k, c in varms.items()}
        | {"train": vbase.train.__dict__, "n_train": len(cifar.train_y), "n_test": 128},
    }
    return {"rows": rows, "config": config, "extra": extra}


# ------------------------------------------------------------------------------ 2. simulator
def bench_simulator(quick: bool, tmp: Path) -> dict[str, Any]:
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
    cfg: RunConfig, ds: Dataset, reps: int
) -> tuple[list[float], list[float], list[float], float]:
    t = cfg.train
    # the bare loop below implements exactly this case
    assert t.algorithm == "fedavg" and t.momentum == 0 and t.weight_decay == 0
    assert t.weighting == "uniform" and t.client_fraction == 1 and t.server_lr == 1
    assert not t.drop_last
    sim = Simulator(cfg, ds)
    assert not sim.augment
    model = build_model(cfg.model.name, ds.input_shape, ds.num_classes)
    dropout = any(isinstance(m, torch.nn.Dropout) for m in model.modules())

    def bare_round(r: int, global_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        states = []
        for c in range(t.clients):
            model.load_state_dict(global_state)
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=t.lr)
            x, y = sim.client_x[c], sim.client_y[c]
            n = len(y)
            b = min(t.batch_size, n)
            steps = t.local_steps or t.local_epochs * math.ceil(n / b)
            gen = torch_generator(cfg.seed, "batches", r, c)
            if dropout:  # the simulator's dropout stream for (round, client)
                torch.manual_seed(derive_seed(cfg.seed, "dropout", r, c))
            done = 0
            while done < steps:
                perm = torch.randperm(n, generator=gen)
                for k in range(min(math.ceil(n / b), steps - done)):
                    idx = perm[k * b : (k + 1) * b]
                    opt.zero_grad()
                    F.cross_entropy(model(x[idx]), y[idx]).backward()
                    opt.step()
                    done += 1
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
            t0 = time.perf_counter()
            fn()
            (ts if name == "sim" else tb).append(time.perf_counter() - t0)
        got = flat_to_state(sim, sim.global_params)
        diffs.append(max(float((got[k] - out["bare"][k]).abs().max()) for k in got))
    return ts, tb, diffs, float(sim.global_params.abs().max())


# ------------------------------------------------------------------------------------- 3. CKA
def bench_cka(quick: bool, tmp: Path) -> dict[str, Any]:
    """Per-layer cross-client CKA of 10 client models on a 512-input probe: driftscope's
    recorder path against torch-cka doing the same comparisons (45 pairs, all layers)."""
    from torch.utils.data import DataLoader, TensorDataset
    from torch_cka import CKA as TorchCKA

    ds = load_dataset("digits")
    n_probe = 512
    clients = 10
    cfg = RunConfig().replace(
        {"train.rounds": 3, "train.clients": clients, "record.enabled": False}
    )
    sim = Simulator(cfg, ds)
    trained: dict[int, torch.Tensor] = {}

    class Grab(Hook):
        def on_client_end(self, event):
            if event.round == cfg.train.rounds - 1:
                trained[event.client] = event.params.clone()

    sim.run([Grab()])
    models = []
    for c in range(clients):
        m = build_model(cfg.model.name, ds.input_shape, ds.num_classes)
        m.load_state_dict(flat_to_state(sim, trained[c]))
        models.append(m.eval())
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    idx = torch.randperm(len(ds.train_y), generator=torch_generator(0, "bench-probe"))[:n_probe]
    probe = ((ds.train_x - mean) / std)[idx]
    layers = [layer.name for layer in sim.layout.layers]
    pairs = list(itertools.combinations(range(clients), 2))

    @torch.no_grad()
    def ours() -> dict[str, tuple[np.ndarray, np.ndarray]]:
        grams: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
        for m in models:
            with capture_activations(m, layers) as acts:
                m(probe)
                for name in layers:
                    grams[name].append(centred_gram(acts[name]))
        out = {}
        for name in layers:
            g = torch.stack(grams[name]).numpy()
            out[name] = (pairwise_cka(g), pairwise_cka(g, debiased=True))
        return out

    def theirs(ms: list[torch.nn.Module], x: torch.Tensor, which=pairs) -> dict[str, np.ndarray]:
        loader = DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=n_probe)
        out = {name: np.eye(clients) for name in layers}
        for i, j in which:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                c = TorchCKA(ms[i], ms[j], f"client{i}", f"client{j}", layers, layers)
                c.compare(loader, loader)
            mat = c.export()["CKA"]  # (layers, layers): layer k of model i vs layer l of model j
            for k, name in enumerate(layers):
                out[name][i, j] = out[name][j, i] = float(mat[k, k])
            for m in (ms[i], ms[j]):  # torch-cka never removes its hooks
                for mod in m.modules():
                    mod._forward_hooks.clear()
        return out

    reps = 1 if quick else 3
    log(f"cka: driftscope vs torch-cka, 10 models, {n_probe}-input probe, {reps} repeats")
    res: dict[str, Any] = {}

    def a() -> None:
        res["ours"] = ours()

    def b() -> None:
        res["theirs"] = theirs(models, probe, pairs[:3] if quick else pairs)

    a()  # warm-up
    t = interleaved({"driftscope": a, "torch_cka": b}, reps)
    speedup = ratios(t["torch_cka"], t["driftscope"])
    if quick:
        speedup = [s * len(pairs) / 3 for s in speedup]  # quick mode ran 3 of the 45 pairs

    # agreement of debiased CKA, per layer, with torch-cka in float32 (its default) and float64
    check = pairs[:3] if quick else pairs
    log("cka: torch-cka in float64 for the agreement check")
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # torch-cka builds torch.ones(N, 1) in the default
    try:
        t64 = theirs([copy.deepcopy(m).double() for m in models], probe.double(), check)
    finally:
        torch.set_default_dtype(prev)
    iu = tuple(np.array(check).T)
    per_layer = {}
    for k, name in enumerate(layers):
        deb = res["ours"][name][1]
        per_layer[sim.layout.layers[k].label] = {
            "vs_torch_cka_f32": float(np.abs(deb[iu] - res["theirs"][name][iu]).max()),
            "vs_torch_cka_f64": float(np.abs(deb[iu] - t64[name][iu]).max()),
            "cancellation": cancellation(models, probe, name),
            "cka_range": [float(deb[iu].min()), float(deb[iu].max())],
        }
    worst32 = max(v["vs_torch_cka_f32"] for v in per_layer.values())
    worst64 = max(v["vs_torch_cka_f64"] for v in per_layer.values())
    bad = [k for k, v in per_layer.items() if v["vs_torch_cka_f32"] > 1e-4]
    rows = [
        row(
            "CKA, 10 clients x 45 pairs x 7 layers, 512 probe: torch-cka time / driftscope time",
            speedup,
            (">=", 20),
            note="driftscope: linear + debiased; torch-cka: debiased, one batch of 512, no_grad",
        ),
        row(
            "  debiased CKA agreement with torch-cka run in float64 (max abs diff)",
            [worst64],
            ("<=", 1e-4),
            unit="",
        ),
        row(
            "  debiased CKA agreement with torch-cka in float32, its default (max abs diff)",
            [worst32],
            None,
            unit="",
            note=("> 1e-4 on " + ", ".join(bad)) if bad else "all layers within 1e-4",
        ),
    ]
    return {
        "rows": rows,
        "config": {
            "model": "small_cnn on digits (1x8x8), FedAvg 3 rounds, last round's 10 client models",
            "probe": f"{n_probe} normalised digits training images",
            "layers": layers,
            "torch_cka": "CKA(model_i, model_j, layers, layers).compare(loader, loader), "
            "batch_size=512 (one batch: same estimator as driftscope's full-probe debiased CKA), "
            "under torch.no_grad(); the diagonal of its layer x layer matrix is used",
            "pairs_compared": len(check),
        },
        "extra": {
            "seconds": {k: summarise(v) for k, v in t.items()},
            "per_layer": per_layer,
        },
    }


@torch.no_grad()
def cancellation(models: list[torch.nn.Module], probe: torch.Tensor, layer: str) -> float:
    """How much torch-cka's literal unbiased-HSIC formula cancels for HSIC(K, K) on this layer:
    (|tr K~K~| + |sum term| + |cross term|) / |result|, max over the models (float64).
    float32 loses about log10(this) of its ~7 significant digits."""
    worst = 0.0
    for m in models:
        with capture_activations(m, [layer]) as acts:
            m(probe)
            x = acts[layer].to(torch.float64)
        k = x @ x.T
        k.fill_diagonal_(0)
        n = k.shape[0]
        one = torch.ones(n, 1, dtype=torch.float64)
        t1 = float(torch.trace(k @ k))
        t2 = float(one.T @ k @ one) ** 2 / ((n - 1) * (n - 2))
        t3 = float(one.T @ k @ k @ one) * 2 / (n - 2)
        worst = max(worst, (abs(t1) + abs(t2) + abs(t3)) / abs(t1 + t2 - t3))
    return worst


# -------------------------------------------------------------------------------------- 4. I/O
def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def bench_io(quick: bool, tmp: Path) -> dict[str, Any]:
    """Updates written through the recorder's append path vs a plain sequential write of the same
    bytes; reading one layer across rounds and clients with Run.updates vs plain reads."""
    s = 5
    rounds = 1 if quick else 2
    ds = synthetic_cifar(64, 16)
    cfg = RunConfig().replace(
        {
            "model.name": "vgg11",
            "data.partition": "iid",
            "train.clients": s,
            "record.updates_every": 1,
            "record.update_dtype": "float32",
            "record.probe_size": 0,
        }
    )
    sim = Simulator(cfg, ds)
    dtype = np.dtype(cfg.record.update_dtype)
    rng = np.random.default_rng(0)
    d = torch.from_numpy(rng.standard_normal((s, sim.layout.numel), dtype=np.float32))
    nbytes = rounds * s * sim.layout.numel * dtype.itemsize
    # Each arm rewrites its own file (unlinked first). Page cache freed by the unlink is reused
    # at once; fresh pages are not: on this VM (free-page reporting) a write into never-used
    # memory ran at ~200 MiB/s instead of ~2 GiB/s, whichever arm it hit.
    io_dir = tmp / "io"
    io_dir.mkdir()
    made: list[Path] = []

    def fresh(suffix: str) -> Path:
        path = io_dir / f"arm{suffix}"
        path.unlink(missing_ok=True)
        if path not in made:
            made.append(path)
        return path

    summary = RoundEnded(
        0, tuple(range(s)), 0.0, 0.0, 0.0, 0.0, 0, 0, 0.0, {}, {}, torch.empty(0), {}
    )

    def h5_write(sync: bool, suffix: str) -> float:
        path = fresh(suffix)
        os.sync()  # start each arm with no dirty pages left by the other (not timed)
        writer = RunWriter.create(path, sim)
        # creates the datasets as in a real run
        rec = Recorder(writer, cfg.record, sim.layout, s, sim.num_clients, sim.build_model)
        writer.start_swmr()
        updates = writer.file[schema.UPDATES]
        t0 = time.perf_counter()
        for r in range(rounds):  # Recorder.on_round_end's update-storing lines
            for p in rec.stored:
                block = d[:, p.offset : p.offset + p.numel].numpy()
                append(updates[p.name], block.astype(cfg.record.update_dtype, copy=False))
            append(writer.file[schema.UPDATE_ROUND], r)
            writer.commit(replace(summary, round=r))  # metrics row (the commit marker) + flush
        writer.close()
        if sync:
            fsync_path(path)
        return time.perf_counter() - t0

    def raw_write(sync: bool, suffix: str) -> float:
        path = fresh(suffix)
        os.sync()
        f = open(path, "wb")
        t0 = time.perf_counter()
        for _ in range(rounds):
            for p in sim.layout.params:
                block = d[:, p.offset : p.offset + p.numel].numpy()
                f.write(np.ascontiguousarray(block.astype(dtype, copy=False)))
            f.flush()
        if sync:
            os.fsync(f.fileno())
        f.close()
        return time.perf_counter() - t0

    reps = 2 if quick else 7
    log(f"io: VGG-11 updates, {s} clients x {rounds} rounds = {nbytes / 2**20:.0f} MiB per write")
    for suffix in (".h5", "-sync.h5"):  # warm-up: each arm's file once
        h5_write(False, suffix)
    for suffix in (".bin", "-sync.bin"):
        raw_write(False, suffix)
    w = interleaved(
        {
            "h5": lambda: h5_write(False, ".h5"),
            "raw": lambda: raw_write(False, ".bin"),
            "h5_sync": lambda: h5_write(True, "-sync.h5"),
            "raw_sync": lambda: raw_write(True, "-sync.bin"),
        },
        reps,
    )

    # read one layer (weight + bias) across all rounds and clients
    big = max(sim.layout.layers, key=lambda ly: ly.numel)
    params = [sim.layout.param(n) for n in big.params]
    layer_bytes = rounds * s * big.numel * dtype.itemsize
    run = open_run(io_dir / "arm.h5")
    raw = open(io_dir / "arm.bin", "rb")
    row_bytes = s * sim.layout.numel * dtype.itemsize

    def h5_read() -> None:
        out = run.updates(big.name)
        assert out.shape == (rounds, s, big.numel)

    def raw_read() -> None:
        out = np.empty((rounds, s, big.numel), dtype=dtype)
        col = 0
        for p in params:
            for r in range(rounds):
                raw.seek(r * row_bytes + s * p.offset * dtype.itemsize)
                buf = np.empty((s, p.numel), dtype=dtype)
                raw.readinto(memoryview(buf).cast("B"))
                out[r, :, col : col + p.numel] = buf
            col += p.numel

    h5_read()
    rd = interleaved({"h5": h5_read, "raw": raw_read}, 3 if quick else 7)
    run.close()
    raw.close()
    mb = 2**20

    def write_row(label: str, h5: str, raw: str) -> dict[str, Any]:
        def rate(key: str) -> float:
            return nbytes / mb / summarise(w[key])["median"]

        return row(
            f"Run-file write throughput / plain write ({label})",
            ratios(w[raw], w[h5]),
            (">=", 0.70),
            note=f"h5 {rate(h5):.0f} MiB/s, plain {rate(raw):.0f} MiB/s",
        )

    rows = [
        write_row("page cache, no fsync", "h5", "raw"),
        write_row("fsync at end, both", "h5_sync", "raw_sync"),
        row(
            f"Run.updates('{big.name}') read, MiB/s (warm page cache)",
            [layer_bytes / mb / v for v in rd["h5"]],
            None,
            unit=" MiB/s",
            note=f"plain seek+read of the same bytes: "
            f"{layer_bytes / mb / summarise(rd['raw'])['median']:.0f} MiB/s; "
            f"ratio {summarise(ratios(rd['raw'], rd['h5']))['median']:.2f}",
        ),
    ]
    for p in made:
        p.unlink()
    return {
        "rows": rows,
        "config": {
            "model": "vgg11 (9,750,922 params)",
            "clients": s,
            "rounds": rounds,
            "dtype": str(dtype),
            "bytes_per_write": nbytes,
            "read_layer": big.name,
            "read_bytes": layer_bytes,
            "disk": str(tmp),
        },
        "extra": {
            "write_s": {k: summarise(v) for k, v in w.items()},
            "read_s": {k: summarise(v) for k, v in rd.items()},
        },
    }


# ----------------------------------------------------------------------------------- 5. growth
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
    """Payload the storage policy implies for a whole run (no HDF5 overhead or chunk rounding)."""
    rc, s, n = cfg.record, cfg.train.clients_per_round, cfg.train.clients
    lay = sim.layout
    # resume state: two slots of the global model and the algorithm's state (control variates)
    total = 2 * sum(v.numel() * v.element_size() for v in sim.state().values())
    for r in range(cfg.train.rounds):
        total += 8 * len(METRIC_NAMES) + 8 + 2 * 8 * n  # metrics, metrics/round, clients/*
        if not rc.enabled or r % rc.every:
            continue
        total += len(lay.params) * s * s * 8 + s * 8 + 8  # gram/*, clients, round
        if rc.updates_every and r % (rc.every * rc.updates_every) == 0:
            stored = [p for p in sim.layout.params if _stored(p.name, rc.update_layers)]
            total += sum(p.numel for p in stored) * s * np.dtype(rc.update_dtype).itemsize + 8
        if rc.probe_size and r % (rc.every * rc.cka_every) == 0:
            total += len(CKA_KINDS) * len(lay.layers) * (s + 1) ** 2 * 8 + 8
    return total


def _stored(name: str, patterns: tuple[str, ...]) -> bool:
    import fnmatch

    return any(fnmatch.fnmatchcase(name, pat) for pat in patterns)


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
    cmd = [sys.executable, __file__, "--threads", str(threads), "--child"]
    cmd += [f"{clients},{rounds},{out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"growth child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_growth(quick: bool, tmp: Path, threads: int) -> dict[str, Any]:
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


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run (~1 min), not representative")
    ap.add_argument("--only", choices=SECTIONS, action="append", help="run only this section")
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
        clients, rounds, out = args.child.split(",", 2)
        print(json.dumps(child_growth(int(clients), int(rounds), out)))
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
            if section == "growth":
                out = bench_growth(args.quick, tmp, args.threads)
            else:
                out = globals()[f"bench_{section}"](args.quick, tmp)
            out["seconds"] = round(time.perf_counter() - t0, 1)
            out["environment"] = {"date": results["environment"]["date"], "quick": args.quick}
            results["sections"][section] = out
            log(f"{section}: done in {out['seconds']} s")
            for r in out["rows"]:
                log(
                    f"  {r['name'].strip()}: {r['median']:.4g} (target {r['target']}, met {r['met']})"
                )
    results["environment"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["environment"]["total_seconds"] = round(time.perf_counter() - t_all, 1)
    latest.write_text(json.dumps(results, indent=1, default=str) + "\n")
    write_readme(results)
    log(f"wrote {latest.relative_to(ROOT)} and the table in {README.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
