#!/usr/bin/env python
"""The live logger's cost: the default run with ``--log`` against the same run without it.

    python benchmarks/live_logging.py                    # TensorBoard, 5 repeats
    python benchmarks/live_logging.py --backends tensorboard mlflow wandb
    python benchmarks/live_logging.py --quick            # smoke run

Each arm is ``train`` of the default config (digits, small_cnn, 10 clients; ``--rounds``) into its
own run file, with one :class:`~driftscope.export.LiveLogger` per backend arm (TensorBoard into a
temp dir, MLflow into a temp sqlite store, W&B offline) and none in the ``off`` arm. Arms are
interleaved (A B, B A, ...) in one process, so load from other processes hits all alike; each
figure is the median of per-repeat ratios to ``off``. Writes ``benchmarks/results/live_logging.json``
(gitignored).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.harness import interleaved, log, ratios, row, summarise  # noqa: E402
from driftscope.config import RunConfig  # noqa: E402
from driftscope.data import load_dataset  # noqa: E402
from driftscope.engine.training import train  # noqa: E402
from driftscope.export import LiveLogger  # noqa: E402


def spec(backend: str, tmp: Path) -> str:
    if backend == "tensorboard":
        return f"tensorboard={tmp / 'tb'}"
    if backend == "mlflow":
        return f"mlflow=sqlite:///{tmp / 'mlflow.db'}"
    return f"wandb={tmp / 'wandb'}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", nargs="+", default=["tensorboard"])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "live_logging.json"))
    args = p.parse_args()
    if args.quick:
        args.rounds, args.repeats = 3, 2
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    torch.set_num_threads(args.threads)
    cfg = RunConfig().replace({"train.rounds": args.rounds})
    ds = load_dataset("digits")
    load = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="live_logging-") as tmpdir:
        tmp = Path(tmpdir)
        counter = {"n": 0}
        # CPU seconds: the logger's (the training thread's time in _write_committed: reading
        # the new rounds and handing them to the backend) and the whole process's per run
        # (the backend's own writer threads included), figures that load from other processes
        # moves less than wall time
        cpu: dict[str, list[float]] = {}
        logger_cpu = {"s": 0.0}
        write = LiveLogger._write_committed

        def timed_write(self: LiveLogger, sink: Any) -> None:
            t0 = time.thread_time()
            try:
                write(self, sink)
            finally:
                logger_cpu["s"] += time.thread_time() - t0

        LiveLogger._write_committed = timed_write  # type: ignore[method-assign]

        def arm(backend: str | None) -> Callable[[], None]:
            def go() -> None:
                counter["n"] += 1
                out = tmp / f"run{counter['n']}.h5"
                hooks = [] if backend is None else [LiveLogger(spec(backend, tmp), out)]
                logger_cpu["s"] = 0.0
                c0 = time.process_time()
                train(cfg, out, dataset=ds, hooks=hooks)
                key = backend or "off"
                cpu.setdefault(key, []).append(time.process_time() - c0)
                cpu.setdefault(f"{key}_logger", []).append(logger_cpu["s"])
                out.unlink()

            return go

        train(cfg.replace({"train.rounds": 1}), tmp / "warmup.h5", dataset=ds)
        arms = {"off": arm(None), **{b: arm(b) for b in args.backends}}
        log(f"live logging: default run, {args.rounds} rounds, {args.repeats} x {list(arms)}")
        t = interleaved(arms, args.repeats)
    rows = [
        row(
            f"Live logger ({b}) on the default run / the same run without it "
            f"({args.rounds} rounds, {args.threads} thread)",
            ratios(t[b], t["off"]),
            ("<=", 1.05),
            note=f"off {summarise(t['off'])['median']:.2f} s, with {b} "
            f"{summarise(t[b])['median']:.2f} s a run; load average {load[0]} at the start",
        )
        for b in args.backends
    ]
    for b in args.backends:
        rows.append(
            row(
                f"  CPU time of the run with the {b} logger / without it (same repeat)",
                ratios(cpu[b], cpu["off"]),
                ("<=", 1.05),
                note=f"off {summarise(cpu['off'])['median']:.2f} CPU s, with {b} "
                f"{summarise(cpu[b])['median']:.2f} CPU s a run",
            )
        )
        share = [lg / total for lg, total in zip(cpu[f"{b}_logger"], cpu[b], strict=True)]
        rows.append(
            row(
                f"  CPU time of the {b} logger's work / CPU time of the run with it",
                share,
                None,
                unit="",
                note=f"logger {summarise(cpu[f'{b}_logger'])['median']:.2f} CPU s, run "
                f"{summarise(cpu[b])['median']:.2f} CPU s ({args.rounds} rounds); off "
                f"{summarise(cpu['off'])['median']:.2f} CPU s",
            )
        )
    for r in rows:
        print(
            f"{r['name']}: {r['median']:.3f}x [{r['q25']:.3f}-{r['q75']:.3f}] "
            f"({r['min']:.3f}-{r['max']:.3f}), n={r['n']}; {r['note']}",
            flush=True,
        )
    env = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "loadavg_start": load,
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {"env": env, "args": vars(args), "seconds": t, "cpu_seconds": cpu, "rows": rows},
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
