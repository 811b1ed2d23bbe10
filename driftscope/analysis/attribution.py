"""Which labels drive a run's drift: tidy tables over a :class:`~driftscope.runfile.reader.Run`.

The math lives in :mod:`driftscope.metrics.attribution`; these functions read the recorded update
Grams, stored updates and the partition's label histograms, and return long tables.

``label_alignment_table(run)``: one row per (round, layer, metric), columns ``round, layer,
label, group, metric, value`` (the shape of :func:`~driftscope.analysis.tables.drift_table`):

==================== ====================================================================
metric               meaning
==================== ====================================================================
label_alignment      Spearman correlation (``method="pearson"`` on request), over client pairs,
                     between the pairwise cosine of the clients' updates of the layer and the
                     cosine of their label histograms; +1: clients with similar labels send
                     similar updates, 0: disagreement unrelated to labels
label_alignment_p    one-sided Mantel permutation p-value of ``label_alignment`` (exact when
                     the S! client relabellings are at most ``permutations``)
==================== ====================================================================

``class_variance_table(run)``: for the classifier's output layer (default: the last layer), one
row per (round, class, metric) over the rounds with stored updates, columns ``round, layer,
label, class, metric, value``:

==================== ====================================================================
metric               meaning
==================== ====================================================================
class_variance       cross-client update variance of the class's weight row plus its bias
                     entry, ``sum_i w_i ||d_i[k] - m[k]||^2``
class_variance_share ``class_variance`` over its sum across classes (the layer's variance)
class_mean_sq_norm   ``||m[k]||^2``: the squared norm of the class's mean update
label_share_variance variance across the round's clients of the class's share of each client's
                     samples: how unevenly the class is spread (0 under a perfect IID split)
==================== ====================================================================

``label_alignment_summary(run)``: one row per layer (model order) with the median alignment
over rounds, the share of rounds with ``p <= 0.05``, and the alignment of the *cumulative*
updates (the Grams summed over rounds; only when every round has the same clients).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from driftscope.analysis.tables import aggregation_weights
from driftscope.errors import RunFileError
from driftscope.metrics import attribution as at
from driftscope.models.layout import LayerInfo
from driftscope.runfile.reader import Run

ALIGNMENT_METRICS = ("label_alignment", "label_alignment_p")
CLASS_METRICS = (
    "class_variance",
    "class_variance_share",
    "class_mean_sq_norm",
    "label_share_variance",
)
SIGNIFICANCE = 0.05

__all__ = [
    "ALIGNMENT_METRICS",
    "CLASS_METRICS",
    "class_variance_table",
    "label_alignment_summary",
    "label_alignment_table",
    "output_layer",
]


def _histograms(run: Run) -> np.ndarray:
    return run.label_histogram.to_numpy().astype(np.float64)


def label_alignment_table(
    run: Run,
    *,
    method: str = "spearman",
    permutations: int = at.DEFAULT_PERMUTATIONS,
    seed: int = 0,
    layers: list[str] | None = None,
) -> pd.DataFrame:
    """Per (round, layer): label alignment and its Mantel p-value (module docstring).

    ``layers``: names or labels to include (default all). ``seed`` fixes the random
    relabellings (the same for every layer and round), so the table is reproducible.
    """
    columns = ["round", "layer", "label", "group", "metric", "value"]
    rounds = run.rounds
    if not len(rounds):
        return pd.DataFrame(columns=columns)
    hist = _histograms(run)
    participants = run.participants
    chosen = run.layers if layers is None else [run.layer(name) for name in layers]
    rows = []
    for layer in chosen:
        grams = run.gram(layer.name)
        for r, g, clients in zip(rounds, grams, participants):
            res = at.label_alignment(
                g, hist[clients], method=method, permutations=permutations, seed=seed
            )
            for metric, value in zip(ALIGNMENT_METRICS, (res.statistic, res.p_value)):
                rows.append((int(r), layer.name, layer.label, layer.group, metric, value))
    return pd.DataFrame(rows, columns=columns)


def label_alignment_summary(
    run: Run,
    *,
    method: str = "spearman",
    permutations: int = at.DEFAULT_PERMUTATIONS,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per layer: ``label_alignment_median``, ``significant_share`` (rounds with
    ``p <= 0.05``), ``label_alignment_cumulative`` and ``label_alignment_cumulative_p``."""
    table = label_alignment_table(run, method=method, permutations=permutations, seed=seed)
    participants = run.participants
    same_clients = len(participants) > 0 and bool(np.all(participants == participants[0]))
    hist = _histograms(run)
    rows = []
    for layer in run.layers:
        sub = table[table["layer"] == layer.name]
        stat = sub[sub["metric"] == "label_alignment"]["value"]
        p = sub[sub["metric"] == "label_alignment_p"]["value"]
        row: dict[str, object] = {
            "layer": layer.name,
            "label": layer.label,
            "group": layer.group,
            "label_alignment_median": float(stat.median()) if stat.notna().any() else np.nan,
            "significant_share": float((p <= SIGNIFICANCE).mean()) if len(p) else np.nan,
            "label_alignment_cumulative": np.nan,
            "label_alignment_cumulative_p": np.nan,
        }
        if same_clients:
            res = at.label_alignment(
                run.gram(layer.name).sum(axis=0),
                hist[participants[0]],
                method=method,
                permutations=permutations,
                seed=seed,
            )
            row["label_alignment_cumulative"] = res.statistic
            row["label_alignment_cumulative_p"] = res.p_value
        rows.append(row)
    return pd.DataFrame(rows)


def output_layer(run: Run, layer: str | None = None) -> tuple[LayerInfo, str, str | None]:
    """The classifier's output layer (default: the last layer) and its (weight, bias) names.

    Its weight's first axis must have one row per class of the label histograms.
    """
    ly = run.layer(layer) if layer is not None else run.layers[-1]
    params = [run.param(name) for name in ly.params]
    weights = [p for p in params if len(p.shape) >= 2]
    biases = [p for p in params if len(p.shape) == 1]
    k = run.label_histogram.shape[1]
    if len(weights) != 1 or weights[0].shape[0] != k or len(biases) > 1:
        raise RunFileError(
            f"layer {ly.label} ({ly.name}) is not a classifier output layer with one weight row "
            f"per class ({k} classes): name the output layer, e.g. layer='{run.layers[-1].label}'"
        )
    bias = biases[0].name if biases and biases[0].shape[0] == k else None
    return ly, weights[0].name, bias


def class_variance_table(
    run: Run, layer: str | None = None, *, weighted: bool = True
) -> pd.DataFrame:
    """Per (stored-update round, class): the output layer's cross-client update variance.

    Needs the layer's full updates in the run file (``record.updates_every`` > 0 and the layer in
    ``record.update_layers``). ``weighted``: use the run's aggregation weights (as the drift
    table does); otherwise uniform.
    """
    columns = ["round", "layer", "label", "class", "metric", "value"]
    ly, weight_name, bias_name = output_layer(run, layer)
    update_rounds = run.update_rounds
    if not len(update_rounds):
        return pd.DataFrame(columns=columns)
    w_up = run.updates(weight_name)  # (U, S, K, F)
    b_up = run.updates(bias_name) if bias_name is not None else None
    rows_of = np.searchsorted(run.rounds, update_rounds)
    clients = run.participants[rows_of]  # (U, S)
    agg = aggregation_weights(run) if weighted else None
    weights = agg[rows_of] if agg is not None else None
    variance = at.class_variance(w_up, b_up, weights)  # (U, K)
    rows = np.concatenate(
        [w_up.reshape(*w_up.shape[:3], -1)] + ([b_up[..., None]] if b_up is not None else []),
        axis=-1,
    )
    w = (
        np.full(clients.shape, 1.0 / clients.shape[1])
        if weights is None
        else weights / weights.sum(axis=1, keepdims=True)
    )
    mean = np.einsum("us,uskf->ukf", w, rows.astype(np.float64))
    mean_sq = np.sum(mean * mean, axis=-1)  # (U, K)
    total = variance.sum(axis=-1, keepdims=True)
    share = np.divide(variance, total, out=np.full_like(variance, np.nan), where=total > 0)
    hist = _histograms(run)
    sizes = hist.sum(axis=1, keepdims=True)
    label_share = np.divide(hist, sizes, out=np.zeros_like(hist), where=sizes > 0)
    spread = label_share[clients].var(axis=1)  # (U, K)
    frames = []
    k = variance.shape[1]
    for metric, values in zip(CLASS_METRICS, (variance, share, mean_sq, spread)):
        frames.append(
            pd.DataFrame(
                {
                    "round": np.repeat(update_rounds.astype(int), k),
                    "layer": ly.name,
                    "label": ly.label,
                    "class": np.tile(np.arange(k), len(update_rounds)),
                    "metric": metric,
                    "value": np.asarray(values, dtype=np.float64).ravel(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)[columns]
