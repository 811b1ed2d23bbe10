"""The metric registry: every per-layer measure that tables, figures and reports show.

A :class:`Metric` names a function and says how to show it (axis label, linear or log scale).
Adding a metric is one function plus one record::

    def max_client_sq_norm(G, numel, weights):          # (..., S, S) -> (...)
        return np.diagonal(G, axis1=-2, axis2=-1).max(axis=-1)

    register_metric(Metric("max_client_sq_norm", r"max $\\|d_i\\|^2$", "log", "gram",
                           max_client_sq_norm, "largest squared client update norm"))

after which :func:`~driftscope.analysis.drift_table`, :func:`~driftscope.analysis.layer_summary`,
the figures (label, log scale) and the reports know it.

Three sources of data:

``"gram"``: ``function(G, numel, weights)``: ``G`` the ``(..., S, S)`` Gram matrices of one layer's
    client updates (leading axes: rounds), ``numel`` the layer's parameter count, ``weights``
    ``None`` (uniform) or ``(..., S)`` aggregation weights. Returns ``(...)``.
``"cka"``: ``function(cka)``: ``cka`` maps each recorded kind (``"linear"``, ``"rbf"``,
    ``"debiased"``) to ``(..., S + 1, S + 1)`` pairwise CKA of the S client models and the new
    global model (last index) on the probe set. Returns ``(...)``.
``"global"``: ``function(G, numel, weights, sq_norm, dot)``: the ``"gram"`` arguments plus, for the
    global model ``w`` each round started from, ``sq_norm`` ``(...)`` = ``||w||^2`` and ``dot``
    ``(..., S)`` = ``<w, d_i>`` (``records/global``; runs recorded before it have none, and
    the metric is then left out). Returns ``(...)``.
``"lora"``: ``function(dA, dB, A, B, weights)``: for one LoRA-adapted module (PEFT's ``lora_A`` and
    ``lora_B`` factors, :func:`driftscope.metrics.lora.lora_pairs`), the clients' stored updates
    ``dA`` ``(..., S, r, k)`` and ``dB`` ``(..., S, m, r)``, the global factors ``A`` ``(..., r, k)``
    and ``B`` ``(..., m, r)`` the round started from (``records/global_params``) and the weights;
    on the rounds that store updates, shown on the rows of both factors' layers. Returns ``(...)``.

Over rounds (:func:`~driftscope.analysis.layer_summary`, the layer-profile figure) a metric with
``ratio = (numerator, denominator)`` is pooled as ``sum(numerator) / sum(denominator)`` (a ratio of
sums: one round's small mean update makes its own ratio noisy, docs/science.md); every other metric is
averaged over rounds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from driftscope.metrics import drift, layerwise, lora
from driftscope.registry import Registry

__all__ = ["METRICS", "Metric", "gram_metrics", "headline_metrics", "register_metric"]

GramFunction = Callable[[np.ndarray, int, Any], np.ndarray]
SOURCES = ("gram", "cka", "global", "lora")


@dataclass(frozen=True)
class Metric:
    """One per-layer measure.

    Attributes:
        name: the ``metric`` value in tables (snake_case).
        label: axis / legend label (matplotlib mathtext allowed).
        scale: ``"linear"`` or ``"log"`` (figures use a log axis for positive values).
        source: ``"gram"``, ``"cka"``, ``"global"`` or ``"lora"``: what ``function`` takes (see
            the module docstring).
        function: the measure.
        description: one line for help texts and reports.
        ratio: for a ratio measure, ``(numerator, denominator)`` with the ``"gram"`` signature;
            pooled over rounds as a ratio of sums.
        headline: shown by default: a column of ``driftscope analyze`` and a layer-profile figure
            of ``driftscope figures``.
        ratio_names: names of the ratio's numerator and denominator (the ``numerator_name`` and
            ``denominator_name`` columns of ``driftscope analyze --csv``); default
            ``("<name> numerator", "<name> denominator")``.
    """

    name: str
    label: str
    scale: Literal["linear", "log"]
    source: Literal["gram", "cka", "global", "lora"]
    function: Callable[..., Any]
    description: str
    ratio: tuple[GramFunction, GramFunction] | None = None
    headline: bool = False
    ratio_names: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if self.scale not in ("linear", "log"):
            raise ValueError(f"metric {self.name}: scale must be 'linear' or 'log'")
        if self.source not in SOURCES:
            raise ValueError(f"metric {self.name}: source must be one of {', '.join(SOURCES)}")
        if self.ratio is not None and self.source != "gram":
            raise ValueError(f"metric {self.name}: only 'gram' metrics can be ratios")
        if self.ratio is not None and self.ratio_names is None:
            names = (f"{self.name} numerator", f"{self.name} denominator")
            object.__setattr__(self, "ratio_names", names)


METRICS: Registry[Metric] = Registry("metric")


def register_metric(metric: Metric) -> Metric:
    """Add ``metric`` to :data:`METRICS` (a duplicate name raises ``ValueError``)."""
    return METRICS.register(metric.name, metric)


def headline_metrics() -> tuple[str, ...]:
    """Names of the metrics shown by default (``headline=True``), in registration order."""
    return tuple(name for name in METRICS if METRICS.get(name).headline)


def gram_metrics(G: Any, numel: int, weights: Any | None = None) -> dict[str, np.ndarray]:
    """Every ``"gram"`` metric of one layer: ``{name: (...)}`` float64, from ``(..., S, S)``."""
    if numel <= 0:
        raise ValueError(f"numel must be positive; got {numel}")
    g = drift.as_gram(G)
    return {
        m.name: np.asarray(m.function(g, numel, weights), dtype=np.float64)
        for m in map(METRICS.get, METRICS)
        if m.source == "gram"
    }


# ------------------------------------------------------------------ the built-in metrics
def _client_block(c: np.ndarray) -> np.ndarray:
    return c[..., :-1, :-1]


def _mean_offdiag(m: np.ndarray) -> np.ndarray:
    """Mean of the off-diagonal entries of ``(..., S, S)``; ``nan`` for ``S < 2``."""
    s = m.shape[-1]
    if s < 2:
        return np.full(m.shape[:-2], np.nan)
    return m[..., ~np.eye(s, dtype=bool)].mean(axis=-1)


def _pair_cka(kind: str) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    def mean_pair_cka(cka: Mapping[str, np.ndarray]) -> np.ndarray:
        return _mean_offdiag(_client_block(cka[kind]))

    mean_pair_cka.__name__ = f"mean_pair_cka_{kind}"
    return mean_pair_cka


def _cka_to_global(cka: Mapping[str, np.ndarray]) -> np.ndarray:
    return cka["linear"][..., :-1, -1].mean(axis=-1)


def _gram(f: Callable[..., np.ndarray], weighted: bool = True) -> GramFunction:
    """Adapt ``f(G[, weights])`` to the ``(G, numel, weights)`` signature."""
    if weighted:
        return lambda g, numel, weights: f(g, weights)
    return lambda g, numel, weights: f(g)


for _metric in (
    Metric(
        "update_variance",
        r"update variance $V$",
        "log",
        "gram",
        _gram(drift.update_variance),
        "V = sum_i w_i ||d_i - m||^2, the spread of the client updates",
    ),
    Metric(
        "relative_variance",
        r"relative variance $V/\|m\|^2$",
        "log",
        "gram",
        _gram(drift.relative_variance),
        "V / ||m||^2: the spread relative to the mean update",
        ratio=(_gram(drift.update_variance), _gram(drift.mean_update_sq_norm)),
        ratio_names=("update_variance", "mean_update_sq_norm"),
        headline=True,
    ),
    Metric(
        "per_parameter_variance",
        "variance per parameter",
        "log",
        "gram",
        lambda g, numel, weights: drift.per_parameter_variance(g, numel, weights),
        "V / numel",
    ),
    Metric(
        "drift_diversity",
        "drift diversity",
        "log",
        "gram",
        _gram(drift.drift_diversity, weighted=False),
        "sum ||d_i||^2 / ||sum d_i||^2, from 1/S (all equal) upward (the FedPVR paper's measure); "
        "(1 + relative variance) / S under uniform weights, so not separate evidence",
        ratio=(
            _gram(drift.update_sq_trace, weighted=False),
            _gram(drift.update_sum_sq_norm, weighted=False),
        ),
        ratio_names=("sum_client_sq_norm", "sum_update_sq_norm"),
    ),
    Metric(
        "cosine_divergence",
        r"cosine divergence $1-\cos(d_i,m)$",
        "linear",
        "gram",
        _gram(drift.cosine_divergence),
        "1 - cos(d_i, m), averaged over clients",
        headline=True,
    ),
    Metric(
        "mean_pairwise_cosine",
        r"mean $\cos(d_i,d_j)$",
        "linear",
        "gram",
        _gram(drift.mean_pairwise_cosine, weighted=False),
        "cos(d_i, d_j) averaged over client pairs: how aligned the clients' updates are",
        headline=True,
    ),
    Metric(
        "mean_update_sq_norm",
        r"$\|m\|^2$",
        "log",
        "gram",
        _gram(drift.mean_update_sq_norm),
        "||m||^2, the squared norm of the mean update",
    ),
    Metric(
        "mean_client_sq_norm",
        r"mean $\|d_i\|^2$",
        "log",
        "gram",
        _gram(drift.mean_client_sq_norm, weighted=False),
        "||d_i||^2 averaged over clients",
    ),
    Metric(
        "layer_discrepancy",
        "layer discrepancy (FedLAMA)",
        "log",
        "gram",
        layerwise.layer_discrepancy,
        "FedLAMA's d_l = sum_i p_i ||x_i - u||^2 / numel per round: the client models against "
        "their aggregate, per parameter (equals per_parameter_variance)",
    ),
    Metric(
        "angular_divergence",
        r"angular divergence $1-\cos(w_g,w_k)$",
        "log",
        "global",
        lambda g, numel, weights, sq_norm, dot: layerwise.angular_divergence(g, sq_norm, dot),
        "1 - cos(w_g, w_k) of the global model's and each client's layer weights, mean over "
        "clients (L-DAWA weights client k by the cosine)",
    ),
    Metric(
        "lora_residual",
        "LoRA aggregation residual",
        "log",
        "lora",
        lora.aggregation_residual,
        "FedEx-LoRA's ||mean(B_i A_i) - mean(B_i) mean(A_i)||_F / ||mean(B_i A_i)||_F of the "
        "adapted module (on both factors' rows): what averaging A and B separately misses",
    ),
    Metric(
        "cka",
        "CKA between clients",
        "linear",
        "cka",
        _pair_cka("linear"),
        "linear CKA of the clients' activations on the probe set, mean over client pairs",
        headline=True,
    ),
    Metric(
        "cka_rbf",
        "RBF CKA between clients",
        "linear",
        "cka",
        _pair_cka("rbf"),
        "RBF CKA (bandwidth 0.5 x median distance), mean over client pairs",
    ),
    Metric(
        "cka_debiased",
        "debiased CKA between clients",
        "linear",
        "cka",
        _pair_cka("debiased"),
        "debiased linear CKA (unbiased HSIC), mean over client pairs",
    ),
    Metric(
        "cka_to_global",
        "CKA client to global",
        "linear",
        "cka",
        _cka_to_global,
        "linear CKA of each client to the new global model, mean over clients",
    ),
):
    register_metric(_metric)
del _metric
