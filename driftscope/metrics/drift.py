"""Per-layer client-drift measures, all computed from the Gram matrix of client updates.

For one layer and one round, let ``d_i`` (``i = 1..N``) be the participating clients' updates and
``G`` the ``N x N`` Gram matrix ``G_ij = <d_i, d_j>``. With aggregation weights ``w`` (non-negative,
normalised here to sum to 1; default uniform ``1/N``) the mean update is ``m = sum_i w_i d_i`` and
(see ``docs/science.md``, "Per-layer drift measures")::

    ||m||^2            = w^T G w
    ||d_i - m||^2      = G_ii - 2 (G w)_i + w^T G w
    V                  = sum_i w_i ||d_i - m||^2          (update variance)
    drift diversity    = trace(G) / 1^T G 1 = (1 + V / ||m||^2) / N   (uniform w)
    cos(d_i, m)        = (G w)_i / sqrt(G_ii w^T G w)

The Gram matrix itself comes from :func:`driftscope.metrics.gram.update_gram`. Every function accepts ``G`` shaped ``(..., N, N)`` (leading batch axes such as rounds) and
returns float64 arrays shaped ``(...)``, ``(..., N)`` or ``(..., N, N)``. ``weights`` may be
``(N,)`` or ``(..., N)``. Undefined ratios (a zero norm in a denominator) are ``nan``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftscope.metrics.gram import as_float64 as _to_f64

__all__ = [
    "combine_grams",
    "cosine_divergence",
    "cosine_to_mean",
    "drift_diversity",
    "mean_client_sq_norm",
    "mean_pairwise_cosine",
    "mean_update_sq_norm",
    "pairwise_cosine",
    "per_parameter_variance",
    "relative_variance",
    "update_sq_trace",
    "update_sum_sq_norm",
    "update_variance",
]

FloatArray = NDArray[np.float64]


def as_gram(G: Any) -> FloatArray:
    """``G`` as a float64 ``(..., N, N)`` array; a clear ``ValueError`` otherwise."""
    g = _to_f64(G)
    if g.ndim < 2 or g.shape[-1] != g.shape[-2]:
        raise ValueError(f"G must be shaped (..., N, N); got {g.shape}")
    return g


def _weights(g: FloatArray, weights: Any | None) -> FloatArray:
    """Normalised weights broadcast to ``g.shape[:-1]`` = ``(..., N)``."""
    n = g.shape[-1]
    if weights is None:
        return np.full(g.shape[:-1], 1.0 / n)
    w = _to_f64(weights)
    if w.ndim == 0 or w.shape[-1] != n:
        raise ValueError(f"weights must be shaped (N,) or (..., N) with N={n}; got {w.shape}")
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite and non-negative")
    total = w.sum(axis=-1, keepdims=True)
    if np.any(total <= 0):
        raise ValueError("weights must not sum to 0")
    return np.broadcast_to(w / total, g.shape[:-1])


def _matvec(g: FloatArray, v: FloatArray) -> FloatArray:
    return (g @ v[..., :, None])[..., 0]


def _safe_div(num: FloatArray, den: FloatArray) -> FloatArray:
    num, den = np.broadcast_arrays(np.asarray(num, np.float64), np.asarray(den, np.float64))
    out = np.full(num.shape, np.nan)
    ok = den > 0
    np.divide(num, den, out=out, where=ok)
    return out


def _diag(g: FloatArray) -> FloatArray:
    return np.diagonal(g, axis1=-2, axis2=-1)


def mean_update_sq_norm(G: Any, weights: Any | None = None) -> FloatArray:
    """``||m||^2 = w^T G w``; ``(...)``."""
    g = as_gram(G)
    w = _weights(g, weights)
    return np.sum(w * _matvec(g, w), axis=-1)


def _client_sq_dist(g: FloatArray, w: FloatArray) -> FloatArray:
    """``||d_i - m||^2`` for each client, clipped at 0; ``(..., N)``."""
    gw = _matvec(g, w)
    msq = np.sum(w * gw, axis=-1, keepdims=True)
    return np.clip(_diag(g) - 2.0 * gw + msq, 0.0, None)


def update_variance(G: Any, weights: Any | None = None) -> FloatArray:
    """Update variance ``V = sum_i w_i ||d_i - m||^2`` (``(1/N) sum ||d_i - m||^2`` uniform)."""
    g = as_gram(G)
    w = _weights(g, weights)
    return np.sum(w * _client_sq_dist(g, w), axis=-1)


def relative_variance(G: Any, weights: Any | None = None) -> FloatArray:
    """``V / ||m||^2``; ``nan`` where ``||m||^2 == 0``."""
    return _safe_div(update_variance(G, weights), mean_update_sq_norm(G, weights))


def per_parameter_variance(G: Any, numel: int, weights: Any | None = None) -> FloatArray:
    """``V / numel`` (``numel`` = number of parameters in the layer)."""
    if numel <= 0:
        raise ValueError(f"numel must be positive; got {numel}")
    return update_variance(G, weights) / float(numel)


def mean_client_sq_norm(G: Any) -> FloatArray:
    """Mean over clients of ``||d_i||^2`` (the mean of ``G_ii``); ``(...)``."""
    return np.mean(_diag(as_gram(G)), axis=-1)


def update_sq_trace(G: Any) -> FloatArray:
    """``sum_i ||d_i||^2 = trace(G)``; ``(...)``. The numerator of the drift diversity."""
    return np.trace(as_gram(G), axis1=-2, axis2=-1)


def update_sum_sq_norm(G: Any) -> FloatArray:
    """``||sum_i d_i||^2 = 1^T G 1``; ``(...)``. The denominator of the drift diversity."""
    return as_gram(G).sum(axis=(-2, -1))


def drift_diversity(G: Any) -> FloatArray:
    """``sum_i ||d_i||^2 / ||sum_i d_i||^2 = trace(G) / 1^T G 1``; ``nan`` if the sum is 0.

    Ranges from ``1/N`` (all updates equal) upward; equals ``(1 + V/||m||^2) / N`` for uniform
    weights.
    """
    g = as_gram(G)
    return _safe_div(update_sq_trace(g), update_sum_sq_norm(g))


def pairwise_cosine(G: Any) -> FloatArray:
    """``cos(d_i, d_j) = G_ij / sqrt(G_ii G_jj)``, ``(..., N, N)``; ``nan`` where a norm is 0."""
    g = as_gram(G)
    d = _diag(g)
    den = np.sqrt(np.clip(d[..., :, None] * d[..., None, :], 0.0, None))
    return np.clip(_safe_div(g, den), -1.0, 1.0)


def cosine_to_mean(G: Any, weights: Any | None = None) -> FloatArray:
    """``cos(d_i, m) = (G w)_i / sqrt(G_ii w^T G w)``, ``(..., N)``; ``nan`` where a norm is 0."""
    g = as_gram(G)
    w = _weights(g, weights)
    gw = _matvec(g, w)
    msq = np.sum(w * gw, axis=-1, keepdims=True)
    den = np.sqrt(np.clip(_diag(g) * msq, 0.0, None))
    return np.clip(_safe_div(gw, den), -1.0, 1.0)


def cosine_divergence(G: Any, weights: Any | None = None) -> FloatArray:
    """Unweighted mean over clients of ``1 - cos(d_i, m)``; ``(...)``.

    ``weights`` only define ``m``. ``nan`` if any client's cosine is undefined.
    """
    return np.mean(1.0 - cosine_to_mean(G, weights), axis=-1)


def mean_pairwise_cosine(G: Any) -> FloatArray:
    """Mean of the off-diagonal pairwise cosines; ``(...)``; ``nan`` for ``N < 2``."""
    c = pairwise_cosine(G)
    n = c.shape[-1]
    if n < 2:
        return np.full(c.shape[:-2], np.nan)
    off = ~np.eye(n, dtype=bool)
    return np.mean(c[..., off], axis=-1)


def combine_grams(grams: Sequence[Any]) -> FloatArray:
    """Gram of concatenated parameters (e.g. weight + bias) = sum of the parameters' Grams.

    Args:
        grams: non-empty sequence of ``(..., N, N)`` Gram matrices of the same shape.

    Returns:
        ``(..., N, N)`` float64 sum.
    """
    arrs = [as_gram(g) for g in grams]
    if not arrs:
        raise ValueError("combine_grams needs at least one Gram matrix")
    shape = arrs[0].shape
    for a in arrs[1:]:
        if a.shape != shape:
            raise ValueError(f"all Grams must have the same shape; got {shape} and {a.shape}")
    return np.sum(arrs, axis=0)
