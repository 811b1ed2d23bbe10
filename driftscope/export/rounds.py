"""What an exporter writes for each round of a run, read from the run file (torch-free).

One :class:`RoundExport` per committed round: scalars under stable names, histograms, and the
step (the round number). Names:

================================  ==========================================================
``drift/<metric>/<layer>``        every ``"gram"`` metric of ``METRICS`` per layer (and label
                                  alignment after the run), the values of ``analyze --csv``
``cka/<metric>/<layer>``          every ``"cka"`` metric of ``METRICS`` per layer, on CKA rounds
``drift_<group>/<metric>``        each ``"gram"`` metric of the head's and of the body's layers
                                  together (their Gram matrices summed: the Gram of the
                                  concatenated update)
``test/<x>``, ``train/<x>``       the round's accuracy and loss (test only on evaluated rounds)
``traffic/<x>``                   downlink and uplink bytes of the round
``round/<x>``                     any other per-round metric of the run file (seconds, ...)
``client_train_loss/<client>``    each participating client's train loss
``update_norm/<layer>``           histogram: the clients' update norms (sqrt of the Gram diagonal)
================================  ==========================================================

Metric names, labels and scales come from :data:`driftscope.metrics.METRICS` (and layer labels
from the run's layout), so a registered metric is exported without touching this module.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from driftscope.metrics import METRICS
from driftscope.models.layout import LayerInfo
from driftscope.runfile.reader import Run

__all__ = [
    "RoundExport",
    "add_groups_and_norms",
    "hyperparameters",
    "metric_labels",
    "round_exports",
    "round_metric_name",
    "scalar_name",
]


@dataclass
class RoundExport:
    """One round: ``scalars`` name -> value; ``histograms`` name -> values."""

    round: int
    scalars: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, np.ndarray] = field(default_factory=dict)


def scalar_name(metric: str, layer: str) -> str:
    """The exported name of a per-layer metric: ``cka/...`` for a ``"cka"`` metric of the
    registry, ``drift/...`` for every other one (``"gram"`` metrics, label alignment)."""
    source = METRICS.get(metric).source if metric in METRICS else "gram"
    return f"{'cka' if source == 'cka' else 'drift'}/{metric}/{layer}"


def round_metric_name(column: str) -> str:
    prefix, _, rest = column.partition("_")
    if prefix in ("test", "train") and rest:
        return f"{prefix}/{rest}"
    if column.endswith("_bytes"):
        return f"traffic/{column}"
    return f"round/{column}"


def round_exports(
    run: Run, rounds: Iterable[int] | None = None, *, label_alignment: bool = False
) -> list[RoundExport]:
    """The :class:`RoundExport` of each committed round (or of ``rounds``), in round order.

    ``label_alignment`` adds the label alignment rows of ``analyze --csv`` (a permutation test per
    layer and round: the export after a run does it, the live logger does not).
    """
    from driftscope.analysis.tables import aggregation_weights, drift_table

    metrics = run.metrics
    wanted = set(int(r) for r in (metrics["round"] if rounds is None else rounds))
    out = {int(r): RoundExport(int(r)) for r in metrics["round"] if int(r) in wanted}
    if not out:
        return []
    chosen = sorted(out)
    for _, row in metrics[metrics["round"].isin(chosen)].iterrows():
        rec = out[int(row["round"])]
        for col, value in row.items():
            if col != "round" and np.isfinite(value):
                rec.scalars[round_metric_name(str(col))] = float(value)
    cm = run.client_metrics
    for r, client, loss in cm[cm["round"].isin(chosen)][["round", "client", "train_loss"]].values:
        out[int(r)].scalars[f"client_train_loss/{int(client)}"] = float(loss)
    if not run.recorded:
        return [out[r] for r in chosen]
    table = drift_table(run, rounds=chosen)
    if label_alignment:
        import pandas as pd

        from driftscope.analysis.attribution import label_alignment_table

        la = label_alignment_table(run)
        table = pd.concat([table, la[la["round"].isin(chosen)]], ignore_index=True)
    for r, layer, metric, value in table[["round", "layer", "metric", "value"]].values:
        if np.isfinite(value):
            out[int(r)].scalars[scalar_name(str(metric), str(layer))] = float(value)
    all_rounds = run.rounds
    n = len(all_rounds)  # rows past n: rounds committed since (a live run), cut
    keep = np.isin(all_rounds, chosen)
    weights = aggregation_weights(run)
    if weights is not None:
        weights = weights[:n][keep]
    grams = {ly.name: run.gram(ly.name)[:n][keep] for ly in run.layers}
    add_groups_and_norms(out, run.layers, all_rounds[keep], grams, weights)
    return [out[r] for r in chosen]


def add_groups_and_norms(
    out: dict[int, RoundExport],
    layers: Sequence[LayerInfo],
    recorded: np.ndarray,
    grams: dict[str, np.ndarray],
    weights: np.ndarray | None,
) -> None:
    """Add to each recorded round of ``out`` the head and body summaries (``drift_<group>/...``)
    and the update-norm histograms, from each layer's Gram matrices ``grams`` (recorded rounds,
    S, S) and the aggregation ``weights`` (None: uniform) of the rounds ``recorded``."""
    # head and body: a metric of the concatenated update is the metric of the summed Grams
    for group in dict.fromkeys(ly.group for ly in layers):
        members = [ly for ly in layers if ly.group == group]
        g = np.sum([grams[ly.name] for ly in members], axis=0)
        numel = sum(ly.numel for ly in members)
        for name in METRICS:
            m = METRICS.get(name)
            if m.source != "gram":
                continue
            values = np.asarray(m.function(g, numel, weights), dtype=np.float64)
            for r, v in zip(recorded, values):
                if np.isfinite(v):
                    out[int(r)].scalars[f"drift_{group}/{name}"] = float(v)
    for ly in layers:
        norms = np.sqrt(np.clip(np.diagonal(grams[ly.name], axis1=-2, axis2=-1), 0, None))
        for r, n in zip(recorded, norms):
            out[int(r)].histograms[f"update_norm/{ly.name}"] = np.asarray(n, dtype=np.float64)


def metric_labels(layers: Sequence[LayerInfo]) -> dict[str, Any]:
    """What the names mean: each metric's label, scale and description (the registry), each
    layer's label and group (the run's layout)."""
    return {
        "metrics": {
            name: {
                "label": METRICS.get(name).label,
                "scale": METRICS.get(name).scale,
                "source": METRICS.get(name).source,
                "description": METRICS.get(name).description,
            }
            for name in METRICS
        },
        "layers": {ly.name: {"label": ly.label, "group": ly.group} for ly in layers},
    }


def hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config (``RunConfig`` as a dict) flattened to dotted keys, values as scalars
    (lists as JSON text)."""
    out: dict[str, Any] = {}

    def walk(tree: dict[str, Any], prefix: str) -> None:
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif value is None or isinstance(value, bool | int | float | str):
                out[prefix + key] = "" if value is None else value
            else:
                out[prefix + key] = json.dumps(value)

    walk(config, "")
    return out
