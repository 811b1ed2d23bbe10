"""``driftscope reproduce``: the FedPVR paper's observation on the embedded default.

Runs FedAvg, SCAFFOLD and FedPVR on the digits under Dirichlet label skew (alpha 0.1), plus an IID
FedAvg control, all with the same hyperparameters (the default config), then prints

1. where drift lives under FedAvg: per-layer relative variance, drift diversity and CKA, head vs
   body, for alpha 0.1 and for the IID control;
2. final accuracy and communication per round of each algorithm;

and writes the run files and figures into one folder. An arm that diverges keeps its completed
rounds and is reported as diverged (with the round); the others go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from driftscope.analysis.tables import layer_summary
from driftscope.config import RunConfig
from driftscope.data import load_dataset
from driftscope.errors import DivergenceError
from driftscope.reader import open_run
from driftscope.training import train


@dataclass(frozen=True)
class Arm:
    name: str
    overrides: dict


ARMS = (
    Arm("fedavg", {"train.algorithm": "fedavg"}),
    Arm("scaffold", {"train.algorithm": "scaffold"}),
    Arm("fedpvr", {"train.algorithm": "fedpvr"}),
    Arm("fedavg-iid", {"train.algorithm": "fedavg", "data.partition": "iid"}),
)


def reproduce(
    out_dir: Path,
    rounds: int | None = None,
    seed: int = 0,
    progress: bool = True,
    figures: bool = True,
) -> dict[str, Path]:
    """Run the four arms into ``out_dir`` (overwriting earlier reproduce runs there)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset("digits")
    paths: dict[str, Path] = {}
    for arm in ARMS:
        overrides = {"seed": seed, **arm.overrides}
        if rounds is not None:
            overrides["train.rounds"] = rounds
        cfg = RunConfig().replace(overrides)
        path = out_dir / f"{arm.name}.h5"
        if progress:
            print(f"[{arm.name}] training ...", flush=True)
        try:
            train(cfg, path, overwrite=True, progress=progress, dataset=dataset)
        except DivergenceError as err:
            print(f"[{arm.name}] {err}; its run file keeps the rounds before", flush=True)
        paths[arm.name] = path
    print(observation(paths))
    if figures:
        from driftscope.figures import write_figures

        runs = [open_run(paths[a.name]) for a in ARMS]
        try:
            written = write_figures(runs, out_dir / "figures")
        finally:
            for run in runs:
                run.close()
        print(f"\nwrote {len(written)} figure files to {out_dir / 'figures'}")
    return paths


def observation(paths: dict[str, Path]) -> str:
    """The printed report: per-layer drift head vs body, then accuracy and communication."""
    lines: list[str] = []
    summaries = {}
    for name in ("fedavg", "fedavg-iid"):
        with open_run(paths[name]) as run:
            summaries[name] = layer_summary(run)
    lines.append("\n== Where drift lives: FedAvg, per layer (aggregated over rounds; * = head) ==")
    merged = summaries["fedavg"][
        ["label", "group", "relative_variance", "drift_diversity", "cka"]
    ].merge(
        summaries["fedavg-iid"][["label", "relative_variance", "drift_diversity", "cka"]],
        on="label",
        suffixes=(" a=0.1", " iid"),
    )
    merged.insert(0, " ", ["*" if g == "head" else "" for g in merged["group"]])
    lines.append(
        merged.drop(columns="group").to_string(index=False, float_format=lambda v: f"{v:.3f}")
    )
    gap_rows = []
    for name, s in summaries.items():
        by = s.groupby("group")[["relative_variance", "drift_diversity", "cka"]].mean()
        gap_rows.append(
            {
                "partition": "alpha 0.1" if name == "fedavg" else "iid",
                "rel. variance head/body": by.loc["head", "relative_variance"]
                / by.loc["body", "relative_variance"],
                "diversity head/body": by.loc["head", "drift_diversity"]
                / by.loc["body", "drift_diversity"],
                "CKA body - head": by.loc["body", "cka"] - by.loc["head", "cka"],
            }
        )
    lines.append("\nhead vs body (mean over layers of each group):")
    lines.append(pd.DataFrame(gap_rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))

    lines.append("\n== Accuracy and communication ==")
    rows = []
    fedavg_bytes = None
    for name, path in paths.items():
        with open_run(path) as run:
            m = run.metrics
            per_round = run.bytes_per_round
            if name == "fedavg":
                fedavg_bytes = per_round
            complete = run.status == "complete"
            rows.append(
                {
                    "run": name,
                    "final acc": m["test_accuracy"].iloc[-1] if complete else float("nan"),
                    "best acc": m["test_accuracy"].max(),
                    "MB / round": per_round / 1e6,
                    "x FedAvg": per_round / fedavg_bytes if fedavg_bytes else float("nan"),
                    "status": run.status if complete else f"{run.status} at round {run.num_rounds}",
                }
            )
    lines.append(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return "\n".join(lines)
