#!/usr/bin/env python
"""The GPU check: the paper-scale figures in one short run on one GPU (not part of the suite).

    python benchmarks/gpu_check.py --out gpu_check.json            # on cuda, about 6-8 minutes
    python benchmarks/gpu_check.py --device cpu --tiny --out x.json  # every step, tiny, < 60 s

Five sections, each timed with the device synchronised around every timed call:

1. ``vgg_round``: VGG-11 on CIFAR-10-shaped synthetic tensors (45,000 training images, the
   ``configs/fedpvr_cifar10.toml`` preset's augmentation, batch and lr; iid, FedAvg, a few local
   steps per client, 10 clients): seconds per round and images/s of the simulator's round against
   a plain PyTorch loop doing the same SGD steps (``benchmarks/simulator.py``), and the preset's
   own algorithm (FedPVR, body momentum) in the simulator.
2. ``recording``: the same workload through ``train`` with recording off, the preset's (default)
   recording policy and the paper-scale policy (``benchmarks/recording.py``), interleaved.
3. ``batched``: batched clients against sequential ones for small_cnn at 100 and 1,000 clients
   (``benchmarks/batched_clients.py``'s cases).
4. ``agreement``: 2 rounds of small_cnn on the embedded digits on the device and on the CPU (max
   relative difference of the final parameters and of every layer's Gram matrices), and two runs
   on the device with deterministic kernels on (bit-identical or not).
5. ``memory``: the peak device memory of each section (peak RSS of the process on the CPU).

Writes ``--out`` (JSON) and the same path with ``.md`` (the markdown table, also printed). Asked
for cuda on a machine without one, it runs the tiny CPU version of every step, prints a one-line
notice and exits 0. A section that raises is listed under ``could_not`` with its error (exit 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

# deterministic cuBLAS needs this before the CUDA context exists (section 4)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks import batched_clients  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    interleaved,
    log,
    peak_rss_mb,
    ratios,
    summarise,
    synthetic_cifar,
)
from benchmarks.recording import PAPER_POLICY  # noqa: E402
from benchmarks.simulator import _sim_vs_bare  # noqa: E402
from driftscope.config import RunConfig  # noqa: E402
from driftscope.data import Dataset, load_dataset  # noqa: E402
from driftscope.engine.inprocess import Simulator  # noqa: E402
from driftscope.engine.training import train  # noqa: E402
from driftscope.runfile.reader import open_run  # noqa: E402

PRESET = ROOT / "configs" / "fedpvr_cifar10.toml"
SECTIONS = ("vgg_round", "recording", "batched", "agreement", "memory")

# sizes: full (on a GPU) and tiny (the CPU smoke version the test suite runs)
FULL = {
    "n_train": 45_000,
    "n_test": 1_000,
    "local_steps": 5,
    "clients": 10,
    "reps": 5,
    "rec_rounds": 10,
    "rec_reps": 3,
    "batched_clients": [100, 1000],
    "batched_shapes": ["digits", "mnist"],
    "batched_repeats": 3,
}
TINY = {
    "n_train": 160,
    "n_test": 32,
    "local_steps": 1,
    "clients": 2,
    "reps": 1,
    "rec_rounds": 1,
    "rec_reps": 1,
    "batched_clients": [4, 8],
    "batched_shapes": ["digits"],
    "batched_repeats": 1,
}


def synced(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def preset_workload(size: dict[str, Any], device: str, tiny: bool) -> tuple[RunConfig, Dataset]:
    """The preset's data shape, augmentation, batch and lr, as FedAvg with a few local steps."""
    base = RunConfig.from_toml(PRESET)
    ds = synthetic_cifar(size["n_train"], size["n_test"])
    # the preset's augmentation (cifar10: random crop, padding 4, and flip)
    ds = dataclasses.replace(ds, augment=True, crop_padding=4)
    cfg = base.replace(
        {
            "train.algorithm": "fedavg",
            "data.partition": "iid",
            "train.clients": size["clients"],
            "train.local_steps": size["local_steps"],
            "train.rounds": 100_000,
            "train.eval_every": 100_000,
            "train.device": device,
        }
    )
    if tiny:
        cfg = cfg.replace({"train.batch_size": 8, "record.probe_size": 8})
    return cfg, ds


# --------------------------------------------------------------------------------- sections
def vgg_round(size: dict[str, Any], device: str, tiny: bool) -> dict[str, Any]:
    cfg, ds = preset_workload(size, device, tiny)
    dev = torch.device(Simulator(cfg.replace({"train.clients": 1}), ds).device)
    sync = synced(dev)
    reps = size["reps"]
    log(f"vgg_round: VGG-11, {cfg.train.clients} clients x {cfg.train.local_steps} steps, {reps} x")
    ts, tb, diffs, scale = _sim_vs_bare(cfg, ds, reps, sync)
    images = cfg.train.clients * cfg.train.local_steps * cfg.train.batch_size
    # the preset's own algorithm (FedPVR, momentum on the body) in the simulator
    preset_params = RunConfig.from_toml(PRESET).train.params
    pvr = Simulator(cfg.replace({"train.algorithm": "fedpvr"}), ds)
    assert pvr.cfg.train.params == preset_params, (pvr.cfg.train.params, preset_params)
    pvr.run_round()

    def pvr_round() -> None:
        sync()
        pvr.run_round()
        sync()

    tp = interleaved({"fedpvr": pvr_round}, reps)["fedpvr"]
    med = {k: summarise(v)["median"] for k, v in (("sim", ts), ("bare", tb), ("pvr", tp))}
    return {
        "setting": {
            "clients": cfg.train.clients,
            "local_steps": cfg.train.local_steps,
            "batch_size": cfg.train.batch_size,
            "lr": cfg.train.lr,
            "augment": True,
            "n_train": size["n_train"],
            "device": str(dev),
        },
        "driftscope_round_s": summarise(ts),
        "plain_round_s": summarise(tb),
        "driftscope_fedpvr_round_s": summarise(tp),
        "driftscope_images_per_s": images / med["sim"],
        "plain_images_per_s": images / med["bare"],
        "driftscope_fedpvr_images_per_s": images / med["pvr"],
        "driftscope_vs_plain": summarise(ratios(ts, tb)),
        "max_abs_diff_vs_plain": max(diffs),
        "max_abs_param": scale,
    }


def recording(size: dict[str, Any], device: str, tiny: bool, tmp: Path) -> dict[str, Any]:
    cfg, ds = preset_workload(size, device, tiny)
    cfg = cfg.replace({"train.rounds": size["rec_rounds"]})
    arms = {
        "off": cfg.replace({"record.enabled": False}),
        "default": cfg,
        "paper": cfg.replace(PAPER_POLICY),
    }
    if tiny:
        arms["paper"] = arms["paper"].replace({"record.probe_size": 8})
    sync = synced(torch.device(Simulator(cfg.replace({"train.clients": 1}), ds).device))

    def arm(name: str, c: RunConfig) -> Callable[[], None]:
        def go() -> None:
            sync()
            train(c, tmp / f"rec-{name}.h5", dataset=ds, overwrite=True)
            sync()

        return go

    arm("warmup", cfg.replace({"train.rounds": 1}))()
    log(f"recording: {cfg.train.rounds} rounds x {len(arms)} arms x {size['rec_reps']}")
    t = interleaved({k: arm(k, c) for k, c in arms.items()}, size["rec_reps"])
    return {
        "rounds": cfg.train.rounds,
        "seconds": {k: summarise(v) for k, v in t.items()},
        "default_vs_off": summarise(ratios(t["default"], t["off"])),
        "paper_vs_off": summarise(ratios(t["paper"], t["off"])),
        "policies": {
            "default": arms["default"].record.__dict__,
            "paper": arms["paper"].record.__dict__,
        },
    }


def batched(size: dict[str, Any], device: str) -> dict[str, Any]:
    args = argparse.Namespace(samples=32, batch=16, repeats=size["batched_repeats"], device=device)
    cases = [
        batched_clients.run_case(shape, n, args)
        for shape in size["batched_shapes"]
        for n in size["batched_clients"]
    ]
    return {"samples_per_client": args.samples, "batch": args.batch, "cases": cases}


def _final(path: Path) -> dict[str, np.ndarray]:
    """The last round's global parameters and every layer's Gram matrices of a run file."""
    with open_run(path) as run:
        state = run.resume_state()
        assert state is not None
        out = {"params": np.asarray(state[1]["global_params"], dtype=np.float64)}
        for ly in run.layers:
            out[f"gram/{ly.name}"] = np.asarray(run.gram(ly.name), dtype=np.float64)
    return out


def _max_rel(a: dict[str, np.ndarray], b: dict[str, np.ndarray], prefix: str) -> float:
    keys = [k for k in a if k.startswith(prefix)]
    return max(float(np.abs(a[k] - b[k]).max() / max(np.abs(b[k]).max(), 1e-30)) for k in keys)


def agreement(device: str, tmp: Path) -> dict[str, Any]:
    cfg = RunConfig().replace({"train.rounds": 2, "record.probe_size": 0})
    ds = load_dataset("digits")
    log(f"agreement: small_cnn on digits, 2 rounds, {device} vs cpu, then twice deterministic")
    train(cfg.replace({"train.device": device}), tmp / "dev.h5", dataset=ds, overwrite=True)
    train(cfg.replace({"train.device": "cpu"}), tmp / "cpu.h5", dataset=ds, overwrite=True)
    dev, cpu = _final(tmp / "dev.h5"), _final(tmp / "cpu.h5")
    out: dict[str, Any] = {
        "device": device,
        "max_rel_diff_params": _max_rel(dev, cpu, "params"),
        "max_rel_diff_grams": _max_rel(dev, cpu, "gram/"),
    }
    was = torch.are_deterministic_algorithms_enabled()
    cudnn = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        for name in ("det1", "det2"):
            c = cfg.replace({"train.device": device})
            train(c, tmp / f"{name}.h5", dataset=ds, overwrite=True)
    finally:
        torch.use_deterministic_algorithms(was)
        torch.backends.cudnn.benchmark = cudnn
    a, b = _final(tmp / "det1.h5"), _final(tmp / "det2.h5")
    out["deterministic_bit_identical"] = all(np.array_equal(a[k], b[k]) for k in a)
    return out


# ------------------------------------------------------------------------------------ table
def markdown(result: dict[str, Any]) -> str:
    env, s = result["environment"], result["sections"]
    lines = [
        f"GPU check on {env['device_name']} ({env['device']}), torch {env['torch']}, "
        f"{env['date']}{' (TINY: not representative)' if env['tiny'] else ''}; "
        f"command: `{env['command']}`",
        "",
        "| Check | Measured |",
        "|---|---|",
    ]

    def add(name: str, text: str) -> None:
        lines.append(f"| {name} | {text} |")

    v = s.get("vgg_round")
    if v:
        st = v["setting"]
        add(
            f"VGG-11 round, {st['clients']} clients x {st['local_steps']} steps of "
            f"{st['batch_size']} (augmented), FedAvg: driftscope / plain PyTorch",
            f"{v['driftscope_round_s']['median']:.3g} s vs {v['plain_round_s']['median']:.3g} s "
            f"(**{v['driftscope_vs_plain']['median']:.3g}x**); "
            f"{v['driftscope_images_per_s']:.0f} vs {v['plain_images_per_s']:.0f} images/s; "
            f"max abs diff {v['max_abs_diff_vs_plain']:.1e}",
        )
        add(
            "  same, the preset's FedPVR (body momentum 0.9)",
            f"{v['driftscope_fedpvr_round_s']['median']:.3g} s/round, "
            f"{v['driftscope_fedpvr_images_per_s']:.0f} images/s",
        )
    r = s.get("recording")
    if r:
        for k in ("default", "paper"):
            add(
                f"Recording overhead, {k} policy ({r['rounds']} rounds, VGG-11)",
                f"**{r[f'{k}_vs_off']['median']:.3g}x** "
                f"({r['seconds'][k]['median']:.3g} s vs {r['seconds']['off']['median']:.3g} s)",
            )
    b = s.get("batched")
    if b:
        for c in b["cases"]:
            m = c["median_s"]
            add(
                f"Batched vs sequential clients, small_cnn {c['shape']}-shaped, {c['clients']} "
                "clients",
                f"sequential {m['sequential']:.3g} s, batched {m['batched']:.3g} s, plain "
                f"{m['bare']:.3g} s (**{c['speedup_batched_vs_sequential']:.2f}x**)",
            )
    a = s.get("agreement")
    if a:
        add(
            f"2 rounds small_cnn, {a['device']} vs cpu: max relative difference",
            f"parameters {a['max_rel_diff_params']:.1e}, Grams {a['max_rel_diff_grams']:.1e}",
        )
        add(
            f"Two {a['device']} runs, deterministic kernels on",
            "bit-identical" if a["deterministic_bit_identical"] else "**not bit-identical**",
        )
    mem = s.get("memory")
    if mem:
        add(
            f"Peak memory ({mem['kind']})",
            ", ".join(f"{k} {v:.0f} MiB" for k, v in mem["peak_mib"].items()),
        )
    for item in result["could_not"]:
        add("could not", item.replace("|", "/"))
    return "\n".join(line.replace("|   ", "| &nbsp;&nbsp;") for line in lines)


# ------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: a smoke run of every step")
    p.add_argument("--out", required=True, help="JSON file to write (and its .md next to it)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    notice = None
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        notice = (
            f"gpu_check: no GPU (torch.cuda.is_available() is False): ran the tiny CPU version "
            f"of every step instead; nothing was measured on a GPU (wrote {args.out})"
        )
        args.device, args.tiny = "cpu", True
    if args.threads:
        torch.set_num_threads(args.threads)
    size = TINY if args.tiny else FULL
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    result: dict[str, Any] = {
        "environment": {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join(["python", "benchmarks/gpu_check.py", *(argv or sys.argv[1:])]),
            "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if cuda else "CPU",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "tiny": args.tiny,
            "sizes": size,
            "cpu_threads": torch.get_num_threads(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "no_gpu_notice": notice,
            "section_wall_s": {},
        },
        "sections": {},
        "could_not": [],
    }
    peaks: dict[str, float] = {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmpdir:
        tmp = Path(tmpdir)
        steps: dict[str, Callable[[], dict[str, Any]]] = {
            "vgg_round": lambda: vgg_round(size, args.device, args.tiny),
            "recording": lambda: recording(size, args.device, args.tiny, tmp),
            "batched": lambda: batched(size, args.device),
            "agreement": lambda: agreement(args.device, tmp),
        }
        for name, fn in steps.items():
            if cuda:
                torch.cuda.reset_peak_memory_stats(dev)
            t0 = time.perf_counter()
            try:
                result["sections"][name] = fn()
            except Exception as e:  # report it and go on with the next section
                traceback.print_exc()
                result["could_not"].append(f"{name}: {type(e).__name__}: {e}")
            result["environment"]["section_wall_s"][name] = time.perf_counter() - t0
            peaks[name] = torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else peak_rss_mb()
    result["sections"]["memory"] = {
        "kind": "torch.cuda.max_memory_allocated per section"
        if cuda
        else "peak RSS of the process so far (CPU)",
        "peak_mib": peaks,
    }
    result["environment"]["wall_s"] = time.perf_counter() - t_start
    result["environment"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    table = markdown(result)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    for item in result["could_not"]:
        print(f"gpu_check: could not do {item}")
    if notice:
        print(notice)
    return 1 if result["could_not"] else 0


if __name__ == "__main__":
    sys.exit(main())
