"""Head against body, with the spread over rounds beside the pooled numbers.

:func:`head_vs_body` compares a run's head layers with its body on measures that are not functions
of one another (docs/science.md, "Per-layer drift measures"):

* ``relative_variance`` (spread of the client updates around their mean, relative to the mean): the
  ratio head / body of the group means; the head drifts more where it is above 1;
* ``mean_pairwise_cosine`` (alignment of the client updates) and ``cka`` (similarity of the
  clients' representations): the difference body - head; the head agrees less where it is above 0.

Drift diversity is left out: with uniform client weights it equals (1 + relative variance) / S, the
same evidence again.

For each measure: the comparison of the group means pooled over all recorded rounds (as
:func:`~driftscope.analysis.tables.layer_summary` pools each layer), the same pooled after a
warm-up, and the comparison made round by round: its median and interquartile range over rounds and
the number of rounds in which the head is beyond the body. Ratio measures are pooled as ratios of
sums, which weights each round by the squared norm of its mean update, largest in the first
rounds; the per-round numbers show how much the pooled one rests on those.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from driftscope.analysis.tables import drift_table, pool_rounds
from driftscope.errors import ConfigError
from driftscope.runfile.reader import Run

__all__ = ["EVIDENCE_MEASURES", "default_warmup", "depth_trend", "group_comparison", "head_vs_body"]

#: measure -> how head and body are compared: "ratio" (head / body) or "difference" (body - head)
EVIDENCE_MEASURES = {
    "relative_variance": "ratio",
    "mean_pairwise_cosine": "difference",
    "cka": "difference",
}
COLUMNS = [
    "metric",
    "comparison",
    "pooled",
    "pooled_after_warmup",
    "median",
    "q25",
    "q75",
    "head_beyond",
    "rounds",
    "warmup",
]


def default_warmup(run: Run) -> int:
    """The first round counted after the warm-up: a quarter of the run's configured rounds."""
    return max(1, run.config.train.rounds // 4)


def group_comparison(head: np.ndarray, body: np.ndarray, how: str) -> np.ndarray:
    """``head / body`` (``how="ratio"``, NaN where body is not positive) or ``body - head``
    (``"difference"``); positive evidence of head drift is > 1 resp. > 0."""
    head, body = np.asarray(head, np.float64), np.asarray(body, np.float64)
    if how == "ratio":
        out = np.full(np.broadcast(head, body).shape, np.nan)
        np.divide(head, body, out=out, where=body > 0)
        return out
    if how == "difference":
        return body - head
    raise ValueError(f"how must be 'ratio' or 'difference', not {how!r}")


def _beyond(values: np.ndarray, how: str) -> np.ndarray:
    return values > 1 if how == "ratio" else values > 0


def has_head_and_body(run: Run) -> bool:
    """Whether the run's layers are in both groups (a head/body comparison has two sides)."""
    return {"head", "body"} <= {layer.group for layer in run.layers}


def check_head_and_body(run: Run) -> None:
    """A one-line error unless the run has head and body layers."""
    if has_head_and_body(run):
        return
    empty = "head" if all(layer.group != "head" for layer in run.layers) else "body"
    raise ConfigError(
        f"{run.path.name} has an empty {empty}: no head/body comparison (declare the head with "
        "the model's head_prefixes, or recording(..., head=[...]) for a Flower app)"
    )


def head_vs_body(
    run: Run, warmup: int | None = None, table: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per measure of :data:`EVIDENCE_MEASURES` the run has (a run without records: no
    rows). A run whose layers are all in one group (an empty head, or no body) has nothing to
    compare: :class:`~driftscope.errors.ConfigError`, naming how to declare a head.

    Columns: ``metric``, ``comparison`` (``"head/body"`` or ``"body - head"``), ``pooled`` (the
    comparison of the group means of the per-layer values pooled over all recorded rounds),
    ``pooled_after_warmup`` (the same over rounds >= ``warmup``), ``median``, ``q25``, ``q75``
    (of the comparison made in each round, over the rounds where it is finite), ``head_beyond``
    (rounds in which the head is beyond the body: ratio > 1, difference > 0), ``rounds`` (rounds
    counted) and ``warmup`` (default :func:`default_warmup`). ``table``: the run's
    ``drift_table(run, parts=True)`` when the caller already has it.
    """
    check_head_and_body(run)
    warmup = default_warmup(run) if warmup is None else warmup
    t = drift_table(run, parts=True) if table is None else table
    t = t[t["metric"].isin(list(EVIDENCE_MEASURES))]
    rows = []
    if not len(t) or not {"head", "body"} <= set(t["group"]):
        return pd.DataFrame(columns=COLUMNS)
    for metric, how in EVIDENCE_MEASURES.items():
        m = t[t["metric"] == metric]
        if not len(m):
            continue
        per_round = m.groupby(["round", "group"])["value"].mean().unstack("group")
        values = group_comparison(per_round["head"].to_numpy(), per_round["body"].to_numpy(), how)
        finite = values[np.isfinite(values)]
        q25, median, q75 = np.quantile(finite, [0.25, 0.5, 0.75]) if len(finite) else (np.nan,) * 3
        rows.append(
            {
                "metric": metric,
                "comparison": "head/body" if how == "ratio" else "body - head",
                "pooled": _pooled(m, how),
                "pooled_after_warmup": _pooled(m[m["round"] >= warmup], how),
                "median": float(median),
                "q25": float(q25),
                "q75": float(q75),
                "head_beyond": int(_beyond(finite, how).sum()),
                "rounds": len(finite),
                "warmup": warmup,
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def _pooled(m: pd.DataFrame, how: str) -> float:
    """The comparison of the group means of the layers' values pooled over the rounds in ``m``."""
    if not len(m):
        return float("nan")
    pooled = pool_rounds(m, by=("layer", "group"))
    means = pooled.groupby("group")["value"].mean()
    return float(group_comparison(means["head"], means["body"], how))


def depth_trend(values: pd.Series | np.ndarray) -> float:
    """Spearman rank correlation of ``values`` (layers in model order) with depth: +1 when they
    rise with every layer (a gradient through the network), lower when they do not."""
    from scipy.stats import spearmanr

    v = np.asarray(values, np.float64)
    if len(v) < 2 or not np.all(np.isfinite(v)):
        return float("nan")
    return float(spearmanr(np.arange(len(v)), v).statistic)
