"""FedAvg, FedPVR (fixed head), FedPVR (drift-chosen head) and SCAFFOLD over seeds.

Every arm uses the same general hyperparameters (the default config unless ``--set`` overrides
them for all arms); each algorithm runs with its own defaults (FedPVR and the auto variant: body
momentum 0.9, momentum 0 where control variates correct). Recording is off. Prints one markdown
table per setting (mean +- std over seeds) and writes every run's row to ``--csv``.

    OMP_NUM_THREADS=1 python scripts/compare_auto_head.py --seeds 0 1 2 \\
        --setting "digits, Dirichlet 0.1" --setting "digits, Dirichlet 1.0:data.alpha=1.0" \\
        --csv auto_head.csv
"""

from __future__ import annotations

import argparse
import ast
import math
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

ARMS = {
    "FedAvg": {"train.algorithm": "fedavg"},
    "FedPVR (fixed head)": {"train.algorithm": "fedpvr"},
    "FedPVR (auto head)": {"train.algorithm": "fedpvr_auto"},
    "SCAFFOLD": {"train.algorithm": "scaffold"},
}
TARGET = 0.9


def parse_setting(text: str) -> tuple[str, dict]:
    """'name:key=value,key=value' -> (name, overrides); values are Python literals."""
    name, _, rest = text.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            overrides[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            overrides[key.strip()] = value.strip()
    return name.strip(), overrides


def one_run(job: tuple[str, dict, str, int]) -> dict:
    import torch

    from driftscope.config import RunConfig
    from driftscope.engine.inprocess import Simulator
    from driftscope.errors import DivergenceError

    torch.set_num_threads(1)
    setting, overrides, arm, seed = job
    values = {"record.enabled": False, **overrides, **ARMS[arm]}
    cfg = RunConfig().replace(values).replace({"seed": seed})
    sim = Simulator(cfg)
    rounds = []
    diverged = math.nan
    try:
        for _ in range(cfg.train.rounds):
            rounds.append(sim.run_round())
    except DivergenceError:  # same hyperparameters for all: a divergence is a result
        diverged = len(rounds)
    acc = np.array([r.test_accuracy for r in rounds])
    per_round = np.array([r.downlink_bytes + r.uplink_bytes for r in rounds], dtype=float)
    hit = np.flatnonzero(acc >= TARGET)
    row = {
        "setting": setting,
        "arm": arm,
        "seed": seed,
        "diverged_at": diverged,
        "final_accuracy": float(acc[-1]) if math.isnan(diverged) and len(acc) else math.nan,
        "rounds_to_target": int(hit[0]) + 1 if len(hit) else math.nan,
        "total_mb": per_round.sum() / 1e6 if math.isnan(diverged) else math.nan,
        "mb_to_target": per_round[: hit[0] + 1].sum() / 1e6 if len(hit) else math.nan,
        "chosen_layers": "",
    }
    algo = sim.algorithm
    if hasattr(algo, "chosen"):
        labels = [layer.label for layer in sim.layout.layers]
        row["chosen_layers"] = " ".join(
            lab for lab, c in zip(labels, algo.chosen, strict=True) if c
        )
    elif arm == "SCAFFOLD":
        row["chosen_layers"] = "all"
    elif arm.startswith("FedPVR"):
        row["chosen_layers"] = " ".join(
            layer.label for layer in sim.layout.layers if layer.group == "head"
        )
    print(
        f"{setting} | {arm} | seed {seed}: {row['final_accuracy']:.4f} diverged {diverged}",
        file=sys.stderr,
    )
    return row


def table(df: pd.DataFrame) -> str:
    def ms(s: pd.Series, fmt: str, none: str = "never", some: str = "seeds reach it") -> str:
        s = s.astype(float)
        reached = s.dropna()
        if reached.empty:
            return none
        text = fmt.format(reached.mean())
        if len(reached) > 1:
            text += f" ± {fmt.format(reached.std(ddof=1))}"
        if len(reached) < len(s):
            text += f" ({len(reached)}/{len(s)} {some})"
        return text

    def final(g: pd.DataFrame) -> str:
        div = g.diverged_at.dropna()
        done = "seeds complete"
        text = ms(g.final_accuracy, "{:.4f}", some=done) if len(div) < len(g) else ""
        if len(div):
            at = ", ".join(str(int(r)) for r in div)  # 0-based, as the error message says
            text += f" diverged in {len(div)}/{len(g)} seeds (at round {at})"
        return text.strip()

    lines = [
        f"| arm | final accuracy | rounds to {TARGET:.0%} | MB to {TARGET:.0%} | MB total "
        "| accuracy vs FedAvg per seed (points) | layers with control variates |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        g = df[df.arm == arm]
        if g.empty:
            continue
        by_set: dict[str, list[str]] = {}
        for seed, c in zip(g.seed, g.chosen_layers, strict=True):
            by_set.setdefault(c if c and c != "nan" else "-", []).append(str(seed))
        chosen = (
            [next(iter(by_set))]
            if len(by_set) == 1
            else [f"{c} (seed {', '.join(seeds)})" for c, seeds in by_set.items()]
        )
        base = df[df.arm == "FedAvg"].set_index("seed").final_accuracy
        paired = (g.set_index("seed").final_accuracy - base).dropna()
        delta = " ".join(f"{100 * d:+.1f}" for d in paired) if arm != "FedAvg" else ""
        lines.append(
            f"| {arm} | {final(g)} | {ms(g.rounds_to_target, '{:.1f}')} "
            f"| {ms(g.mb_to_target, '{:.1f}')} | {ms(g.total_mb, '{:.1f}', '-', 'seeds complete')} "
            f"| {delta or '-'} | {'; '.join(chosen) if arm != 'FedAvg' else '-'} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--setting", action="append", help="name:key=value,... (repeatable)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--csv", type=Path, default=None)
    ap.add_argument("--table-from", type=Path, help="print the tables of a CSV this wrote")
    args = ap.parse_args()
    if args.table_from:
        df = pd.read_csv(args.table_from, keep_default_na=False, na_values=["nan", ""])
        df["chosen_layers"] = df["chosen_layers"].astype(str)
        for name in dict.fromkeys(df.setting):
            seeds = ", ".join(str(s) for s in sorted(set(df[df.setting == name].seed)))
            print(f"\n{name} (seeds {seeds})\n")
            print(table(df[df.setting == name]))
        return
    settings = [parse_setting(s) for s in (args.setting or ["digits, Dirichlet 0.1"])]
    jobs = [(name, ov, arm, seed) for name, ov in settings for seed in args.seeds for arm in ARMS]
    rows = []
    with ProcessPoolExecutor(args.workers) as pool:
        for row in pool.map(one_run, jobs):
            rows.append(row)
            if args.csv:  # every finished run, as it comes
                pd.DataFrame(rows).to_csv(args.csv, index=False)
    df = pd.DataFrame(rows)
    for name, _ in settings:
        print(f"\n{name} (seeds {', '.join(map(str, args.seeds))})\n")
        print(table(df[df.setting == name]))


if __name__ == "__main__":
    main()
