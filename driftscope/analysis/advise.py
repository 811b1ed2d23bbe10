"""A per-layer aggregation advisor from a run's recorded drift (``driftscope advise RUN.h5``).

Every number comes from the run file: the clients' update Gram matrices ``G`` (every recorded
round) and, where recorded, the global model's ``||w||^2`` and ``<w, d_i>``. Pooled over the
recorded rounds used (``R``, from ``from_round`` on; a round where a client failed is left out):

* ``V_l = sum_R (sum_i p_i G_ii - p^T G p)``: update variance (absolute), ``share_l = V_l / sum V``;
* ``d_l = V_l / (|R| numel_l)``: FedLAMA's layer discrepancy (per parameter, per round);
* ``A_l = sum_R p^T G p / sum_R sum_i p_i^2 G_ii``: alignment, the mean update's squared norm over
  what it would be if the clients' updates were mutually orthogonal (1 / drift diversity for
  uniform weights); ``A_l <= 1``: the clients' updates cancel rather than add; ``A_model`` the
  same of the whole model (the sums over layers: the alignment of the concatenated update);
* ``theta_l``: L-DAWA's angular divergence ``1 - cos(w_g, w_k)``, mean over clients and rounds,
  against the same for the whole model (``theta_model``).

Recommendations, first match wins (docs/advise.md gives the reasons and the thresholds' grounds):

1. **keep local or aggregate less often** (keep local): ``A_l <= 1`` and ``A_l < A_model``
   (near a stationary point every layer's mean update shrinks and ``A`` falls for all of them:
   the layer must also cancel more than the model as a whole).
2. **variance-reduce**: the layers, ranked by ``d_l`` (largest first), up to the first that brings
   the cumulative ``share`` to :data:`VARIANCE_SHARE` (the most variance removed per value of
   control-variate traffic, which is proportional to ``numel``).
3. **keep local or aggregate less often** (aggregate less often): FedLAMA's rule from the other
   end (layers by ``d_l`` ascending, while the cumulative variance share ``delta`` stays below one
   minus the cumulative parameter share ``lambda``), and ``theta_l <= theta_model``: its clients
   turn the layer less than the model as a whole. Needs the global norms; without them it is not
   made, and the run says so.
4. **federate as is**: the rest.

The comparison with fedpvr_auto: on a fedpvr_auto run its recorded choice (``algorithm/
chosen_layers``); on any other run :func:`~driftscope.algorithms.fedpvr_auto.choose_layers` on the
same Grams (uniform weights, as it measures) over its warm-up window, with its default settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from driftscope.analysis.labels import config_value
from driftscope.analysis.tables import aggregation_weights
from driftscope.errors import RunFileError
from driftscope.metrics.drift import as_gram
from driftscope.metrics.layerwise import one_minus_cosine
from driftscope.runfile.reader import Run

__all__ = [
    "AGGREGATE_LESS",
    "AS_IS",
    "KEEP_LOCAL",
    "VARIANCE_REDUCE",
    "VARIANCE_SHARE",
    "Advice",
    "FedPVRChoice",
    "advise",
    "fedlama_relaxed",
    "fedlama_shares",
    "variance_reduced",
]

AS_IS = "federate as is"
VARIANCE_REDUCE = "variance-reduce"
KEEP_LOCAL = "keep local or aggregate less often"
AGGREGATE_LESS = KEEP_LOCAL  # the same recommendation; the reason tells which
VARIANCE_SHARE = 0.5  # the share of the update variance the variance-reduced layers hold


@dataclass(frozen=True)
class FedPVRChoice:
    """fedpvr_auto's choice on the run: ``chosen`` (L,) bool, and where it comes from."""

    chosen: np.ndarray
    source: str  # "recorded" (a fedpvr_auto run's own choice) or "rule" (applied here)
    settings: str  # e.g. "warm-up 5 rounds, variance share 0.5, order top"
    window: str  # the rounds whose variance it chose from
    changed: int = 0  # how many times a fedpvr_auto run's choice changed after the first


@dataclass(frozen=True)
class Advice:
    """One row per layer in ``table`` (ranked by ``discrepancy``, largest first) and what the
    recommendations rest on."""

    table: pd.DataFrame
    rounds: np.ndarray  # the recorded rounds pooled
    model_alignment: float  # A_model
    model_angle: float  # theta_model (nan: not recorded)
    fedpvr: FedPVRChoice
    notes: list[str] = field(default_factory=list)  # what could not be assessed, and why


def variance_reduced(discrepancy: np.ndarray, variance: np.ndarray, share: float) -> np.ndarray:
    """Bool (L,): the layers by ``discrepancy`` descending up to the first whose cumulative share
    of ``variance`` reaches ``share`` (none if there is no variance)."""
    v = np.asarray(variance, dtype=np.float64)
    out = np.zeros(len(v), dtype=bool)
    total = v.sum()
    if not total > 0:
        return out
    order = np.argsort(-np.asarray(discrepancy), kind="stable")
    cum = np.cumsum(v[order]) / total
    k = int(np.searchsorted(cum, share, side="left")) + 1
    out[order[: min(k, len(v))]] = True
    return out


def fedlama_shares(discrepancy: np.ndarray, numel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FedLAMA's running shares per layer (L,), layers taken by discrepancy ascending: ``delta``,
    the cumulative share of the variance ``discrepancy * numel`` up to and including the layer,
    and ``1 - lambda``, one minus the cumulative share of parameters (NaN without variance)."""
    d = np.asarray(discrepancy, dtype=np.float64)
    n = np.asarray(numel, dtype=np.float64)
    v = d * n
    delta = np.full(len(d), np.nan)
    rest = np.full(len(d), np.nan)
    if v.sum() > 0:
        order = np.argsort(d, kind="stable")
        delta[order] = np.cumsum(v[order]) / v.sum()
        rest[order] = 1.0 - np.cumsum(n[order]) / n.sum()
    return delta, rest


def fedlama_relaxed(discrepancy: np.ndarray, numel: np.ndarray) -> np.ndarray:
    """Bool (L,): FedLAMA's layers to aggregate less often: ``delta < 1 - lambda``
    (:func:`fedlama_shares`). Along the ascending order ``delta`` grows and ``1 - lambda`` falls,
    so these are the layers before the cross point; the authors' code also takes the layer at the
    cross point, which relaxes every layer of a model whose layers are alike."""
    delta, rest = fedlama_shares(discrepancy, numel)
    return np.asarray(delta < rest)  # False where NaN (no variance)


def _finite_mean(values: np.ndarray) -> float:
    """Mean over the defined values: L-DAWA's cosine is undefined for a layer whose global weights
    are zero (a LoRA B factor at its first round), and those rounds are left out, as
    ``layer_summary`` leaves them out; nan if no value is defined."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _pooled(run: Run, from_round: int) -> tuple[np.ndarray, dict[str, np.ndarray], Any]:
    """(rounds used, {layer: Grams (R, S, S)}, weights (R, S) | None)."""
    rounds = run.rounds
    keep = rounds >= from_round
    grams = {ly.name: as_gram(run.gram(ly.name)[: len(rounds)]) for ly in run.layers}
    for g in grams.values():
        keep &= np.isfinite(g).all(axis=(-2, -1))
    weights = aggregation_weights(run)
    if weights is not None:
        weights = weights[: len(rounds)][keep]
    return rounds[keep], {k: g[keep] for k, g in grams.items()}, (keep, weights)


def _fedpvr(run: Run, rounds: np.ndarray, grams: dict[str, np.ndarray]) -> FedPVRChoice:
    from driftscope.algorithms.fedpvr_auto import FedPVRAutoParams, choose_layers

    is_auto = config_value(run, "train", "algorithm") == "fedpvr_auto"
    params = config_value(run, "train", "params") if is_auto else None
    if not isinstance(params, FedPVRAutoParams):
        params = FedPVRAutoParams() if params is None else FedPVRAutoParams(**dict(params))
    settings = (
        f"warm-up {params.warmup_rounds} rounds, variance share {params.variance_share:g}, "
        f"order {params.layer_order}"
        + (f", re-chosen every {params.rechoose_every} rounds" if params.rechoose_every else "")
    )
    if is_auto and "chosen_layers" in run.algorithm_record_keys:
        table = run.algorithm_record("chosen_layers")
        rows = table[table.index >= params.warmup_rounds].to_numpy().astype(bool)
        if len(rows):
            changes = int(np.sum(np.any(rows[1:] != rows[:-1], axis=1)))
            return FedPVRChoice(
                rows[-1], "recorded", settings, f"its choice in round {table.index[-1]}", changes
            )
    window = rounds < params.warmup_rounds
    if not window.any():  # no recorded round in the warm-up: every round used stands in
        window[:] = True
        span = f"rounds {rounds[0]}-{rounds[-1]} (none recorded in its warm-up)"
    else:
        span = f"rounds {rounds[window][0]}-{rounds[window][-1]}"
    variance = np.array(  # uniform weights: fedpvr_auto's unweighted mean over participants
        [_variance(g[window], None).sum() for g in grams.values()]
    )
    chosen = choose_layers(variance, params.variance_share, params.layer_order)
    return FedPVRChoice(chosen, "rule", settings, span)


def _variance(g: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """Per round ``sum_i p_i G_ii - p^T G p`` (>= 0)."""
    p = np.full(g.shape[:-1], 1.0 / g.shape[-1]) if w is None else w
    diag = np.diagonal(g, axis1=-2, axis2=-1)
    return np.clip((p * diag).sum(-1) - np.einsum("ri,rij,rj->r", p, g, p), 0.0, None)


def advise(run: Run, from_round: int = 0) -> Advice:
    """The per-layer advice for ``run`` (module docstring); a one-line ``RunFileError`` if the
    run cannot support any recommendation."""
    if not run.recorded:
        raise RunFileError(
            f"{run.path.name} has no per-layer records (recorded with --no-record): no "
            "recommendation can be made; re-run without --no-record"
        )
    rounds, grams, (keep, weights) = _pooled(run, from_round)
    if not len(rounds):
        have = ", ".join(str(int(r)) for r in run.rounds[:5]) or "none"
        raise RunFileError(
            f"{run.path.name} has no recorded round from round {from_round} on with every "
            f"client's update (recorded: {have}...): lower --from-round"
        )
    layers = run.layers
    numel = np.array([ly.numel for ly in layers], dtype=np.float64)
    s = next(iter(grams.values())).shape[-1]
    p = np.full((len(rounds), s), 1.0 / s) if weights is None else weights
    variance, aligned, orthogonal = [], [], []
    for g in grams.values():
        diag = np.diagonal(g, axis1=-2, axis2=-1)
        mean_sq = np.einsum("ri,rij,rj->r", p, g, p)
        variance.append(_variance(g, p).sum())
        aligned.append(mean_sq.sum())
        orthogonal.append((p * p * diag).sum())
    v = np.array(variance)
    discrepancy = v / (len(rounds) * numel)
    alignment = np.divide(
        aligned, orthogonal, out=np.full(len(v), np.nan), where=np.array(orthogonal) > 0
    )
    rel_var = np.divide(v, aligned, out=np.full(len(v), np.nan), where=np.array(aligned) > 0)
    notes: list[str] = []
    angle = np.full(len(layers), np.nan)
    model_angle = float("nan")
    if run.has_global_weights:
        total_a = np.zeros(len(rounds))
        total_b = np.zeros((len(rounds), s))
        total_c = np.zeros((len(rounds), s))
        for j, ly in enumerate(layers):
            sq, dot = run.global_weights(ly.name)
            sq, dot = sq[: len(keep)][keep], dot[: len(keep)][keep]
            c = np.diagonal(grams[ly.name], axis1=-2, axis2=-1)
            angle[j] = _finite_mean(one_minus_cosine(sq[:, None], dot, c))
            total_a, total_b, total_c = total_a + sq, total_b + dot, total_c + c
        model_angle = _finite_mean(one_minus_cosine(total_a[:, None], total_b, total_c))
    else:
        notes.append(
            "'aggregate less often' (FedLAMA's low-discrepancy layers) cannot be assessed: it "
            "also needs L-DAWA's angle, from the global model's norms (records/global), which "
            "this run file does not hold (recorded before driftscope stored them); those "
            "layers read 'federate as is'. Re-run to record them."
        )
    model_alignment = (
        float(np.sum(aligned) / np.sum(orthogonal)) if np.sum(orthogonal) > 0 else np.nan
    )
    conflict = (alignment <= 1) & (alignment < model_alignment)
    reduce = variance_reduced(discrepancy, v, VARIANCE_SHARE) & ~conflict
    delta, rest = fedlama_shares(discrepancy, numel)
    fedlama = fedlama_relaxed(discrepancy, numel)
    calm = angle <= model_angle  # False where not recorded (nan)
    relax = fedlama & calm & ~conflict & ~reduce
    order = np.argsort(-discrepancy, kind="stable")
    top_share = np.empty(len(v))  # cumulative variance share down the ranking, this layer included
    top_share[order] = np.cumsum(v[order]) / v.sum() if v.sum() > 0 else np.nan
    rec, why, action = [], [], []
    for j in range(len(layers)):
        a = f"alignment {alignment[j]:.3g}"
        if not conflict[j]:
            a += " > 1" if alignment[j] > 1 else f" >= model {model_alignment:.3g}"
        if conflict[j]:
            rec.append(KEEP_LOCAL)
            action.append("keep local")
            why.append(
                f"keep local: {a} <= 1 and < model {model_alignment:.3g}: the clients' updates "
                "cancel"
            )
        elif reduce[j]:
            rec.append(VARIANCE_REDUCE)
            action.append(VARIANCE_REDUCE)
            why.append(
                f"{a}; the layers by discrepancy down to it hold {top_share[j]:.0%} of the "
                f"variance (the set ends at the first to reach {VARIANCE_SHARE:.0%})"
            )
        elif relax[j]:
            rec.append(AGGREGATE_LESS)
            action.append("aggregate less often")
            why.append(
                f"aggregate less often: FedLAMA delta {delta[j]:.2f} < 1 - lambda "
                f"{rest[j]:.2f}; angle {angle[j]:.3g} <= model {model_angle:.3g}"
            )
        else:
            rec.append(AS_IS)
            action.append(AS_IS)
            lama = f"FedLAMA delta {delta[j]:.2f} {'<' if fedlama[j] else '>='} 1 - lambda {rest[j]:.2f}"
            if fedlama[j] and np.isnan(angle[j]):
                tail = f"{lama}, but the angle is not recorded"
            elif fedlama[j]:
                tail = f"{lama}, but angle {angle[j]:.3g} > model {model_angle:.3g}"
            else:
                tail = f"outside the {VARIANCE_SHARE:.0%} variance set; {lama}"
            why.append(f"{a}; {tail}")
    fedpvr = _fedpvr(run, rounds, grams)
    if fedpvr.source == "rule" and config_value(run, "train", "algorithm") == "fedpvr_auto":
        notes.append(
            "this fedpvr_auto run has no recorded choice (algorithm/chosen_layers, written by "
            "newer versions): its rule is applied to the run's numbers instead"
        )
    table = pd.DataFrame(
        {
            "layer": [ly.name for ly in layers],
            "label": [ly.label for ly in layers],
            "group": [ly.group for ly in layers],
            "numel": numel.astype(np.int64),
            "discrepancy": discrepancy,
            "variance_share": v / v.sum() if v.sum() > 0 else np.full(len(v), np.nan),
            "relative_variance": rel_var,
            "alignment": alignment,
            "angular_divergence": angle,
            "recommendation": rec,
            "action": action,
            "reason": why,
            "fedlama_delta": delta,
            "fedlama_one_minus_lambda": rest,
            "fedlama_relaxes": fedlama,
            "fedpvr_auto": fedpvr.chosen.astype(bool),
        }
    )
    table = table.sort_values("discrepancy", ascending=False, kind="stable").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return Advice(table, rounds, model_alignment, model_angle, fedpvr, notes)
