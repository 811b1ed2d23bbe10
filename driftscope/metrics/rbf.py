"""RBF kernel matrices from linear Gram matrices, with the median-distance bandwidth.

The recorder keeps linear Grams of the probe activations; an RBF kernel needs only the pairwise
squared distances, which a linear Gram already holds (``K_ii + K_jj - 2 K_ij``). Conventions as
in :mod:`driftscope.metrics.cka` (see ``docs/science.md``, section "CKA").
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftscope.metrics.gram import as_float64 as _to_f64
from driftscope.metrics.gram import linear_gram

FloatArray = NDArray[np.float64]

MEDIANS = ("all", "offdiag")  # RBF bandwidth: median over all n^2 distances, or over i < j

__all__ = ["MEDIANS", "bandwidth", "rbf_from_linear_gram", "rbf_gram", "squared_distances"]


def squared_distances(k: FloatArray) -> FloatArray:
    """``||x_i - x_j||^2 = K_ii + K_jj - 2 K_ij`` of ``(..., n, n)`` Grams, clipped at 0."""
    if k.ndim not in (2, 3) or k.shape[-1] != k.shape[-2]:
        raise ValueError(
            f"K must be a square (n, n) kernel matrix or a stack (M, n, n); got shape {k.shape}"
        )
    n = k.shape[-1]
    diag = np.diagonal(k, axis1=-2, axis2=-1)
    sq = diag[..., :, None] + diag[..., None, :] - 2.0 * k
    np.clip(sq, 0.0, None, out=sq)
    idx = np.arange(n)
    sq[..., idx, idx] = 0.0
    return sq


def bandwidth(sq: FloatArray, t: float, sigma2: float | None, median: str) -> FloatArray:
    """``sigma^2`` per matrix of a stack of squared distances (see :func:`rbf_from_linear_gram`)."""
    n = sq.shape[-1]
    if sigma2 is None:
        if n < 2:
            raise ValueError("the RBF bandwidth needs at least 2 probe inputs")
        if median == "all":
            s2 = t * t * np.median(sq.reshape(*sq.shape[:-2], n * n), axis=-1)
        else:
            iu = np.triu_indices(n, k=1)
            s2 = t * t * np.median(sq[..., iu[0], iu[1]], axis=-1)
    else:
        s2 = np.full(sq.shape[:-2], float(sigma2))
    s2 = np.asarray(s2, dtype=np.float64)
    if not np.all(np.isfinite(s2)) or np.any(s2 <= 0):
        raise ValueError(
            f"RBF bandwidth sigma^2 = {s2.min()} is not positive (the median squared pairwise "
            "distance is 0, or t <= 0); pass sigma2 explicitly or use kernel='linear'"
        )
    return s2


def rbf_from_linear_gram(
    K: Any, t: float = 0.5, sigma2: float | None = None, median: str = "all"
) -> FloatArray:
    """RBF kernel matrix from an existing linear Gram matrix (or a stack of them).

    ``k(x_i, x_j) = exp(-||x_i - x_j||^2 / (2 sigma^2))`` with
    ``||x_i - x_j||^2 = K_ii + K_jj - 2 K_ij`` (clipped at 0). Unless ``sigma2`` is given,
    ``sigma^2 = t^2 * median`` of the squared distances, for each matrix of a stack separately:

    - ``median="all"`` (default): the median of all ``n x n`` entries of the distance matrix, its
      zero diagonal included, as Kornblith et al.'s reference code computes it; it reproduces
      their published example values (docs/science.md, "CKA").
    - ``median="offdiag"``: the median over the pairs ``i < j`` only (zero self-distances left
      out), a slightly wider bandwidth.

    Args:
        K: ``(n, n)`` linear Gram matrix, or ``(M, n, n)`` for M models at once (centred or not;
            distances do not depend on centring).
        t: bandwidth as a fraction of the median distance (0.5 by convention).
        sigma2: explicit ``sigma^2``; overrides ``t`` and ``median``.
        median: ``"all"`` or ``"offdiag"``, see above.

    Returns:
        float64 RBF kernel matrix (matrices), shaped like ``K``.

    Raises:
        ValueError: if the bandwidth is not positive (e.g. most distances are 0, so their median
            is 0): pass ``sigma2`` explicitly.
    """
    if median not in MEDIANS:
        raise ValueError(f"unknown median {median!r}; valid choices: {', '.join(MEDIANS)}")
    k = _to_f64(K)
    if k.ndim not in (2, 3) or k.shape[-1] != k.shape[-2]:
        raise ValueError(
            f"K must be a square (n, n) kernel matrix or a stack (M, n, n); got shape {k.shape}"
        )
    sq = squared_distances(k)
    s2 = bandwidth(sq, t, sigma2, median)
    sq *= (-0.5 / s2)[..., None, None]
    return np.exp(sq, out=sq)


def rbf_gram(
    X: Any, t: float = 0.5, sigma2: float | None = None, median: str = "all"
) -> FloatArray:
    """RBF kernel matrix of ``X`` (``(n, p)``) -> ``(n, n)``; see :func:`rbf_from_linear_gram`."""
    return rbf_from_linear_gram(linear_gram(X), t=t, sigma2=sigma2, median=median)
