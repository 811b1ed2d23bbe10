"""Turn a run into tidy pandas tables of per-layer drift.

``drift_table(run)`` has one row per (round, layer, metric): columns ``round, layer, label, group,
metric, value``. Update metrics (from the recorded Gram matrices, :mod:`driftscope.analysis.drift`):
``update_variance``, ``relative_variance``, ``per_parameter_variance``, ``drift_diversity``,
``cosine_divergence``, ``mean_pairwise_cosine``, ``mean_update_sq_norm``, ``mean_client_sq_norm``.
Probe metrics (rounds with CKA): ``cka`` (mean linear CKA over client pairs), ``cka_rbf``,
``cka_debiased``, and ``cka_to_global`` (mean linear CKA of each client to the new global model).

``layer_summary(run)`` aggregates over rounds, one row per layer in model order. Ratio measures
(relative variance, drift diversity) are formed from the Gram matrices summed over rounds, i.e. as
ratios of sums, because a single round's small mean update makes its ratio noisy (science.md);
cosine and CKA measures are averaged over rounds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from driftscope.analysis import drift
from driftscope.reader import Run

UPDATE_METRICS = drift.METRIC_NAMES
CKA_METRICS = ("cka", "cka_rbf", "cka_debiased", "cka_to_global")
SUMMARY_METRICS = ("relative_variance", "drift_diversity", "cosine_divergence", "cka")


def aggregation_weights(run: Run) -> np.ndarray | None:
    """(recorded rounds, S) weights of the mean update, or None for uniform averaging."""
    if run.config["train"].get("weighting", "uniform") == "uniform":
        return None
    sizes = run.file["partition/client_size"][()].astype(np.float64)
    w = sizes[run.participants]
    return w / w.sum(axis=1, keepdims=True)


def _mean_offdiag(m: np.ndarray) -> np.ndarray:
    """Mean of the off-diagonal entries of (..., S, S)."""
    s = m.shape[-1]
    mask = ~np.eye(s, dtype=bool)
    return m[..., mask].mean(axis=-1) if s > 1 else np.full(m.shape[:-2], np.nan)


def drift_table(run: Run) -> pd.DataFrame:
    """Tidy per-(round, layer, metric) table of a run (see the module docstring)."""
    frames = []
    rounds = run.rounds
    weights = aggregation_weights(run)
    for layer in run.layers:
        if len(rounds):
            g = run.gram(layer.name)
            values = drift.layer_metrics(g, layer.numel, weights)
            for metric in UPDATE_METRICS:
                frames.append(_frame(rounds, layer, metric, values[metric]))
        if len(run.cka_rounds):
            cr = run.cka_rounds
            lin = run.cka(layer.name, "linear")
            clients = lin[:, :-1, :-1]
            frames.append(_frame(cr, layer, "cka", _mean_offdiag(clients)))
            frames.append(
                _frame(cr, layer, "cka_rbf", _mean_offdiag(run.cka(layer.name, "rbf")[:, :-1, :-1]))
            )
            frames.append(
                _frame(
                    cr,
                    layer,
                    "cka_debiased",
                    _mean_offdiag(run.cka(layer.name, "debiased")[:, :-1, :-1]),
                )
            )
            frames.append(_frame(cr, layer, "cka_to_global", lin[:, :-1, -1].mean(axis=-1)))
    if not frames:
        return pd.DataFrame(columns=["round", "layer", "label", "group", "metric", "value"])
    return pd.concat(frames, ignore_index=True)


def _frame(rounds: np.ndarray, layer, metric: str, values: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "round": rounds.astype(int),
            "layer": layer.name,
            "label": layer.label,
            "group": layer.group,
            "metric": metric,
            "value": np.asarray(values, dtype=np.float64),
        }
    )


def layer_summary(run: Run) -> pd.DataFrame:
    """One row per layer in model order: layer, label, group, numel and the summary metrics."""
    rows = []
    weights = aggregation_weights(run)
    table = drift_table(run)
    for layer in run.layers:
        row: dict[str, object] = {
            "layer": layer.name,
            "label": layer.label,
            "group": layer.group,
            "numel": layer.numel,
        }
        if len(run.rounds):
            g = run.gram(layer.name)
            if weights is None:
                total = g.sum(axis=0)
                row["relative_variance"] = float(drift.relative_variance(total))
                row["drift_diversity"] = float(drift.drift_diversity(total))
            else:
                v = drift.update_variance(g, weights).sum()
                m = drift.mean_update_sq_norm(g, weights).sum()
                row["relative_variance"] = float(v / m) if m > 0 else np.nan
                row["drift_diversity"] = float(drift.drift_diversity(g.sum(axis=0)))
            row["cosine_divergence"] = float(np.nanmean(drift.cosine_divergence(g, weights)))
        sub = table[(table["layer"] == layer.name) & (table["metric"] == "cka")]
        row["cka"] = float(sub["value"].mean()) if len(sub) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)
