"""The head/body observation over seeds: FedAvg under Dirichlet label skew vs an IID control.

For each partition and seed, train the default config on ``--dataset`` with ``--model``, take
``layer_summary`` and form head/body ratios of the group means (relative variance, drift diversity)
and the CKA gap (body mean - head mean). Prints per-run rows and mean/std/min/max per partition;
writes ``<out>/observation_<dataset>.csv``. The README's MNIST-1D numbers come from::

    OMP_NUM_THREADS=1 python scripts/observation_seeds.py --dataset mnist1d --model cnn1d

(about 8 minutes on 2 busy cores).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from driftscope import RunConfig, open_run, train
from driftscope.analysis.tables import layer_summary
from driftscope.data import load_dataset

COLUMNS = ["final_acc", "relvar_head_over_body", "divers_head_over_body", "cka_body_minus_head"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist1d")
    parser.add_argument("--model", default="cnn1d")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--out", default="runs/observation")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(args.dataset)
    rows = []
    for partition in ("dirichlet", "iid"):
        for seed in args.seeds:
            start = time.time()
            cfg = RunConfig().replace(
                {
                    "seed": seed,
                    "data.dataset": args.dataset,
                    "model.name": args.model,
                    "data.partition": partition,
                    "data.alpha": args.alpha,
                }
            )
            path = out / f"{args.dataset}-{partition}-seed{seed}.h5"
            train(cfg, path, overwrite=True, dataset=dataset)
            with open_run(path) as run:
                summary = layer_summary(run)
                acc = float(run.metrics["test_accuracy"].iloc[-1])
            g = summary.groupby("group")[["relative_variance", "drift_diversity", "cka"]].mean()
            rows.append(
                {
                    "dataset": args.dataset,
                    "partition": partition,
                    "seed": seed,
                    "final_acc": acc,
                    "relvar_head_over_body": g.loc["head", "relative_variance"]
                    / g.loc["body", "relative_variance"],
                    "divers_head_over_body": g.loc["head", "drift_diversity"]
                    / g.loc["body", "drift_diversity"],
                    "cka_body_minus_head": g.loc["body", "cka"] - g.loc["head", "cka"],
                    "seconds": round(time.time() - start, 1),
                }
            )
            print(pd.DataFrame(rows[-1:]).round(3).to_string(index=False, header=not rows[:-1]))
    table = pd.DataFrame(rows)
    table.to_csv(out / f"observation_{args.dataset}.csv", index=False)
    stats = table.groupby("partition")[COLUMNS].agg(["mean", "std", "min", "max"]).T
    print(stats.round(3).to_string())


if __name__ == "__main__":
    main()
