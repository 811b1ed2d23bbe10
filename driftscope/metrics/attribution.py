"""Which labels drive a layer's drift: pure functions over arrays.

Two questions, for one layer and one round with ``S`` participating clients:

1. **Does the clients' disagreement follow their label distributions?** (:func:`label_alignment`)
   Compare two ``S x S`` similarity matrices over the ``S (S - 1) / 2`` client pairs ``i < j``:

   * update cosine ``U_ij = G_ij / sqrt(G_ii G_jj)`` from the layer's update Gram ``G``
     (:func:`driftscope.metrics.drift.pairwise_cosine`);
   * label similarity ``L_ij = cos(h_i, h_j)``, the cosine of the clients' class-count vectors.

   The statistic is **Spearman's rank correlation** of the pair values (the default; Pearson on
   request). Spearman, because the relation need not be linear and the pair values are far from
   normal: under Dirichlet label skew most label cosines sit near 0 and a few near 1, and a
   handful of such pairs would dominate Pearson's coefficient. Ranks make the measure invariant to
   any monotone rescaling of either similarity (cosine, or e.g. ``1 - distance``), and ties (many
   pairs sharing no class at all, ``L_ij = 0``) get average ranks.

   The pairs are not independent (each client is in ``S - 1`` of them), so the textbook p-value
   of a correlation is wrong here. Significance comes from a **Mantel test**: relabel the clients
   of one matrix by a random permutation ``pi`` (``L -> L[pi][:, pi]``), recompute the statistic,
   and count how often it reaches the observed one. One-sided (alternative: clients with more
   similar label distributions send more similar updates). With ``permutations >= S!`` every
   permutation is enumerated and the p-value is exact: ``#{pi : r_pi >= r} / S!`` (the identity
   included); otherwise ``(1 + #{r_pi >= r}) / (1 + permutations)`` over seeded random
   permutations, never 0.

2. **Which classes do the clients disagree on?** (:func:`class_variance`) For the classifier's
   output layer (weight ``(K, F)``, bias ``(K,)``: one row and one bias entry per class), the
   cross-client update variance of each class's slice, ``V_k = sum_i w_i ||d_i[k] - m[k]||^2``
   with ``m = sum_i w_i d_i`` (uniform ``w_i = 1/S`` by default). ``sum_k V_k`` is the layer's
   update variance (:func:`driftscope.metrics.drift.update_variance`).

Shapes are stated per function; everything is computed in float64. Undefined values (a zero
update, fewer than 3 clients, a constant similarity) are ``nan``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.stats import rankdata

from driftscope.metrics.drift import pairwise_cosine

__all__ = [
    "METHODS",
    "Alignment",
    "class_variance",
    "label_alignment",
    "label_similarity",
    "mantel",
]

FloatArray = NDArray[np.float64]
METHODS = ("spearman", "pearson")
DEFAULT_PERMUTATIONS = 999
TIE_DECIMALS = 10  # similarities are ranked after rounding to this many decimals
CHUNK_VALUES = 1 << 22  # permuted pair values held at once (32 MiB of float64)


@dataclass(frozen=True)
class Alignment:
    """Result of :func:`label_alignment` / :func:`mantel`.

    ``statistic``: the correlation over client pairs (``nan`` if undefined); ``p_value``: one-sided
    Mantel p-value; ``permutations``: how many relabellings were compared; ``exact``: whether they
    were all ``S!`` of them; ``pairs``: number of client pairs.
    """

    statistic: float
    p_value: float
    permutations: int
    exact: bool
    pairs: int


def _f64(x: Any) -> FloatArray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def label_similarity(histograms: Any) -> FloatArray:
    """Cosine similarity of clients' class-count vectors: ``(S, K)`` counts -> ``(S, S)``.

    Counts are non-negative; a client with no samples gives ``nan`` rows.
    """
    h = _f64(histograms)
    if h.ndim != 2:
        raise ValueError(f"histograms must be shaped (S, K); got {h.shape}")
    if np.any(h < 0):
        raise ValueError("label histograms must be non-negative counts")
    return pairwise_cosine(h @ h.T)


def _pairs(m: FloatArray) -> FloatArray:
    """Upper-triangle (i < j) entries of ``(..., S, S)`` in row-major order: ``(..., S(S-1)/2)``."""
    s = m.shape[-1]
    i, j = np.triu_indices(s, k=1)
    return m[..., i, j]


def _symmetric(m: FloatArray) -> FloatArray:
    return (m + np.swapaxes(m, -1, -2)) / 2


def _standardise(v: FloatArray) -> FloatArray:
    """Centre and scale to unit norm along the last axis (``nan`` where ``v`` is constant), so a
    dot product of two standardised vectors is their Pearson correlation."""
    c = v - v.mean(axis=-1, keepdims=True)
    norm = np.sqrt(np.sum(c * c, axis=-1, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        return c / norm


def _rank_matrix(m: FloatArray) -> FloatArray:
    """Replace the pair values of a symmetric ``(S, S)`` matrix by their average ranks.

    Values are rounded to ``TIE_DECIMALS`` first, so similarities equal up to rounding error
    (``3/sqrt(18)`` computed two ways) tie instead of being ordered by float noise.
    """
    i, j = np.triu_indices(m.shape[-1], k=1)
    out = np.zeros_like(m)
    r = rankdata(np.round(m[i, j], TIE_DECIMALS))
    out[i, j] = r
    out[j, i] = r
    return out


def _permutations(s: int, permutations: int, seed: int) -> tuple[NDArray[np.intp], bool]:
    """``(n, S)`` client relabellings: all ``S!`` if that is at most ``permutations``, else
    ``permutations`` random ones from ``numpy.random.default_rng(seed)``."""
    if s <= 8 and math.factorial(s) <= permutations:
        return np.array(list(itertools.permutations(range(s))), dtype=np.intp), True
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((permutations, s)), axis=1), False


def mantel(
    a: Any,
    b: Any,
    *,
    method: str = "spearman",
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
) -> Alignment:
    """Mantel test between two symmetric ``(S, S)`` similarity matrices (diagonals ignored).

    The statistic is the ``method`` correlation of the off-diagonal pairs ``i < j``; ``b``'s
    clients are relabelled by each permutation (module docstring for the p-value). ``nan``
    statistic and p-value if either matrix has a ``nan`` pair, fewer than 2 pairs, or constant
    pairs.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}': choose one of {', '.join(METHODS)}")
    if permutations < 1:
        raise ValueError(f"permutations must be >= 1 (got {permutations})")
    x, y = _symmetric(_f64(a)), _symmetric(_f64(b))
    if x.shape != y.shape or x.ndim != 2 or x.shape[0] != x.shape[1]:
        raise ValueError(f"need two (S, S) matrices of one shape; got {x.shape} and {y.shape}")
    s = x.shape[0]
    n_pairs = s * (s - 1) // 2
    px, py = _pairs(x), _pairs(y)
    nan = Alignment(float("nan"), float("nan"), 0, False, n_pairs)
    if n_pairs < 2 or not (np.all(np.isfinite(px)) and np.all(np.isfinite(py))):
        return nan
    if method == "spearman":
        x, y = _rank_matrix(x), _rank_matrix(y)
        px = _pairs(x)
    zx = _standardise(px)
    zy = _standardise(_pairs(y))
    if not (np.all(np.isfinite(zx)) and np.all(np.isfinite(zy))):
        return nan
    observed = float(np.dot(zx, zy))
    perms, exact = _permutations(s, permutations, seed)
    # Permuting the clients of y permutes its pair values, so their ranks are permuted ranks:
    # rank once, then only re-index: pair (i, j) of relabelling pi reads y[pi_i, pi_j]. Chunks of
    # relabellings keep the (chunk, pairs) block under CHUNK_VALUES for many clients.
    i, j = np.triu_indices(s, k=1)
    hits = 0
    step = max(1, CHUNK_VALUES // n_pairs)
    for start in range(0, len(perms), step):
        p = perms[start : start + step]
        stats = _standardise(y[p[:, i], p[:, j]]) @ zx
        hits += int(np.sum(stats >= observed - 1e-12))
    n = len(perms)
    p_value = hits / n if exact else (1 + hits) / (1 + n)
    return Alignment(observed, float(p_value), n, exact, n_pairs)


def label_alignment(
    gram: Any,
    histograms: Any,
    *,
    method: str = "spearman",
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
) -> Alignment:
    """How far one layer's cross-client disagreement follows the clients' label distributions.

    Args:
        gram: ``(S, S)`` Gram matrix of the layer's client updates in one round.
        histograms: ``(S, K)`` class counts of the same clients, rows in the Gram's order.
        method: ``"spearman"`` (default; see the module docstring for why) or ``"pearson"``.
        permutations: Mantel relabellings (all ``S!`` if that is fewer).
        seed: seeds the random relabellings.

    Returns:
        :class:`Alignment`: the correlation between update cosine and label cosine over client
        pairs (``+1``: clients with similar labels send similar updates), and its p-value.
    """
    g, h = _f64(gram), _f64(histograms)
    if g.ndim != 2 or h.ndim != 2 or g.shape[0] != h.shape[0]:
        raise ValueError(f"gram (S, S) and histograms (S, K) disagree: {g.shape} and {h.shape}")
    return mantel(
        pairwise_cosine(g),
        label_similarity(h),
        method=method,
        permutations=permutations,
        seed=seed,
    )


def class_variance(
    weight_updates: Any, bias_updates: Any | None = None, weights: Any | None = None
) -> FloatArray:
    """Cross-client update variance of each output class of a classifier layer.

    Args:
        weight_updates: ``(..., S, K, F...)`` client updates of the output layer's weight (class
            ``k`` = row ``k``; trailing axes, e.g. a 1x1 conv's, are flattened).
        bias_updates: optional ``(..., S, K)`` updates of its bias (entry ``k`` joins row ``k``).
        weights: optional aggregation weights ``(S,)`` or ``(..., S)``; uniform by default.

    Returns:
        ``(..., K)`` float64: ``V_k = sum_i w_i ||d_i[k] - m[k]||^2``, ``m = sum_i w_i d_i``.
    """
    w_up = _f64(weight_updates)
    if w_up.ndim < 3:
        raise ValueError(f"weight updates must be shaped (..., S, K, F); got {w_up.shape}")
    lead = w_up.ndim - 2  # axes up to and including S
    rows = w_up.reshape(*w_up.shape[: lead + 1], -1)  # (..., S, K, F)
    if bias_updates is not None:
        b = _f64(bias_updates)
        if b.shape != rows.shape[:-1]:
            raise ValueError(f"bias updates must be shaped {rows.shape[:-1]}; got {b.shape}")
        rows = np.concatenate([rows, b[..., None]], axis=-1)
    s = rows.shape[-3]
    if weights is None:
        w = np.full(rows.shape[:-2], 1.0 / s)
    else:
        w = np.broadcast_to(_f64(weights), rows.shape[:-2]).astype(np.float64)
        if np.any(w < 0) or np.any(w.sum(axis=-1) <= 0):
            raise ValueError("weights must be non-negative and not all zero")
        w = w / w.sum(axis=-1, keepdims=True)
    mean = np.einsum("...s,...skf->...kf", w, rows)
    dev = rows - mean[..., None, :, :]
    return np.einsum("...s,...skf->...k", w, dev * dev)
