"""``driftscope compare``: algorithms side by side over several seeds, same hyperparameters.

For each algorithm arm and seed it trains the config (recording off: only accuracy and bytes are
needed) and reports final test accuracy and rounds to a target accuracy as mean ± standard
deviation over seeds, with communication per round relative to FedAvg.

A run that diverges is a result, not a crash: its row records the round it diverged at, its final
accuracy is NaN, and the summary says how many seeds diverged instead of averaging over them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from driftscope.config import RunConfig
from driftscope.data import load_dataset
from driftscope.errors import DivergenceError
from driftscope.reader import open_run
from driftscope.training import train

DEFAULT_ARMS: dict[str, dict] = {
    "FedAvg": {"train.algorithm": "fedavg"},
    "SCAFFOLD": {"train.algorithm": "scaffold"},
    "FedPVR (body momentum 0.9)": {"train.algorithm": "fedpvr", "train.params.body_momentum": 0.9},
    "FedPVR (no momentum)": {"train.algorithm": "fedpvr", "train.params.body_momentum": None},
}


def rounds_to(acc: np.ndarray, target: float) -> float:
    """1-based number of rounds until test accuracy first reaches ``target`` (NaN if never)."""
    hits = np.flatnonzero(acc >= target)
    return float(hits[0] + 1) if len(hits) else float("nan")


def compare(
    base: RunConfig,
    seeds: list[int],
    out_dir: Path,
    target: float = 0.9,
    arms: dict[str, dict] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Train every arm for every seed into ``out_dir``; return one row per (arm, seed)."""
    arms = arms or DEFAULT_ARMS
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(base.data.dataset, base.data.data_dir)
    rows = []
    for name, overrides in arms.items():
        for seed in seeds:
            cfg = base.replace({**overrides, "seed": seed, "record.enabled": False})
            slug = name.lower().replace(" ", "_").replace("(", "").replace(")", "").replace(".", "")
            path = out_dir / f"{slug}-seed{seed}.h5"
            try:
                train(cfg, path, overwrite=True, progress=progress, dataset=dataset)
                diverged = False
            except DivergenceError:
                diverged = True
            with open_run(path) as run:
                m = run.metrics
                acc = m["test_accuracy"].to_numpy()
                rows.append(
                    {
                        "algorithm": name,
                        "seed": seed,
                        "final_accuracy": float("nan") if diverged else float(acc[-1]),
                        "rounds_to_target": rounds_to(acc, target),
                        "diverged_at_round": run.num_rounds if diverged else float("nan"),
                        "bytes_per_round": run.bytes_per_round,
                    }
                )
    return pd.DataFrame(rows)


def summarize(results: pd.DataFrame, target: float) -> pd.DataFrame:
    """Mean ± std over seeds per algorithm, and communication relative to FedAvg."""
    fedavg = results.loc[results["algorithm"] == "FedAvg", "bytes_per_round"]
    base = float(fedavg.dropna().mean()) if len(fedavg) else float("nan")
    rows = []
    for name, g in results.groupby("algorithm", sort=False):
        r = g["rounds_to_target"]
        reached = int(r.notna().sum())
        ok = g["final_accuracy"].dropna()
        diverged = g["diverged_at_round"].dropna().astype(int)
        if len(diverged) == len(g):
            final = f"diverged in {len(g)}/{len(g)} seeds (rounds {_rounds(diverged)})"
        else:
            final = _mean_std(ok, ".3f")
            if len(diverged):
                final += f" ({len(diverged)}/{len(g)} seeds diverged, rounds {_rounds(diverged)})"
        rows.append(
            {
                "algorithm": name,
                "final test accuracy": final,
                f"rounds to {target:.0%}": (
                    _mean_std(r, ".1f")
                    if reached == len(g)
                    else f"{reached}/{len(g)} seeds reached"
                ),
                "communication / round vs FedAvg": f"{g.bytes_per_round.dropna().mean() / base:.3f}x",
            }
        )
    return pd.DataFrame(rows)


def _rounds(rounds: pd.Series) -> str:
    """Zero-based round indices at which runs diverged, as a short list: '16, 18'."""
    return ", ".join(str(r) for r in sorted(rounds))


def _mean_std(values: pd.Series, fmt: str) -> str:
    """'mean ± sample std' over seeds; the mean alone for a single seed."""
    if len(values) < 2:
        return format(values.mean(), fmt)
    return f"{format(values.mean(), fmt)} ± {format(values.std(ddof=1), fmt)}"
