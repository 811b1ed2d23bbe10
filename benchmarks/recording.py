"""1. Recording overhead: the same run with recording off and on, as ``train`` runs it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import (
    interleaved,
    log,
    ratios,
    row,
    summarise,
    synthetic_cifar,
)
from driftscope.config import RunConfig
from driftscope.data import Dataset, load_dataset
from driftscope.engine.training import train
from driftscope.runfile.reader import open_run

# The policy a paper-scale run would use: Grams every round, head updates float16 every round,
# probe CKA (128 inputs, float32 probe Grams) every 10 rounds
PAPER_POLICY: dict[str, Any] = {
    "record.every": 1,
    "record.updates_every": 1,
    "record.update_dtype": "float16",
    "record.update_layers": ["classifier.*"],
    "record.probe_size": 128,
    "record.cka_every": 10,
    "record.cka_precision": "float32",
}


def bench(quick: bool, tmp: Path, threads: int) -> dict[str, Any]:
    """Same run (same seed) with recording off and on, as ``driftscope.engine.training.train`` runs it."""
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
    # so CKA is timed every round in its own arm (once per CKA precision) and the policy's cost
    # is derived from the arms.
    cifar = synthetic_cifar(n_train=320 if quick else 640, n_test=256)
    vbase = RunConfig().replace(
        {
            "model.name": "vgg11",
            "data.partition": "iid",
            "train.clients": 2 if quick else 5,
            "train.local_steps": 1 if quick else 2,
            "train.batch_size": 32,
            "train.rounds": 1 if quick else 3,
            **PAPER_POLICY,
            "record.cka_every": 1,
        }
    )
    cka_every = PAPER_POLICY["record.cka_every"]
    varms = {
        "off": vbase.replace({"record.enabled": False}),
        "paper_no_cka": vbase.replace({"record.probe_size": 0}),
        "cka_every_round_f32": vbase,
        "cka_every_round_f64": vbase.replace({"record.cka_precision": "float64"}),
    }
    vreps = 1 if quick else 3
    load = [round(x, 2) for x in os.getloadavg()]
    log(
        f"recording: vgg11 synthetic CIFAR, {vbase.train.clients} clients x "
        f"{vbase.train.local_steps} steps x {vbase.train.rounds} rounds, {vreps} repeats x "
        f"{len(varms)} arms (load average {load})"
    )
    vt = interleaved({k: timed_train(c, cifar, f"vgg-{k}") for k, c in varms.items()}, vreps)
    extra["vgg_loadavg"] = [load, [round(x, 2) for x in os.getloadavg()]]
    extra["vgg_seconds"] = {k: summarise(v)["median"] for k, v in vt.items()}
    no_cka = ratios(vt["paper_no_cka"], vt["off"])
    every32 = ratios(vt["cka_every_round_f32"], vt["off"])
    every64 = ratios(vt["cka_every_round_f64"], vt["off"])
    derived32 = [a + (b - a) / cka_every for a, b in zip(no_cka, every32, strict=True)]
    derived64 = [a + (b - a) / cka_every for a, b in zip(no_cka, every64, strict=True)]
    setting = f"{vbase.train.clients} clients x {vbase.train.local_steps} steps"
    rows += [
        row(
            f"Recording overhead, paper-scale policy (VGG-11, CIFAR-shaped, {setting}), "
            "float32 probe Grams (default)",
            derived32,
            ("<=", 1.05),
            note=(
                f"Grams every round, head updates f16 every round, probe CKA (128 inputs) every "
                f"{cka_every} rounds: derived per repeat as A + (B - A) / {cka_every} from the "
                f"rows below; load average {load[0]} at the start"
            ),
        ),
        row(
            "  same, float64 probe Grams (record.cka_precision=float64, the previous path)",
            derived64,
            None,
            note="same runs, interleaved with the float32 arm",
        ),
        row("  A: Grams + head updates f16, every round (measured)", no_cka, ("<=", 1.05)),
        row(
            "  B: same + probe CKA every round, float32 Grams (measured)",
            every32,
            None,
            note=(
                f"a CKA round runs {vbase.train.clients + 1} models x 128 probe inputs forward; a "
                f"training round {vbase.train.clients} x {vbase.train.local_steps} x 32 inputs "
                "forward and backward"
            ),
        ),
        row("  B: same, float64 Grams (measured)", every64, None),
    ]
    parts = cka_round_components(vbase, cifar, tmp, quick)
    extra["vgg_cka_round_components"] = parts
    rows += component_rows(parts, vbase, cka_every)
    config = {
        "digits": {k: c.record.__dict__ for k, c in arms.items()} | {"train": base.train.__dict__},
        "vgg11": {k: c.record.__dict__ for k, c in varms.items()}
        | {"train": vbase.train.__dict__, "n_train": len(cifar.train_y), "n_test": 256},
    }
    return {"rows": rows, "config": config, "extra": extra}


# the paper's local work per round (docs/science.md): 10 clients x 10 epochs over ~4,500 images
# (45,000 training images over 10 clients), batch 128, drop_last
PAPER = {"clients": 10, "epochs": 10, "images": 4500, "batch": 128}


@contextmanager
def instrumented(times: dict[str, float]) -> Iterator[None]:
    """Time the recorder's probe-CKA parts and local training inside a real run, by wrapping the
    names ``driftscope.engine.recorder``, ``driftscope.metrics.probe`` and ``driftscope.engine.inprocess``
    call (restored afterwards):
    ``probe`` (``Recorder._probe_grams``: forward passes + Grams), ``gram`` (``centred_gram``),
    ``cka_math`` (``pairwise_cka``, ``rbf_from_linear_gram``), ``cka_write`` (appends under
    ``records/cka``), ``hooks`` (all of the recorder's hooks), ``client_hooks`` (its
    ``on_client_end``) and ``local`` (``local_train``)."""
    import driftscope.engine.inprocess as sim
    import driftscope.engine.recorder as rec
    import driftscope.metrics.probe as probe

    saved: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str, key: str, only: Callable[..., bool] | None = None) -> None:
        fn = getattr(owner, name)
        saved.append((owner, name, fn))

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            if only is None or only(*args):
                times[key] = times.get(key, 0.0) + time.perf_counter() - t0
            return out

        setattr(owner, name, timed)

    wrap(rec.Recorder, "_probe_grams", "probe")
    for method in ("on_round_start", "on_client_end", "on_round_end"):
        wrap(rec.Recorder, method, "hooks")
    wrap(rec.Recorder, "on_client_end", "client_hooks")
    wrap(rec, "centred_gram", "gram")
    wrap(probe, "pairwise_cka", "cka_math")
    wrap(probe, "rbf_from_linear_gram", "cka_math")
    wrap(rec, "append", "cka_write", only=lambda ds, *_: ds.name.startswith("/records/cka"))
    wrap(sim, "local_train", "local")
    try:
        yield
    finally:
        for owner, name, fn in reversed(saved):
            setattr(owner, name, fn)


def cka_round_components(base: RunConfig, ds: Dataset, tmp: Path, quick: bool) -> dict[str, Any]:
    """Per CKA round and per local step, in seconds, from one instrumented run per precision;
    the measured float32-vs-float64 CKA error on the last round's models; and one bare VGG-11
    step at the paper's batch size (128) for the extrapolation."""
    import torch

    from driftscope.engine.activations import capture_activations, probe_index
    from driftscope.engine.events import Hook
    from driftscope.engine.inprocess import Simulator
    from driftscope.metrics.cka import cka_error_bound, pairwise_cka
    from driftscope.metrics.gram import centred_gram, gram32_error
    from driftscope.metrics.rbf import rbf_from_linear_gram
    from driftscope.models.registry import build_model

    class Last(Hook):
        """Counts local steps and keeps the last round's client and global parameters."""

        def __init__(self) -> None:
            self.steps = 0
            self.seconds = 0.0  # RoundEnded.seconds: training, aggregation, evaluation, and
            # the hooks' on_round_start and on_client_end
            self.models: dict[int, list[torch.Tensor]] = {}

        def on_client_end(self, event: Any) -> None:
            self.steps += event.steps
            self.models.setdefault(event.round, []).append(event.params.clone())

        def on_round_end(self, event: Any) -> None:
            self.seconds += event.seconds
            self.models[event.round].append(event.global_params.clone())

    out: dict[str, Any] = {}
    last = Last()
    for precision in ("float32", "float64"):
        cfg = base.replace({"record.cka_precision": precision})
        times: dict[str, float] = {}
        hook = last if precision == "float32" else Last()
        with instrumented(times):
            train(cfg, tmp / f"parts-{precision}.h5", dataset=ds, overwrite=True, hooks=[hook])
        rounds = cfg.train.rounds
        models = cfg.train.clients + 1
        cka = times["probe"] + times["cka_math"] + times["cka_write"]
        out[precision] = {
            # a round without the recorder: RoundEnded.seconds minus the recorder's client hooks
            # (its on_round_start is a few attribute writes)
            "round_unrecorded_s": (hook.seconds - times["client_hooks"]) / rounds,
            # Grams, head updates and their writes: the recorder's hooks minus its CKA parts
            "record_no_cka_s": (times["hooks"] - cka) / rounds,
            "models_per_cka_round": models,
            "forward_s": (times["probe"] - times["gram"]) / rounds,
            "grams_s": times["gram"] / rounds,
            "cka_math_s": times["cka_math"] / rounds,
            "cka_write_s": times["cka_write"] / rounds,
            "cka_round_s": cka / rounds,
            "local_step_s": times["local"] / hook.steps,
        }
    # measured error of the float32 path on the last round's models, all layers and kinds
    sim = Simulator(base, ds)
    probe = sim.test_x[torch.from_numpy(probe_index(base.seed, len(sim.test_x), 128))]
    model = sim.build_model().eval()
    layers = [layer.name for layer in sim.layout.layers]
    grams: dict[str, dict[str, list]] = {p: {n: [] for n in layers} for p in ("32", "64")}
    bounds: dict[str, list] = {n: [] for n in layers}
    with torch.no_grad():
        for flat in last.models[max(last.models)]:
            params = {
                p.name: flat[p.offset : p.offset + p.numel].view(p.shape) for p in sim.layout.params
            }
            with capture_activations(model, layers) as acts:
                torch.func.functional_call(model, params, (probe,))
                for n in layers:
                    grams["32"][n].append(centred_gram(acts[n], "float32").numpy())
                    grams["64"][n].append(centred_gram(acts[n], "float64").numpy())
                    bounds[n].append(gram32_error(acts[n]))
    worst = {"linear": 0.0, "rbf": 0.0, "debiased": 0.0}
    worst_bound = dict.fromkeys(worst, 0.0)
    within = True
    for n in layers:
        g32, g64 = np.stack(grams["32"][n]), np.stack(grams["64"][n])
        eps, eta = np.array(bounds[n]).T
        for kind in worst:
            f = {
                "linear": lambda g: pairwise_cka(g, centred=True),
                "rbf": lambda g: pairwise_cka(rbf_from_linear_gram(g)),
                "debiased": lambda g: pairwise_cka(g, debiased=True),
            }[kind]
            err = np.abs(f(g32) - f(g64))
            bound = cka_error_bound(g32, eps, eta, kind)
            within = within and bool(np.all(err <= bound))
            worst[kind] = max(worst[kind], float(np.nanmax(err)))
            worst_bound[kind] = max(worst_bound[kind], float(bound.max()))
    out["error"] = {"max_abs": worst, "bound": worst_bound, "within_bound": within}
    # one bare VGG-11 SGD step at batch 128 (the paper's), for the extrapolation
    net = build_model("vgg11", (3, 32, 32), 10).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    xb, yb = ds.train_x[:128], ds.train_y[:128]
    step_times = []
    for _ in range(2 if quick else 3):
        t0 = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xb), yb).backward()
        opt.step()
        step_times.append(time.perf_counter() - t0)
    out["bare_step_b128_s"] = min(step_times[1:])
    return out


def component_rows(parts: dict[str, Any], base: RunConfig, cka_every: int) -> list[dict[str, Any]]:
    """Rows: a CKA round and a local step in seconds, the measured error, and the overhead
    extrapolated to the paper's local work from the measured components."""
    p32, p64 = parts["float32"], parts["float64"]
    step = p32["local_step_s"]
    err = parts["error"]
    rows = [
        row(
            f"  a CKA round ({p32['models_per_cka_round']} models, 128 probe inputs), float32 Grams",
            [p32["cka_round_s"]],
            None,
            unit=" s",
            note=(
                f"forward {p32['forward_s']:.2f} s, Grams {p32['grams_s']:.2f} s, CKA math "
                f"{p32['cka_math_s']:.3f} s, HDF5 write {p32['cka_write_s']:.4f} s; with float64 "
                f"Grams: {p64['cka_round_s']:.2f} s (Grams {p64['grams_s']:.2f} s); a local step "
                f"(batch 32) {step:.2f} s: a CKA round = {p32['cka_round_s'] / step:.1f} local "
                f"steps (float64: {p64['cka_round_s'] / p64['local_step_s']:.1f})"
            ),
        ),
        row(
            "  float32 vs float64 probe CKA on VGG-11 activations, max abs difference",
            [max(err["max_abs"].values())],
            None,
            unit="",
            note=(
                "linear {linear:.1e}, rbf {rbf:.1e}, debiased {debiased:.1e} over 11 layers x "
                "{m} x {m} models; derived bound (worst pair): ".format(
                    **err["max_abs"], m=p32["models_per_cka_round"]
                )
                + ", ".join(f"{k} {v:.1e}" for k, v in err["bound"].items())
                + ("; every value within it" if err["within_bound"] else "; BOUND VIOLATED")
            ),
        ),
    ]
    # the policy's overhead from the same components, each timed inside one run (a ratio of
    # times measured in one process, less exposed to other jobs than two whole runs)
    for name, p in (("float32", p32), ("float64", p64)):
        parts_ratio = (
            1 + (p["record_no_cka_s"] + p["cka_round_s"] / cka_every) / p["round_unrecorded_s"]
        )
        rows.append(
            row(
                f"  same policy from the measured components, {name} Grams",
                [parts_ratio],
                ("<=", 1.05) if name == "float32" else None,
                note=(
                    f"1 + (Grams + head updates {p['record_no_cka_s']:.2f} s + a CKA round "
                    f"{p['cka_round_s']:.2f} s / {cka_every}) / a round unrecorded "
                    f"{p['round_unrecorded_s']:.2f} s; the CKA round's forward passes alone: "
                    f"{p['forward_s'] / cka_every / p['round_unrecorded_s']:.3f}"
                ),
            )
        )
    # extrapolation to the paper's local work: measured per-model CKA cost, measured recording
    # cost without CKA per round (scaled from S to 10 clients by S^2, the Gram's cost), measured
    # bare step at batch 128
    s = base.train.clients
    steps = PAPER["clients"] * PAPER["epochs"] * (PAPER["images"] // PAPER["batch"])
    train_round = steps * parts["bare_step_b128_s"]
    no_cka = p32["record_no_cka_s"] * (PAPER["clients"] / s) ** 2
    per_model = (p32["forward_s"] + p32["grams_s"]) / p32["models_per_cka_round"]
    cka_round = (PAPER["clients"] + 1) * per_model + p32["cka_math_s"] * (
        (PAPER["clients"] + 1) / p32["models_per_cka_round"]
    ) ** 2
    overhead = 1 + (no_cka + cka_round / cka_every) / train_round
    rows.append(
        row(
            "Recording overhead EXTRAPOLATED to the paper's local work (VGG-11, 10 clients x 10 "
            "epochs x 4,500 images, batch 128), paper-scale policy, float32 Grams",
            [overhead],
            ("<=", 1.05),
            note=(
                f"{overhead:.4f}x; not measured end to end: {steps} steps x {parts['bare_step_b128_s']:.2f} s "
                f"(a measured bare step at batch 128) = {train_round:.0f} s of training a round; "
                f"a CKA round of 11 models {cka_round:.1f} s (measured per model) every "
                f"{cka_every} rounds; Grams + head updates {no_cka:.2f} s a round "
                f"(measured at {s} clients, x (10/{s})^2)"
            ),
        )
    )
    return rows
