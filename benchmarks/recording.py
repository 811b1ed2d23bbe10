"""1. Recording overhead: the same run with recording off and on, as ``train`` runs it."""

from __future__ import annotations

from collections.abc import Callable
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
from driftscope.reader import open_run
from driftscope.training import train


def bench(quick: bool, tmp: Path, threads: int) -> dict[str, Any]:
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
