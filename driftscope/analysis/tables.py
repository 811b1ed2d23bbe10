"""Turn runs into tidy pandas tables of per-layer drift; every metric comes from ``METRICS``.

``drift_table(run)`` has one row per (round, layer, metric): columns ``round, layer, label, group,
metric, value``, for every metric of :data:`driftscope.metrics.METRICS` the run supports (``"gram"``
metrics on recorded rounds, ``"cka"`` metrics on rounds with probe CKA, ``"global"`` metrics on
recorded rounds of runs that recorded the global model's norms, ``"lora"`` metrics on the rounds
that store updates, for each LoRA-adapted module, on the rows of both its factors' layers).

``layer_summary(run)`` aggregates over rounds, one row per layer in model order, one column per
metric, by :func:`pool_rounds`: ratio measures (relative variance, drift diversity) as ratios of
sums over rounds, because a single round's small mean update makes its own ratio noisy
(docs/science.md); every other measure as its mean over rounds. The layer-profile figure shows the same
numbers.

``tidy(runs)`` is ``drift_table`` of several runs with run labels, the ratio parts kept so that
:func:`pool_rounds` can pool it; ``communication_factor(run)`` is communication per round in
FedAvg units.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from driftscope.analysis.labels import config_value, run_labels
from driftscope.metrics import METRICS, Metric
from driftscope.metrics.drift import as_gram
from driftscope.metrics.lora import lora_pairs
from driftscope.models.layout import LayerInfo
from driftscope.runfile.reader import Run
from driftscope.runfile.schema import CKA_KINDS

__all__ = [
    "BYTES_PER_VALUE",
    "aggregation_sizes",
    "aggregation_weights",
    "cka_kinds",
    "cka_values",
    "communication_factor",
    "drift_table",
    "gram_values",
    "layer_summary",
    "lora_frames",
    "name_ratio_parts",
    "participant_weights",
    "pool_rounds",
    "tidy",
]

COLUMNS = ["round", "layer", "label", "group", "metric", "value"]
PARTS = ["numerator", "denominator"]
BYTES_PER_VALUE = 4  # float32 on the wire, as the simulator counts


def aggregation_weights(run: Run) -> np.ndarray | None:
    """(recorded rounds, S) weights of the mean update, or None for uniform averaging."""
    sizes = aggregation_sizes(run)
    return None if sizes is None else participant_weights(sizes, run.participants)


def aggregation_sizes(run: Run) -> np.ndarray | None:
    """(clients,) the sizes the run weights its clients by, or None for uniform averaging."""
    if config_value(run, "train", "weighting", "uniform") == "uniform":
        return None
    return np.asarray(run.client_sizes, dtype=np.float64)


def participant_weights(sizes: np.ndarray, participants: np.ndarray) -> np.ndarray:
    """(rounds, S) aggregation weights of the clients ``participants`` (rounds, S) from their
    ``sizes`` (:func:`aggregation_sizes`): each row sums to 1."""
    w = sizes[participants]
    return w / w.sum(axis=1, keepdims=True)


def _metrics(source: str) -> list[Metric]:
    return [m for m in map(METRICS.get, METRICS) if m.source == source]


def cka_kinds(run: Run, layer: str) -> dict[str, np.ndarray]:
    """Each CKA kind ``layer`` has in ``run`` -> its (CKA rounds, S + 1, S + 1) matrices. A kind
    not recorded (no probe CKA, a layer CKA skipped) is left out; a recorded one that cannot be
    read raises its RunFileError (damage is not "not recorded")."""
    name = run.layer(layer).name
    if name in run.cka_skipped:
        return {}
    return {kind: run.cka(layer, kind) for kind in CKA_KINDS if run.has_cka(name, kind)}


def drift_table(run: Run, parts: bool = False, rounds: Sequence[int] | None = None) -> pd.DataFrame:
    """Tidy per-(round, layer, metric) table of a run (see the module docstring).

    With ``parts``, two more columns ``numerator`` and ``denominator`` hold each ratio metric's
    parts (NaN for other metrics), so that :func:`pool_rounds` can form ratios of sums.
    ``rounds``: only these round numbers (the same values as in the whole table).
    """
    frames: list[dict[str, np.ndarray]] = []
    all_rounds, all_cka = run.rounds, run.cka_rounds  # each a read of the file: once
    keep = np.ones(len(all_rounds), dtype=bool)
    keep_cka = np.ones(len(all_cka), dtype=bool)
    if rounds is not None:
        keep = np.isin(all_rounds, list(rounds))
        keep_cka = np.isin(all_cka, list(rounds))
    recorded = all_rounds[keep]
    # rows beyond the rounds read above belong to rounds committed since (a live run's writer
    # in another thread): every record is cut to the same rounds
    n, n_cka = len(all_rounds), len(all_cka)
    weights = weights_all = aggregation_weights(run)
    if weights is not None:
        weights = weights[:n][keep]
    has_global = run.has_global_weights
    for layer in run.layers:
        if len(recorded):
            g = as_gram(run.gram(layer.name)[:n][keep])
            sq_dot = None
            if has_global:
                sq, dot = run.global_weights(layer.name)
                sq_dot = (sq[:n][keep], dot[:n][keep])
            for name, value, num, den in gram_values(g, layer.numel, weights, sq_dot, parts):
                frames.append(_frame(recorded, layer, name, value, num, den, parts))
        if keep_cka.any():
            kinds = {k: v[:n_cka][keep_cka] for k, v in cka_kinds(run, layer.name).items()}
            for name, value in cka_values(kinds):
                frames.append(_frame(all_cka[keep_cka], layer, name, value, None, None, parts))
    frames += lora_frames(run, weights_all, rounds, parts)
    columns = COLUMNS + (PARTS if parts else [])
    if not frames:
        return pd.DataFrame(columns=columns)
    # one DataFrame from the concatenated columns (a DataFrame per (layer, metric) and a concat
    # cost ~2 ms each, most of the table's time)
    return pd.DataFrame({c: np.concatenate([f[c] for f in frames]) for c in columns})


def lora_frames(
    run: Run, weights: np.ndarray | None, rounds: Sequence[int] | None, parts: bool
) -> list[dict[str, np.ndarray]]:
    """Rows of the ``"lora"`` metrics: per LoRA pair whose updates and global factors are stored,
    on the rounds that store updates (``rounds``: only these), on both factors' layers."""
    metrics = _metrics("lora")
    if not metrics or not len(run.update_rounds):
        return []
    pairs = [
        pair
        for pair in lora_pairs(p.name for p in run.params)
        if all(run.has_global_params(n) for n in (pair.a, pair.b))
    ]
    if not pairs:
        return []
    upd = run.update_rounds
    keep = np.ones(len(upd), dtype=bool) if rounds is None else np.isin(upd, list(rounds))
    w = None
    if weights is not None:  # the recorded rounds' rows of the update rounds
        w = weights[np.searchsorted(run.rounds, upd)][keep]
    frames = []
    for pair in pairs:
        da, db = run.updates(pair.a)[keep], run.updates(pair.b)[keep]
        a, b = run.global_params(pair.a)[keep], run.global_params(pair.b)[keep]
        for m in metrics:
            value = m.function(da, db, a, b, w)
            for name in (pair.a, pair.b):
                layer = run.layer(run.param(name).layer)
                frames.append(_frame(upd[keep], layer, m.name, value, None, None, parts))
    return frames


def gram_values(
    g: np.ndarray,
    numel: int,
    weights: np.ndarray | None,
    sq_dot: tuple[np.ndarray, np.ndarray] | None = None,
    parts: bool = False,
) -> Iterator[tuple[str, np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """(metric, values, numerator, denominator) of every ``"gram"`` metric of one layer's Gram
    matrices ``g`` (rounds, S, S), then every ``"global"`` one when ``sq_dot`` (the global
    model's ``||w||^2`` and ``<w, d_i>`` of the same rounds) is given; the ratio parts only with
    ``parts``. What :func:`drift_table` and the live logger compute, in registry order."""
    for m in _metrics("gram"):
        num = den = None
        if parts and m.ratio is not None:
            num = m.ratio[0](g, numel, weights)
            den = m.ratio[1](g, numel, weights)
        yield m.name, m.function(g, numel, weights), num, den
    if sq_dot is not None:
        for m in _metrics("global"):
            yield m.name, m.function(g, numel, weights, *sq_dot), None, None


def cka_values(kinds: dict[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
    """(metric, values) of every ``"cka"`` metric whose CKA kinds ``kinds`` (kind -> (rounds,
    S + 1, S + 1)) holds, in registry order."""
    for m in _metrics("cka"):
        try:
            yield m.name, m.function(kinds)
        except KeyError:  # needs a CKA kind this run did not record
            continue


def _frame(
    rounds: ArrayLike,
    layer: LayerInfo,
    metric: str,
    values: ArrayLike,
    num: ArrayLike | None,
    den: ArrayLike | None,
    parts: bool,
) -> dict[str, np.ndarray]:
    r = np.asarray(rounds).astype(int)
    n = len(r)
    data: dict[str, np.ndarray] = {
        "round": r,
        "layer": np.full(n, layer.name, dtype=object),
        "label": np.full(n, layer.label, dtype=object),
        "group": np.full(n, layer.group, dtype=object),
        "metric": np.full(n, metric, dtype=object),
        "value": np.broadcast_to(np.asarray(values, dtype=np.float64), (n,)),
    }
    if parts:
        nan = np.full(n, np.nan)
        data["numerator"] = nan if num is None else np.asarray(num, dtype=np.float64)
        data["denominator"] = nan if den is None else np.asarray(den, dtype=np.float64)
    return data


def name_ratio_parts(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (with ratio parts) with two more columns naming each ratio metric's numerator and
    denominator (``Metric.ratio_names``, e.g. relative_variance: ``update_variance`` over
    ``mean_update_sq_norm``; empty for other metrics): what ``driftscope analyze --csv`` writes,
    so that anyone can pool a ratio over rounds as ``sum(numerator) / sum(denominator)``."""
    names: dict[str, tuple[str, str]] = {}
    for name in table["metric"].unique():
        parts = METRICS.get(name).ratio_names if name in METRICS else None
        if parts is not None:
            names[name] = parts
    return table.assign(
        numerator_name=table["metric"].map(lambda m: names[m][0] if m in names else ""),
        denominator_name=table["metric"].map(lambda m: names[m][1] if m in names else ""),
    )


def pool_rounds(table: pd.DataFrame, by: Sequence[str] = ("layer", "metric")) -> pd.DataFrame:
    """Aggregate a table with ratio parts (``drift_table(run, parts=True)``, :func:`tidy`) over
    rounds (and over anything else not in ``by``, e.g. the seeds of one condition).

    A ratio metric (one with ``ratio`` in :data:`METRICS`) becomes ``sum(numerator) /
    sum(denominator)`` (NaN where the denominator sum is not positive); any other metric the mean
    of its finite values. Returns the ``by`` columns and ``value``, in order of first appearance.
    """
    by = list(by)
    if "numerator" not in table.columns:
        raise ValueError("pool_rounds needs the ratio parts: use drift_table(run, parts=True)")
    if not len(table):
        return pd.DataFrame(columns=[*by, "value"])
    ratio = table["metric"].map(
        lambda name: name in METRICS and METRICS.get(name).ratio is not None
    )
    grouped = table.assign(_ratio=ratio.astype(bool)).groupby(by, sort=False)

    def pool(g: pd.DataFrame) -> float:
        if g["_ratio"].iloc[0]:
            den = float(g["denominator"].sum())
            return float(g["numerator"].sum()) / den if den > 0 else float("nan")
        values = g["value"].to_numpy(dtype=np.float64)
        values = values[np.isfinite(values)]
        return float(values.mean()) if len(values) else float("nan")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pandas' groupby-apply notice
        out = grouped[["_ratio", "numerator", "denominator", "value"]].apply(pool)
    return out.rename("value").reset_index()


def layer_summary(run: Run) -> pd.DataFrame:
    """One row per layer in model order: ``layer, label, group, numel`` and one column per
    metric of :data:`~driftscope.metrics.METRICS` the run has, pooled over rounds by
    :func:`pool_rounds` (ratio metrics as ratios of sums, the others as means)."""
    base = pd.DataFrame(
        {
            "layer": [ly.name for ly in run.layers],
            "label": [ly.label for ly in run.layers],
            "group": [ly.group for ly in run.layers],
            "numel": [ly.numel for ly in run.layers],
        }
    )
    pooled = pool_rounds(drift_table(run, parts=True))
    if not len(pooled):
        return base
    wide = pooled.pivot(index="layer", columns="metric", values="value")
    order = [name for name in METRICS if name in wide.columns]
    return base.join(wide[order], on="layer")


def tidy(runs: Run | Sequence[Run]) -> pd.DataFrame:
    """``drift_table(run, parts=True)`` of each run, concatenated.

    Columns: ``round, layer, label, group, metric, value, numerator, denominator`` plus ``run``
    (the unique run label of :func:`~driftscope.analysis.labels.run_labels`), ``condition`` (the
    label shared by seeds of one setting) and ``algorithm``. Rows keep each run's model order.
    """
    runs = [runs] if isinstance(runs, Run) else list(runs)
    unique = run_labels(runs)
    shared = run_labels(runs, unique=False)
    frames = []
    for run, label, condition in zip(runs, unique, shared):
        table = drift_table(run, parts=True)
        table["run"] = label
        table["condition"] = condition
        table["algorithm"] = (
            run.app_strategy.get("class", "unknown")
            if run.app is not None
            else config_value(run, "train", "algorithm")
        )
        frames.append(table)
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=[*COLUMNS, *PARTS, "run", "condition", "algorithm"])
    return pd.concat(frames, ignore_index=True)


def communication_factor(run: Run) -> float:
    """Communication per round (down + up) in units of one FedAvg one-way model transfer.

    ``Run.bytes_per_round / (4 bytes x numel x clients per round)``: FedAvg reads 2.0, SCAFFOLD
    4.0, FedPVR 2 (1 + head share).
    """
    numel = sum(p.numel for p in run.params)
    return run.bytes_per_round / (BYTES_PER_VALUE * numel * run.clients_per_round)
