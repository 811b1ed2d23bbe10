"""3. Per-layer cross-client CKA: driftscope's recorder path against torch-cka."""

from __future__ import annotations

import copy
import itertools
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.harness import (
    flat_to_state,
    interleaved,
    log,
    ratios,
    row,
    summarise,
)
from driftscope.config import RunConfig
from driftscope.data import load_dataset
from driftscope.engine.activations import capture_activations
from driftscope.engine.events import Hook
from driftscope.engine.inprocess import Simulator
from driftscope.metrics.cka import pairwise_cka
from driftscope.metrics.gram import centred_gram
from driftscope.models.registry import build_model
from driftscope.seeding import torch_generator


def bench(quick: bool, tmp: Path, threads: int) -> dict[str, Any]:
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

    precision = RunConfig().record.cka_precision  # the recorder's default

    @torch.no_grad()
    def ours(precision: str = precision) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        grams: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
        for m in models:
            with capture_activations(m, layers) as acts:
                m(probe)
                for name in layers:
                    grams[name].append(centred_gram(acts[name], precision))
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
    exact = ours("float64")  # the same comparisons with float64 probe Grams
    f32_vs_f64 = max(
        float(np.nanmax(np.abs(np.asarray(res["ours"][n][i]) - exact[n][i])))
        for n in layers
        for i in (0, 1)
    )
    worst32 = max(v["vs_torch_cka_f32"] for v in per_layer.values())
    worst64 = max(v["vs_torch_cka_f64"] for v in per_layer.values())
    bad = [k for k, v in per_layer.items() if v["vs_torch_cka_f32"] > 1e-4]
    rows = [
        row(
            "CKA, 10 clients x 45 pairs x 7 layers, 512 probe: torch-cka time / driftscope time",
            speedup,
            (">=", 20),
            note=(
                f"driftscope: linear + debiased, {precision} probe Grams (the recorder's "
                "default); torch-cka: debiased, one batch of 512, no_grad"
            ),
        ),
        row(
            f"  driftscope's {precision} probe Grams vs float64 ones, linear + debiased CKA "
            "(max abs diff)",
            [f32_vs_f64],
            None,
            unit="",
            note="digits client models after 3 rounds, 7 layers, 45 pairs; bound and VGG-11 "
            "figures: recording section",
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
