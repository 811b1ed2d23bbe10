"""Tests for driftscope.metrics.cka against naive reference implementations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ortho_group

from driftscope.metrics.cka import (
    MinibatchCKA,
    cka,
    cka_from_grams,
    hsic,
    hsic_unbiased,
    linear_gram,
    pairwise_cka,
)
from driftscope.metrics.rbf import rbf_from_linear_gram, rbf_gram

# ---------------------------------------------------------------- naive reference implementations


def naive_hsic(K: np.ndarray, L: np.ndarray) -> float:
    n = K.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(K @ H @ L @ H)) / (n - 1) ** 2


def naive_linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float64)
    K, L = X @ X.T, Y @ Y.T  # uncentred: H does the centring
    return naive_hsic(K, L) / np.sqrt(naive_hsic(K, K) * naive_hsic(L, L))


def naive_rbf_kernel(X: np.ndarray, t: float = 0.5, median: str = "all") -> np.ndarray:
    """Kornblith et al.'s convention (``median="all"``): the median of all n x n squared
    distances, zero diagonal included; ``"offdiag"``: the pairs i < j only."""
    n = X.shape[0]
    D = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            D[i, j] = float(np.sum((X[i] - X[j]) ** 2))
    if median == "all":
        pool = [D[i, j] for i in range(n) for j in range(n)]
    else:
        pool = [D[i, j] for i in range(n) for j in range(i + 1, n)]
    sigma2 = t**2 * float(np.median(pool))
    return np.exp(-D / (2 * sigma2))


def naive_rbf_cka(X: np.ndarray, Y: np.ndarray, t: float = 0.5, median: str = "all") -> float:
    K, L = naive_rbf_kernel(X, t, median), naive_rbf_kernel(Y, t, median)
    return naive_hsic(K, L) / np.sqrt(naive_hsic(K, K) * naive_hsic(L, L))


def loop_hsic_unbiased(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al. (2012) formula as docs/science.md writes it, with explicit loops."""
    n = K.shape[0]
    Kt, Lt = K.copy(), L.copy()
    for i in range(n):
        Kt[i, i] = 0.0
        Lt[i, i] = 0.0
    tr = sum(Kt[i, j] * Lt[j, i] for i in range(n) for j in range(n))
    sk = sum(Kt[i, j] for i in range(n) for j in range(n))
    sl = sum(Lt[i, j] for i in range(n) for j in range(n))
    kl1 = sum(Kt[i, j] * Lt[j, r] for i in range(n) for j in range(n) for r in range(n))
    return (tr + sk * sl / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * kl1) / (n * (n - 3))


def ustat_hsic(K: np.ndarray, L: np.ndarray) -> float:
    """HSIC_1 as the U-statistic over distinct 4-tuples (independent of the closed form)."""
    n = K.shape[0]
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += K[i, j] * L[i, j] + K[i, j] * L[q, r] - 2.0 * K[i, j] * L[i, q]
        count += 1
    return total / count


def loop_debiased_cka(K: np.ndarray, L: np.ndarray) -> float:
    return loop_hsic_unbiased(K, L) / np.sqrt(loop_hsic_unbiased(K, K) * loop_hsic_unbiased(L, L))


def _xy(rng: np.random.Generator, n: int, p: int, q: int) -> tuple[np.ndarray, np.ndarray]:
    X = rng.normal(size=(n, p))
    Y = X @ rng.normal(size=(p, q)) + 0.5 * rng.normal(size=(n, q))  # related, not identical
    return X, Y


# ------------------------------------------------------------------------------- estimators


@pytest.mark.parametrize(("n", "p", "q"), [(40, 5, 7), (10, 30, 25), (12, 12, 3)])
def test_linear_cka_matches_naive_both_paths(n: int, p: int, q: int) -> None:
    rng = np.random.default_rng(0)
    X, Y = _xy(rng, n, p, q)
    X += 3.0  # feature offset: must be centred away
    got = cka(X, Y)
    assert isinstance(got, float)
    np.testing.assert_allclose(got, naive_linear_cka(X, Y), rtol=1e-10)
    np.testing.assert_allclose(
        cka_from_grams(linear_gram(X), linear_gram(Y)), naive_linear_cka(X, Y), rtol=1e-10
    )


def test_hsic_matches_naive() -> None:
    rng = np.random.default_rng(1)
    X, Y = _xy(rng, 9, 4, 6)
    K, L = X @ X.T, Y @ Y.T
    np.testing.assert_allclose(hsic(K, L), naive_hsic(K, L), rtol=1e-12)


def test_linear_gram_centres_features() -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(6, 3)) + 5.0
    Xc = X - X.mean(0)
    np.testing.assert_allclose(linear_gram(X), Xc @ Xc.T, atol=1e-12)
    np.testing.assert_allclose(linear_gram(X).sum(axis=0), 0.0, atol=1e-10)


@pytest.mark.parametrize("median", ["all", "offdiag"])
@pytest.mark.parametrize("t", [0.5, 1.0])
def test_rbf_cka_matches_naive(t: float, median: str) -> None:
    rng = np.random.default_rng(3)
    X, Y = _xy(rng, 15, 4, 6)
    np.testing.assert_allclose(
        cka(X, Y, kernel="rbf", t=t, median=median), naive_rbf_cka(X, Y, t, median), rtol=1e-10
    )
    np.testing.assert_allclose(
        rbf_gram(X, t=t, median=median), naive_rbf_kernel(X, t, median), rtol=1e-10
    )
    np.testing.assert_allclose(
        rbf_from_linear_gram(X @ X.T, t=t, median=median), naive_rbf_kernel(X, t, median), rtol=1e-9
    )
    stack = np.stack([X @ X.T, Y @ Y.T])  # one bandwidth per matrix of a stack
    np.testing.assert_allclose(
        rbf_from_linear_gram(stack, t=t, median=median)[1],
        naive_rbf_kernel(Y, t, median),
        rtol=1e-9,
    )


def test_published_example_values_of_kornblith_et_al() -> None:
    """The example in Kornblith et al.'s reference notebook (docs/science.md): the default RBF
    bandwidth (median over all n^2 squared distances) reproduces 0.65483; the median over pairs
    i < j gives 0.65401."""
    rs = np.random.RandomState(1337)  # the stream of np.random.seed(1337)
    X = rs.randn(100, 10)
    Y = rs.randn(100, 10) + X
    assert round(cka(X, Y), 5) == 0.55761
    assert round(cka(X, Y, kernel="rbf"), 5) == 0.65483
    assert round(cka(X, Y, debiased=True), 5) == 0.51346
    assert round(cka(X, Y, kernel="rbf", median="offdiag"), 5) == 0.65401
    with pytest.raises(ValueError, match="median"):
        cka(X, Y, kernel="rbf", median="upper")


def test_rbf_explicit_sigma2() -> None:
    rng = np.random.default_rng(4)
    X = rng.normal(size=(8, 3))
    D = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(rbf_gram(X, sigma2=2.0), np.exp(-D / 4.0), rtol=1e-12)
    with pytest.raises(ValueError, match="sigma2"):
        rbf_gram(np.ones((5, 2)))  # all distances 0


def test_hsic_unbiased_matches_formula_loop_and_ustatistic() -> None:
    rng = np.random.default_rng(5)
    X, Y = _xy(rng, 7, 3, 4)
    K, L = X @ X.T, rbf_gram(Y)
    got = hsic_unbiased(K, L)
    np.testing.assert_allclose(got, loop_hsic_unbiased(K, L), rtol=1e-10)
    np.testing.assert_allclose(got, ustat_hsic(K, L), rtol=1e-10)


def test_debiased_cka_matches_naive_loop() -> None:
    rng = np.random.default_rng(6)
    X, Y = _xy(rng, 10, 4, 3)
    K, L = linear_gram(X), linear_gram(Y)
    np.testing.assert_allclose(cka(X, Y, debiased=True), loop_debiased_cka(K, L), rtol=1e-10)
    Kr, Lr = rbf_gram(X), rbf_gram(Y)
    np.testing.assert_allclose(
        cka(X, Y, kernel="rbf", debiased=True), loop_debiased_cka(Kr, Lr), rtol=1e-10
    )


def test_unbiased_hsic_invariant_to_feature_centring() -> None:
    # Justifies centring features before the unbiased estimator (a pure precision win).
    rng = np.random.default_rng(7)
    X, Y = _xy(rng, 9, 3, 5)
    X += 2.0
    raw = hsic_unbiased(X @ X.T, Y @ Y.T)
    np.testing.assert_allclose(raw, hsic_unbiased(linear_gram(X), linear_gram(Y)))


def test_debiased_from_uncentred_grams_with_offset_is_stable() -> None:
    # The literal Song et al. formula cancels terms ~ (1^T K 1)^2 and returns garbage/nan here.
    rng = np.random.default_rng(21)
    X, Y = _xy(rng, 50, 10, 10)
    Xo, Yo = X + 1e4, Y + 1e4
    ref = cka(X, Y, debiased=True)
    assert abs(cka_from_grams(Xo @ Xo.T, Yo @ Yo.T, debiased=True) - ref) < 1e-8
    assert abs(pairwise_cka(np.stack([Xo @ Xo.T, Yo @ Yo.T]), debiased=True)[0, 1] - ref) < 1e-8


# ------------------------------------------------------------------------------- properties


@pytest.mark.parametrize(
    ("kernel", "debiased"), [("linear", False), ("linear", True), ("rbf", False), ("rbf", True)]
)
def test_self_similarity_is_one_and_symmetric(kernel: str, debiased: bool) -> None:
    rng = np.random.default_rng(8)
    X, Y = _xy(rng, 30, 6, 4)
    assert cka(X, X, kernel=kernel, debiased=debiased) == pytest.approx(1.0, abs=1e-12)
    a = cka(X, Y, kernel=kernel, debiased=debiased)
    b = cka(Y, X, kernel=kernel, debiased=debiased)
    assert a == pytest.approx(b, rel=1e-12)
    assert 0.0 < a < 1.0


@pytest.mark.parametrize(
    ("kernel", "debiased"), [("linear", False), ("linear", True), ("rbf", False), ("rbf", True)]
)
@pytest.mark.parametrize(("n", "p"), [(50, 6), (8, 20)])
def test_invariant_to_orthogonal_and_isotropic_scaling(
    kernel: str, debiased: bool, n: int, p: int
) -> None:
    rng = np.random.default_rng(9)
    X, Y = _xy(rng, n, p, 5)
    Q = ortho_group.rvs(p, random_state=10)
    base = cka(X, Y, kernel=kernel, debiased=debiased)
    np.testing.assert_allclose(cka(X @ Q, Y, kernel=kernel, debiased=debiased), base, rtol=1e-9)
    np.testing.assert_allclose(cka(7.3 * X, Y, kernel=kernel, debiased=debiased), base, rtol=1e-9)
    np.testing.assert_allclose(cka(X, 0.01 * Y, kernel=kernel, debiased=debiased), base, rtol=1e-9)


@pytest.mark.parametrize("debiased", [False, True])
def test_not_invariant_to_general_invertible_map(debiased: bool) -> None:
    rng = np.random.default_rng(11)
    X, Y = _xy(rng, 60, 5, 5)
    A = rng.normal(size=(5, 5)) @ np.diag([1.0, 2.0, 5.0, 10.0, 30.0])
    assert abs(np.linalg.det(A)) > 1e-3
    base = cka(X, Y, debiased=debiased)
    assert abs(cka(X @ A, Y, debiased=debiased) - base) > 1e-2
    assert cka(X @ A, X, debiased=debiased) < 0.99  # would be 1 if invariant


@pytest.mark.parametrize(
    ("kernel", "debiased", "n", "p"),
    [
        ("linear", False, 200, 20),  # feature path
        ("linear", False, 30, 50),  # Gram path
        ("linear", True, 60, 20),
        ("rbf", False, 60, 20),
    ],
)
def test_large_feature_offset_float32_keeps_precision(
    kernel: str, debiased: bool, n: int, p: int
) -> None:
    rng = np.random.default_rng(12)
    X, Y = _xy(rng, n, p, 10)
    Xo = (X + 1e4).astype(np.float32)  # what a recorder would hand us
    Yo = (Y - 1e4).astype(np.float32)
    # Reference: the same float32 values, offset removed exactly in float64.
    Xr = Xo.astype(np.float64) - 1e4
    Yr = Yo.astype(np.float64) + 1e4
    ref = cka(Xr, Yr, kernel=kernel, debiased=debiased)
    if kernel == "linear" and not debiased:
        np.testing.assert_allclose(ref, naive_linear_cka(Xr, Yr), rtol=1e-10)
    got = cka(Xo, Yo, kernel=kernel, debiased=debiased)
    assert abs(got - ref) < 1e-6
    got_t = cka(torch.from_numpy(Xo), torch.from_numpy(Yo), kernel=kernel, debiased=debiased)
    assert abs(got_t - ref) < 1e-6


def test_float32_gram_centring_pitfall_is_real() -> None:
    # The naive float32 route (Gram first, then H K H) is badly wrong; our route is not.
    rng = np.random.default_rng(13)
    X, Y = _xy(rng, 100, 10, 10)
    Xo, Yo = (X + 1e4).astype(np.float32), (Y + 1e4).astype(np.float32)
    n = X.shape[0]
    H = (np.eye(n) - 1.0 / n).astype(np.float32)
    K, L = Xo @ Xo.T, Yo @ Yo.T
    Kc, Lc = H @ K @ H, H @ L @ H
    naive32 = float(np.sum(Kc * Lc) / np.sqrt(np.sum(Kc * Kc) * np.sum(Lc * Lc)))
    ref = naive_linear_cka(Xo.astype(np.float64) - 1e4, Yo.astype(np.float64) - 1e4)
    assert abs(naive32 - ref) > 1e-3
    assert abs(cka(Xo, Yo) - ref) < 1e-6


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(min_value=5, max_value=20),
    p=st.integers(min_value=1, max_value=15),
    q=st.integers(min_value=1, max_value=15),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_linear_cka_property(n: int, p: int, q: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    X, Y = rng.normal(size=(n, p)), rng.normal(size=(n, q))
    a = cka(X, Y)
    assert -1e-12 <= a <= 1.0 + 1e-12
    assert a == pytest.approx(cka(Y, X), rel=1e-9, abs=1e-12)
    assert a == pytest.approx(naive_linear_cka(X, Y), rel=1e-8, abs=1e-12)


# ------------------------------------------------------------------------------- pairwise


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("kind", ["linear_centred", "linear_raw", "rbf"])
def test_pairwise_matches_double_loop(debiased: bool, kind: str) -> None:
    rng = np.random.default_rng(14)
    M, n, p = 5, 12, 6
    base = rng.normal(size=(n, p))
    acts = [base @ rng.normal(size=(p, p)) + 0.5 * rng.normal(size=(n, p)) + 4.0 for _ in range(M)]
    if kind == "linear_centred":
        grams = np.stack([linear_gram(a) for a in acts])
    elif kind == "linear_raw":
        grams = np.stack([a @ a.T for a in acts])
    else:
        grams = np.stack([rbf_gram(a) for a in acts])
    got = pairwise_cka(grams, debiased=debiased)
    assert got.shape == (M, M)
    ref = np.array(
        [
            [cka_from_grams(grams[i], grams[j], debiased=debiased) for j in range(M)]
            for i in range(M)
        ]
    )
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.diagonal(got), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(got, got.T)


def test_pairwise_centred_shortcut_equals_full_centring_only_for_centred_grams() -> None:
    rng = np.random.default_rng(16)
    acts = [rng.normal(size=(12, 5)) + 3.0 for _ in range(4)]
    centred = np.stack([linear_gram(a) for a in acts])
    np.testing.assert_allclose(
        pairwise_cka(centred, centred=True), pairwise_cka(centred), rtol=1e-12
    )
    raw = np.stack([a @ a.T for a in acts])  # not centred: the shortcut would be wrong
    assert not np.allclose(pairwise_cka(raw, centred=True), pairwise_cka(raw), atol=1e-3)


def test_rbf_of_a_stack_equals_each_matrix_with_its_own_bandwidth() -> None:
    rng = np.random.default_rng(17)
    grams = np.stack([linear_gram(rng.normal(size=(9, 3)) * s) for s in (0.1, 1.0, 30.0)])
    stacked = rbf_from_linear_gram(grams)
    for g, k in zip(grams, stacked):
        np.testing.assert_allclose(k, rbf_from_linear_gram(g), rtol=1e-12)
    np.testing.assert_allclose(
        rbf_from_linear_gram(grams, sigma2=2.0)[1], rbf_from_linear_gram(grams[1], sigma2=2.0)
    )
    with pytest.raises(ValueError, match="square"):
        rbf_from_linear_gram(np.ones((2, 3, 4)))


def test_pairwise_accepts_float32_torch_and_flags_constant_model() -> None:
    rng = np.random.default_rng(15)
    acts = [rng.normal(size=(10, 4)) for _ in range(3)]
    grams = np.stack([linear_gram(a) for a in acts] + [np.zeros((10, 10))])
    got = pairwise_cka(torch.from_numpy(grams).float())
    assert got.dtype == np.float64
    assert np.isnan(got[3]).all() and np.isnan(got[:, 3]).all()
    np.testing.assert_allclose(got[:3, :3], pairwise_cka(grams[:3]), rtol=1e-5)
    with pytest.raises(ValueError, match=r"\(M, n, n\)"):
        pairwise_cka(grams[0])


# ------------------------------------------------------------------------------- minibatch


def test_minibatch_matches_hand_formula() -> None:
    rng = np.random.default_rng(16)
    X, Y = _xy(rng, 40, 6, 8)
    mb = MinibatchCKA()
    kl, kk, ll = [], [], []
    for s in range(0, 40, 8):
        xb, yb = X[s : s + 8], Y[s : s + 8]
        mb.update(xb, yb)
        K, L = xb @ xb.T, yb @ yb.T  # raw Grams: HSIC_1 is invariant to feature centring
        kl.append(loop_hsic_unbiased(K, L))
        kk.append(loop_hsic_unbiased(K, K))
        ll.append(loop_hsic_unbiased(L, L))
    expected = np.mean(kl) / np.sqrt(np.mean(kk) * np.mean(ll))
    assert mb.num_batches == 5
    np.testing.assert_allclose(mb.value(), expected, rtol=1e-10)
    # Not the same as debiased CKA on the whole set (different estimator), but close-ish.
    assert abs(mb.value() - cka(X, Y, debiased=True)) < 0.2


def test_minibatch_single_batch_equals_debiased_cka() -> None:
    rng = np.random.default_rng(17)
    X, Y = _xy(rng, 25, 5, 9)
    mb = MinibatchCKA()
    mb.update(torch.from_numpy(X).float(), torch.from_numpy(Y).float())
    ref = cka(X.astype(np.float32), Y.astype(np.float32), debiased=True)
    np.testing.assert_allclose(mb.value(), ref, rtol=1e-12)


def test_minibatch_errors() -> None:
    rng = np.random.default_rng(18)
    mb = MinibatchCKA()
    with pytest.raises(ValueError, match="before any update"):
        mb.value()
    with pytest.raises(ValueError, match="n >= 4"):
        mb.update(rng.normal(size=(3, 2)), rng.normal(size=(3, 2)))
    mb.update(rng.normal(size=(8, 2)), rng.normal(size=(8, 3)))
    with pytest.raises(ValueError, match="drop the short last batch"):
        mb.update(rng.normal(size=(5, 2)), rng.normal(size=(5, 3)))
    with pytest.raises(ValueError, match="same n"):
        mb.update(rng.normal(size=(8, 2)), rng.normal(size=(7, 3)))
    assert mb.num_batches == 1


# ------------------------------------------------------------------------------- errors


def test_errors() -> None:
    rng = np.random.default_rng(19)
    X = rng.normal(size=(10, 3))
    with pytest.raises(ValueError, match="same n"):
        cka(X, rng.normal(size=(9, 3)))
    with pytest.raises(ValueError, match="linear, rbf"):
        cka(X, X, kernel="poly")
    with pytest.raises(ValueError, match="n >= 4"):
        hsic_unbiased(np.eye(3), np.eye(3))
    with pytest.raises(ValueError, match="n >= 4"):
        pairwise_cka(np.stack([np.eye(3)] * 2), debiased=True)
    with pytest.raises(ValueError, match="2-D"):
        cka(X[:, 0], X)
    with pytest.raises(ValueError, match="same n"):
        cka_from_grams(np.eye(4), np.eye(5))


def test_debiased_nan_guard() -> None:
    # A constant representation has zero self-HSIC: the ratio is undefined -> nan, no warning.
    rng = np.random.default_rng(20)
    X = rng.normal(size=(10, 3))
    Z = np.ones((10, 3))
    assert np.isnan(cka(X, Z, debiased=True))
    assert np.isnan(cka(X, Z))
    assert np.isnan(cka(X, Z[:, :1] * np.ones((10, 20))))  # Gram path too
