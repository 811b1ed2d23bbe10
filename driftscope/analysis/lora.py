"""LoRA adapters across clients, per adapted module: A against B, and the aggregation residual.

``lora_table(run)`` has one row per (round, module): the module's name (e.g. ``blocks.0.attn.q``),
the relative variance and mean pairwise cosine of the clients' updates of its A factor and of its
B factor (the registry's per-layer metrics of the two factors' layers: FedSA-LoRA's asymmetry),
and FedEx-LoRA's aggregation residual (``lora_residual``, on rounds that store updates; NaN
elsewhere). ``lora_module_summary(run)`` pools it over rounds the way ``layer_summary`` does
(relative variance as a ratio of sums, the others as means). Both are empty for a run without
LoRA factors.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from driftscope.analysis.tables import drift_table, layer_summary
from driftscope.metrics.lora import lora_pairs
from driftscope.runfile.reader import Run

__all__ = ["FACTOR_METRICS", "lora_module_summary", "lora_table"]

#: the per-layer metrics shown for each factor
FACTOR_METRICS = ("relative_variance", "mean_pairwise_cosine")
COLUMNS = [
    "module",
    *(f"{f}_{m}" for m in FACTOR_METRICS for f in ("A", "B")),
    "lora_residual",
]


def _pairs(run: Run) -> list[tuple[str, str, str]]:
    """(module, A's layer, B's layer) of each LoRA pair in the run's layout."""
    return [
        (pair.module, run.param(pair.a).layer, run.param(pair.b).layer)
        for pair in lora_pairs(p.name for p in run.params)
    ]


def lora_table(run: Run) -> pd.DataFrame:
    """One row per (round, adapted module): see the module docstring."""
    pairs = _pairs(run)
    if not pairs or not len(run.rounds):
        return pd.DataFrame(columns=["round", *COLUMNS])
    table = drift_table(run)
    wide = table.pivot_table(index=["round", "layer"], columns="metric", values="value")
    frames = []
    for module, a, b in pairs:
        part = pd.DataFrame({"round": run.rounds, "module": module})
        for factor, layer in (("A", a), ("B", b)):
            rows = wide.xs(layer, level="layer")
            for m in FACTOR_METRICS:
                part[f"{factor}_{m}"] = rows[m].reindex(run.rounds).to_numpy()
        res = wide.xs(a, level="layer").get("lora_residual")
        part["lora_residual"] = (
            np.nan if res is None else res.reindex(run.rounds).to_numpy(dtype=np.float64)
        )
        frames.append(part)
    return pd.concat(frames, ignore_index=True)


def lora_module_summary(run: Run) -> pd.DataFrame:
    """One row per adapted module (model order), the :func:`lora_table` columns pooled over
    rounds as :func:`~driftscope.analysis.layer_summary` pools them, and ``head_relative_variance``
    (the head layers' pooled relative variance, mean over the head's layers) for comparison."""
    pairs = _pairs(run)
    if not pairs:
        return pd.DataFrame(columns=COLUMNS)
    summary = layer_summary(run).set_index("layer")
    rows = []
    for module, a, b in pairs:
        row: dict[str, object] = {"module": module}
        for factor, layer in (("A", a), ("B", b)):
            for m in FACTOR_METRICS:
                row[f"{factor}_{m}"] = float(summary.at[layer, m])
        res = summary["lora_residual"] if "lora_residual" in summary else None
        row["lora_residual"] = float(res.at[a]) if res is not None else np.nan
        rows.append(row)
    out = pd.DataFrame(rows, columns=COLUMNS)
    head = summary[summary["group"] == "head"]
    out["head_relative_variance"] = float(head["relative_variance"].mean()) if len(head) else np.nan
    return out
