"""Centered kernel alignment (CKA) between two models' representations.

Pure functions: numpy arrays or torch tensors in, float64 numpy out. Everything here is computed
in float64, and features (columns) are centred *before* any Gram matrix is formed: centring a
float32 Gram whose features carry a large offset loses nearly all precision. The recorder's probe
Grams may come from :func:`driftscope.metrics.gram.centred_gram`'s float32 path (float32 block
products of centred features, summed and double-centred in float64); :func:`cka_error_bound`
bounds what that changes in every CKA value against the float64 path.

Conventions (see ``docs/science.md``, section "CKA"):

- ``X`` is ``(n, p)``: one layer's activations of one model on ``n`` probe inputs.
- ``K`` is an ``(n, n)`` kernel (Gram) matrix on the same ``n`` inputs; kernel matrices are assumed
  symmetric.
- Biased HSIC: ``tr(K H L H) / (n - 1)^2`` with ``H = I - 11^T / n``.
- Unbiased HSIC (Song et al., 2012), ``K~``/``L~`` with zeroed diagonals::

      HSIC_1 = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n (n-3))

  It needs ``n >= 4`` and can be negative, so debiased CKA returns ``nan`` when
  ``HSIC_1(K, K) * HSIC_1(L, L) <= 0``. It is invariant to ``K -> K + a 1^T + 1 a^T + c``, so
  feature centring does not change it (it only improves precision).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftscope.metrics.gram import as_float64 as _to_f64
from driftscope.metrics.gram import linear_gram
from driftscope.metrics.rbf import bandwidth, rbf_from_linear_gram, squared_distances

__all__ = [
    "MinibatchCKA",
    "cka",
    "cka_error_bound",
    "cka_from_grams",
    "hsic",
    "hsic_unbiased",
    "linear_gram",
    "pairwise_cka",
    "unbiased_centre_norm",
]

KERNELS = ("linear", "rbf")

FloatArray = NDArray[np.float64]


def _as_matrix(x: Any, name: str) -> FloatArray:
    a = _to_f64(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, features); got shape {a.shape}")
    return a


def _as_square(k: Any, name: str) -> FloatArray:
    a = _to_f64(k)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{name} must be a square (n, n) kernel matrix; got shape {a.shape}")
    return a


def _check_same_n(a: FloatArray, b: FloatArray, what: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{what} must describe the same n probe inputs: got n={a.shape[0]} and "
            f"n={b.shape[0]}; pass activations of both models on the same inputs"
        )


def _centre_columns(x: FloatArray) -> FloatArray:
    return x - x.mean(axis=0, keepdims=True)


def _double_centre(k: FloatArray) -> FloatArray:
    """``H K H`` for ``(..., n, n)`` without forming ``H``."""
    return (
        k
        - k.mean(axis=-1, keepdims=True)
        - k.mean(axis=-2, keepdims=True)
        + k.mean(axis=(-2, -1), keepdims=True)
    )


def _unbiased_centre(k: FloatArray) -> FloatArray:
    """Centring for the unbiased HSIC, for ``(..., n, n)`` symmetric kernels.

    Returns ``K^`` such that ``sum(K^_a * K^_b) / (n (n - 3))`` equals Song et al.'s unbiased
    HSIC_1 (the construction used by Kornblith et al.'s reference code). Requires ``n >= 4``.
    """
    n = k.shape[-1]
    k = k.copy()
    idx = np.arange(n)
    k[..., idx, idx] = 0.0
    means = k.sum(axis=-2) / (n - 2)  # column sums, (..., n)
    means = means - means.sum(axis=-1, keepdims=True) / (2 * (n - 1))
    k -= means[..., :, None]
    k -= means[..., None, :]
    k[..., idx, idx] = 0.0
    return k


def _require_n_ge_4(n: int) -> None:
    if n < 4:
        raise ValueError(
            f"the unbiased HSIC estimator needs n >= 4 probe inputs (it divides by n(n-3)); "
            f"got n={n}. Use more probe inputs or debiased=False"
        )


def hsic(K: Any, L: Any) -> float:
    """Biased HSIC ``tr(K H L H) / (n - 1)^2`` of two ``(n, n)`` kernel matrices."""
    k = _as_square(K, "K")
    ell = _as_square(L, "L")
    _check_same_n(k, ell, "K and L")
    n = k.shape[0]
    return float(np.sum(_double_centre(k) * _double_centre(ell).T)) / (n - 1) ** 2


def hsic_unbiased(K: Any, L: Any) -> float:
    """Unbiased HSIC_1 (Song et al., 2012) of two symmetric ``(n, n)`` kernels, ``n >= 4``.

    Equals the formula in the module docstring (diagonals zeroed), evaluated in the algebraically
    identical "unbiased centring" form ``sum(K^ * L^) / (n (n - 3))`` (Kornblith et al.'s
    reference code): the literal formula subtracts terms of size ``(1^T K~ 1)^2`` and loses all
    precision on uncentred Grams with a large feature offset. Can be negative.
    """
    k = _as_square(K, "K")
    ell = _as_square(L, "L")
    _check_same_n(k, ell, "K and L")
    n = k.shape[0]
    _require_n_ge_4(n)
    return float(np.sum(_unbiased_centre(k) * _unbiased_centre(ell))) / (n * (n - 3))


def _ratio(kl: float, kk: float, ll: float) -> float:
    prod = kk * ll
    if not np.isfinite(prod) or prod <= 0:
        return float("nan")
    return float(kl / np.sqrt(prod))


def cka_from_grams(K: Any, L: Any, debiased: bool = False) -> float:
    """CKA from two ``(n, n)`` kernel matrices on the same ``n`` inputs.

    ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``, with the biased HSIC, or the unbiased HSIC_1 when
    ``debiased`` (needs ``n >= 4``). Returns ``nan`` when ``HSIC(K, K) * HSIC(L, L) <= 0`` (a
    constant representation; or, debiased, a negative unbiased estimate, which happens for
    small ``n`` or near-constant kernels).
    """
    h = hsic_unbiased if debiased else hsic
    return _ratio(h(K, L), h(K, K), h(L, L))


def cka(
    X: Any,
    Y: Any,
    kernel: str = "linear",
    debiased: bool = False,
    sigma2: float | None = None,
    t: float = 0.5,
    median: str = "all",
) -> float:
    """CKA between two representations of the same ``n`` inputs.

    Args:
        X: ``(n, p)`` activations of model A.
        Y: ``(n, q)`` activations of model B.
        kernel: ``"linear"`` or ``"rbf"``.
        debiased: use the unbiased HSIC_1 (needs ``n >= 4``; may return ``nan``, see
            :func:`cka_from_grams`).
        sigma2: RBF only: fixed ``sigma^2`` used for both sides (default: per side,
            ``t^2 *`` the median squared distance).
        t: RBF only: bandwidth fraction.
        median: RBF only: ``"all"`` (Kornblith et al.'s convention, default) or ``"offdiag"``;
            see :func:`rbf_from_linear_gram`.

    Returns:
        CKA as a Python float (in ``[0, 1]`` for the biased estimator).
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; valid choices: {', '.join(KERNELS)}")
    x = _as_matrix(X, "X")
    y = _as_matrix(Y, "Y")
    _check_same_n(x, y, "X and Y")
    if kernel == "linear" and not debiased and x.shape[0] > max(x.shape[1], y.shape[1]):
        xc = _centre_columns(x)
        yc = _centre_columns(y)
        num = float(np.linalg.norm(yc.T @ xc, "fro")) ** 2
        den = float(np.linalg.norm(xc.T @ xc, "fro") * np.linalg.norm(yc.T @ yc, "fro"))
        return float(num / den) if den > 0 else float("nan")
    k = linear_gram(x)
    ell = linear_gram(y)
    if kernel == "rbf":
        k = rbf_from_linear_gram(k, t=t, sigma2=sigma2, median=median)
        ell = rbf_from_linear_gram(ell, t=t, sigma2=sigma2, median=median)
    return cka_from_grams(k, ell, debiased=debiased)


def pairwise_cka(grams: Any, debiased: bool = False, centred: bool = False) -> FloatArray:
    """CKA between every pair of ``M`` models, vectorised.

    Args:
        grams: ``(M, n, n)`` symmetric kernel matrices of ``M`` models on the same ``n`` probe
            inputs. If they are linear Grams stored in low precision, they should come from
            feature-centred activations (see the module docstring).
        debiased: use the unbiased HSIC_1 (needs ``n >= 4``).
        centred: the grams are already double-centred (``H K H = K``, as linear Grams of
            column-centred features are), so the biased estimator skips centring them again.
            Ignored when ``debiased``.

    Returns:
        ``(M, M)`` float64 symmetric matrix; diagonal 1 for valid inputs; ``nan`` in the rows and
        columns of models whose ``HSIC(K, K) <= 0``.
    """
    g = _to_f64(grams)
    if g.ndim != 3 or g.shape[1] != g.shape[2]:
        raise ValueError(f"grams must be shaped (M, n, n); got {g.shape}")
    m, n, _ = g.shape
    if debiased:
        _require_n_ge_4(n)
        c = _unbiased_centre(g)
    else:
        c = g if centred else _double_centre(g)
    flat = c.reshape(m, n * n)
    h = flat @ flat.T  # (M, M) HSIC up to a common positive factor
    h = 0.5 * (h + h.T)
    d = np.diagonal(h).copy()
    prod = d[:, None] * d[None, :]
    out = np.full((m, m), np.nan)
    ok = prod > 0
    out[ok] = h[ok] / np.sqrt(prod[ok])
    return out


def unbiased_centre_norm(n: int) -> float:
    """``c_U(n)``: ``||U(E)||_F <= c_U ||E||_F`` for the unbiased centring ``U`` of HSIC_1.

    ``U(E)`` zeroes the diagonal (norm does not grow), subtracts ``m 1^T + 1 m^T`` with
    ``m = E0 1 / (n - 2) - (1^T E0 1) 1 / (2 (n - 1)(n - 2))``, where ``||E0 1|| <= sqrt(n) ||E0||_F``
    and ``|1^T E0 1| <= n ||E0||_F``; so ``c_U = 1 + 2 n / (n - 2) * (1 + n / (2 (n - 1)))``
    (about 4.06 at n = 128)."""
    return 1.0 + 2.0 * n / (n - 2) * (1.0 + n / (2.0 * (n - 1)))


def cka_error_bound(
    grams: Any,
    eps: Any,
    eta: Any,
    kind: str = "linear",
    t: float = 0.5,
    median: str = "all",
) -> FloatArray:
    """Worst-case error of :func:`pairwise_cka` on float32-path Grams against the float64 path.

    Args:
        grams: ``(M, n, n)`` centred linear Grams from ``centred_gram(X_m, "float32")``.
        eps, eta: ``(M,)`` per model, from :func:`driftscope.metrics.gram.gram32_error`:
            ``||dK||_F <= eps`` and ``|dD_ij| <= 4 eta`` for the squared distances.
        kind: ``"linear"``, ``"rbf"`` or ``"debiased"`` (the recorder's three kinds; RBF with
            ``t`` and ``median`` as :func:`rbf_from_linear_gram`).

    Returns:
        ``(M, M)`` bounds ``B_ij >= |CKA32_ij - CKA64_ij|`` (``inf`` where a kernel is too small
        for the bound to say anything).

    CKA is the inner product of the unit-normalised centred kernels ``k = C(K) / ||C(K)||_F``
    (``C``: double centring, or ``U`` for debiased). For a perturbation ``E`` of ``C(K)``,
    ``||k' - k|| <= 2 ||E|| / ||C(K)||``, so ``|CKA' - CKA| <= 2 (rho_i + rho_j)`` with
    ``rho = ||E|| / (||C(K')||_F - ||E||)`` (the exact norm is at least the computed one minus
    ``||E||``). ``||E||``: linear ``eps`` (``H`` is a projection); debiased ``c_U(n) eps``
    (:func:`unbiased_centre_norm`). RBF: with ``delta = 4 eta`` bounding the distance errors,
    the median moves ``sigma^2`` by at most ``t^2 delta``; with ``a = t^2 delta / sigma^2`` and
    ``b = delta / (2 sigma^2)`` the exponent ``z = D / (2 sigma^2)`` moves by at most ``b + a z``,
    so each kernel entry by at most ``beta = e^b (b + a / (e (1 - a)))`` (``z e^{-z(1-a)} <=
    1 / (e (1 - a))``), and ``||E||_F <= n beta``. Float64 rounding in the CKA arithmetic itself
    (about 1e-15) is left out.
    """
    g = _to_f64(grams)
    if g.ndim != 3 or g.shape[1] != g.shape[2]:
        raise ValueError(f"grams must be shaped (M, n, n); got {g.shape}")
    m, n, _ = g.shape
    eps = np.broadcast_to(np.asarray(eps, dtype=np.float64), (m,))
    eta = np.broadcast_to(np.asarray(eta, dtype=np.float64), (m,))
    if kind == "linear":
        err = eps
        norm = np.linalg.norm(_double_centre(g).reshape(m, -1), axis=1)
    elif kind == "debiased":
        _require_n_ge_4(n)
        err = unbiased_centre_norm(n) * eps
        norm = np.linalg.norm(_unbiased_centre(g).reshape(m, -1), axis=1)
    elif kind == "rbf":
        sq = squared_distances(g)
        s2 = bandwidth(sq, t, None, median)
        delta = 4.0 * eta
        a = t * t * delta / s2
        b = delta / (2.0 * s2)
        with np.errstate(divide="ignore"):
            beta = np.where(a < 1, np.exp(b) * (b + a / (np.e * (1.0 - a))), np.inf)
        err = n * beta
        kernels = np.exp(sq * (-0.5 / s2)[:, None, None])
        norm = np.linalg.norm(_double_centre(kernels).reshape(m, -1), axis=1)
    else:
        raise ValueError(f"unknown CKA kind {kind!r}; choose linear, rbf or debiased")
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(norm > err, err / (norm - err), np.inf)
    return 2.0 * (rho[:, None] + rho[None, :])


class MinibatchCKA:
    """Linear CKA accumulated over minibatches (Nguyen, Raghu, Kornblith, 2021).

    Each :meth:`update` adds the unbiased HSIC_1 of one batch for ``(K, L)``, ``(K, K)`` and
    ``(L, L)``; :meth:`value` returns ``mean HSIC(K, L) / sqrt(mean HSIC(K, K) mean HSIC(L, L))``.
    Every batch must have the same size ``n >= 4`` as the first one (a short last batch would be
    weighted wrongly): drop it (``drop_last=True``) or pad the probe set.
    """

    def __init__(self) -> None:
        self.n: int | None = None
        self.num_batches: int = 0
        self._sum_kl: float = 0.0
        self._sum_kk: float = 0.0
        self._sum_ll: float = 0.0

    def update(self, X_batch: Any, Y_batch: Any) -> None:
        """Add one batch: ``X_batch`` ``(n, p)``, ``Y_batch`` ``(n, q)``, same ``n`` every batch."""
        x = _as_matrix(X_batch, "X_batch")
        y = _as_matrix(Y_batch, "Y_batch")
        _check_same_n(x, y, "X_batch and Y_batch")
        n = x.shape[0]
        if self.n is None:
            if n < 4:
                raise ValueError(
                    f"MinibatchCKA needs batches of n >= 4 inputs (unbiased HSIC); got n={n}: "
                    "use a larger batch size"
                )
            self.n = n
        elif n != self.n:
            raise ValueError(
                f"batch of size {n} differs from the first batch's size {self.n}; every batch must "
                "have the same size: drop the short last batch (drop_last=True)"
            )
        k = linear_gram(x)
        ell = linear_gram(y)
        self._sum_kl += hsic_unbiased(k, ell)
        self._sum_kk += hsic_unbiased(k, k)
        self._sum_ll += hsic_unbiased(ell, ell)
        self.num_batches += 1

    def value(self) -> float:
        """Minibatch CKA so far; ``nan`` if the mean self-HSIC product is ``<= 0``."""
        if self.num_batches == 0:
            raise ValueError("MinibatchCKA.value() called before any update(); add a batch first")
        b = self.num_batches
        return _ratio(self._sum_kl / b, self._sum_kk / b, self._sum_ll / b)
