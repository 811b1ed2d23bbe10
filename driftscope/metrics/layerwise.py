"""Two published per-layer measures of client disagreement, from what driftscope records.

**FedLAMA's layer-wise model discrepancy** (Lee et al., "Layer-wise Adaptive Model Aggregation for
Scalable Federated Learning", AAAI 2023): for layer l with client models ``x_i,l``, their
aggregate ``u_l = sum_i p_i x_i,l`` and aggregation interval ``tau_l`` (local steps since the last
synchronisation of that layer),

    d_l = sum_i p_i ||u_l - x_i,l||^2 / (tau_l * dim(u_l)).

Every client of a round starts from the same global model, so ``x_i - u = d_i - m`` (updates
``d_i``, their weighted mean ``m``) and ``sum_i p_i ||d_i - m||^2 = sum_i p_i G_ii - p^T G p`` from
the round's update Gram matrix ``G``. driftscope aggregates every layer every round, so ``tau_l``
is one round for every layer and :func:`layer_discrepancy` is the per-round value (divide by the
local steps per round for the paper's per-step value; it scales every layer alike). It equals
``per_parameter_variance`` (the same quantity, named and documented as FedLAMA defines it).

**L-DAWA's angular divergence** (Rehman et al., "L-DAWA: Layer-wise Divergence Aware Weight
Aggregation in Federated Self-Supervised Visual Representation Learning", ICCV 2023): client k's
layer is weighted by ``delta_k,l = cos(w_g,l, w_k,l)``, the cosine between the global model's layer
and the client's trained layer. :func:`angular_divergence` is ``1 - delta`` averaged over the
round's clients (0 when no client moves the layer, up to 2); :func:`cosine_to_global` the
per-client cosines. With ``w_k = w_g + d_k``, ``a = ||w_g||^2``, ``b_k = <w_g, d_k>`` and
``c_k = ||d_k||^2 = G_kk``::

    cos = (a + b) / s,   s = sqrt(a (a + 2b + c)),   1 - cos = (a c - b^2) / (s (s + a + b))

the last form (used where ``a + b > 0``) free of the cancellation of ``1 - cos`` near 0.

Shapes as in :mod:`driftscope.metrics.drift`: ``G`` (..., S, S), ``sq_norm`` (...), ``dot``
(..., S); float64 results; ``nan`` where a norm is 0 or a client's row is NaN (a failed client).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftscope.metrics.drift import _weights, as_gram
from driftscope.metrics.gram import as_float64

__all__ = ["angular_divergence", "cosine_to_global", "layer_discrepancy", "one_minus_cosine"]

FloatArray = NDArray[np.float64]


def layer_discrepancy(G: Any, numel: int, weights: Any | None = None) -> FloatArray:
    """FedLAMA's ``d_l`` per round: ``(sum_i p_i G_ii - p^T G p) / numel`` (>= 0); ``(...)``."""
    if numel <= 0:
        raise ValueError(f"numel must be positive; got {numel}")
    g = as_gram(G)
    p = _weights(g, weights)
    spread = np.sum(p * np.diagonal(g, axis1=-2, axis2=-1), axis=-1)
    mean_sq = np.einsum("...i,...ij,...j->...", p, g, p)
    return np.clip(spread - mean_sq, 0.0, None) / float(numel)


def one_minus_cosine(sq_norm: Any, dot: Any, update_sq_norm: Any) -> FloatArray:
    """``1 - cos(w, w + d)`` from ``a = ||w||^2``, ``b = <w, d>``, ``c = ||d||^2`` (broadcast)."""
    a, b, c = np.broadcast_arrays(as_float64(sq_norm), as_float64(dot), as_float64(update_sq_norm))
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.sqrt(a * np.clip(a + 2 * b + c, 0.0, None))
        stable = np.clip(a * c - b * b, 0.0, None) / (s * (s + a + b))
        direct = 1.0 - (a + b) / s
        out = np.where(a + b > 0, stable, direct)
    out = np.where((a > 0) & (s > 0), out, np.nan)
    return np.clip(out, 0.0, 2.0)


def cosine_to_global(G: Any, sq_norm: Any, dot: Any) -> FloatArray:
    """L-DAWA's ``delta_k = cos(w_g, w_g + d_k)`` for each client; ``(..., S)``."""
    g = as_gram(G)
    a = as_float64(sq_norm)[..., None]
    return 1.0 - one_minus_cosine(a, dot, np.diagonal(g, axis1=-2, axis2=-1))


def angular_divergence(G: Any, sq_norm: Any, dot: Any) -> FloatArray:
    """``1 - cos(w_g, w_k)`` averaged over the round's clients; ``(...)``."""
    g = as_gram(G)
    a = as_float64(sq_norm)[..., None]
    return np.mean(one_minus_cosine(a, dot, np.diagonal(g, axis1=-2, axis2=-1)), axis=-1)
