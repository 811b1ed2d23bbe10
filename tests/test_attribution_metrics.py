"""Label attribution math: a hand-computed case, a slow reference, and synthetic known answers."""

import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from driftscope.metrics import attribution as at
from driftscope.metrics.drift import pairwise_cosine

# Three clients. Update cosines (pairs 01, 02, 12) = (0.9, 0.1, 0.5), carried by a Gram whose
# diagonal is not 1 (norms 1, 2, 3), so the normalisation is exercised.
COS = np.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.5], [0.1, 0.5, 1.0]])
NORMS = np.array([1.0, 2.0, 3.0])
GRAM = COS * np.outer(NORMS, NORMS)
# Label histograms (1,0), (1,1), (0,1): label cosines (1/sqrt2, 0, 1/sqrt2).
HIST = np.array([[5, 0], [3, 3], [0, 7]])


def test_hand_computed_three_clients():
    np.testing.assert_allclose(pairwise_cosine(GRAM), COS)
    s = 1 / math.sqrt(2)
    np.testing.assert_allclose(at.label_similarity(HIST), [[1, s, 0], [s, 1, s], [0, s, 1]])
    # Spearman: ranks (3, 1, 2) against (2.5, 1, 2.5): centred (1, -1, 0) . (.5, -1, .5) = 1.5,
    # norms sqrt(2) and sqrt(1.5): rho = 1.5 / sqrt(3) = sqrt(3)/2. Of the 3! = 6 relabellings
    # of the label matrix, the two that keep client 1 at the "0" pair reach it: p = 2/6.
    res = at.label_alignment(GRAM, HIST)
    assert res.statistic == pytest.approx(math.sqrt(3) / 2)
    assert res.exact and res.permutations == 6 and res.pairs == 3
    assert res.p_value == pytest.approx(1 / 3)
    # Pearson on the raw values: centred (.4, -.4, 0) and (s - m, -m, s - m) with m = 2s/3 give
    # the same sqrt(3)/2 here (the label pairs take only two values).
    res = at.label_alignment(GRAM, HIST, method="pearson")
    assert res.statistic == pytest.approx(math.sqrt(3) / 2)
    assert res.p_value == pytest.approx(1 / 3)


def _slow_mantel(u, lab, perms, method):
    i, j = np.triu_indices(len(u), k=1)
    corr = spearmanr if method == "spearman" else pearsonr
    u, lab = np.round(u, at.TIE_DECIMALS), np.round(lab, at.TIE_DECIMALS)  # ties as the code
    observed = corr(u[i, j], lab[i, j])[0]
    stats = [corr(u[i, j], lab[np.ix_(p, p)][i, j])[0] for p in perms]
    return observed, np.array(stats)


@pytest.mark.parametrize("method", at.METHODS)
@pytest.mark.parametrize("s", [5, 9])
def test_matches_a_slow_loop_over_permutations(method, s):
    rng = np.random.default_rng(s)
    d = rng.normal(size=(s, 30))
    hist = rng.integers(0, 4, size=(s, 6)) * rng.integers(0, 2, size=(s, 6))  # ties, zeros
    hist[:, 0] += 1  # no empty client
    res = at.label_alignment(d @ d.T, hist, method=method, permutations=200, seed=3)
    perms, exact = at._permutations(s, 200, 3)
    observed, stats = _slow_mantel(
        pairwise_cosine(d @ d.T), at.label_similarity(hist), perms, method
    )
    assert res.statistic == pytest.approx(observed)
    hits = int(np.sum(stats >= observed - 1e-12))
    expected = hits / len(perms) if exact else (1 + hits) / (1 + len(perms))
    assert res.exact == exact == (s == 5)  # 5! = 120 <= 200: enumerated
    assert res.p_value == pytest.approx(expected)


def test_all_permutations_enumerated_when_few():
    perms, exact = at._permutations(5, 200, 0)
    assert exact and len(perms) == 120 and len({tuple(p) for p in perms}) == 120
    perms, exact = at._permutations(6, 200, 0)
    assert not exact and perms.shape == (200, 6)
    np.testing.assert_array_equal(np.sort(perms, axis=1), np.tile(np.arange(6), (200, 1)))


def test_relabelling_all_clients_changes_nothing():
    rng = np.random.default_rng(0)
    d = rng.normal(size=(8, 20))
    hist = rng.integers(0, 9, size=(8, 10))
    p = rng.permutation(8)
    a = at.label_alignment(d @ d.T, hist, permutations=99)
    b = at.label_alignment((d @ d.T)[np.ix_(p, p)], hist[p], permutations=99)
    assert a.statistic == pytest.approx(b.statistic)


def _dirichlet_clients(rng, s=10, k=10, alpha=0.3, n=200):
    props = rng.dirichlet(np.full(k, alpha), size=s)
    return np.round(props * n).astype(int) + (rng.random((s, k)) < 0.02)


def test_updates_built_from_labels_align_and_random_ones_do_not():
    rng = np.random.default_rng(1)
    null_p = []
    hits = 0
    for trial in range(20):
        hist = _dirichlet_clients(rng)
        directions = rng.normal(size=(10, 500))  # one random direction per class
        shares = hist / hist.sum(axis=1, keepdims=True)
        built = shares @ directions + 0.05 * rng.normal(size=(10, 500))
        res = at.label_alignment(built @ built.T, hist, permutations=199, seed=trial)
        assert res.statistic > 0.7, res
        hits += res.p_value <= 0.01
        noise = rng.normal(size=(10, 500))
        null = at.label_alignment(noise @ noise.T, hist, permutations=199, seed=trial)
        assert abs(null.statistic) < 0.6
        null_p.append(null.p_value)
    assert hits == 20
    null_p = np.array(null_p)
    # under the null the p-value is about uniform: not concentrated near 0
    assert np.mean(null_p <= 0.05) <= 0.2 and 0.3 < null_p.mean() < 0.7


def test_undefined_cases_are_nan():
    two = at.label_alignment(np.eye(2), np.eye(2))
    assert math.isnan(two.statistic) and math.isnan(two.p_value) and two.pairs == 1
    zero = np.diag([1.0, 0.0, 1.0, 1.0])  # client 1 sent a zero update
    assert math.isnan(at.label_alignment(zero, np.eye(4)).statistic)
    same = np.ones((4, 3))  # identical label histograms: constant similarity
    assert math.isnan(at.label_alignment(np.eye(4) + 0.1, same).statistic)
    with pytest.raises(ValueError, match="method"):
        at.label_alignment(GRAM, HIST, method="kendall")
    with pytest.raises(ValueError, match="disagree"):
        at.label_alignment(GRAM, HIST[:2])


def test_class_variance_hand_computed_and_against_a_loop():
    # Two clients, two classes, one feature: rows d_0 = [[1],[0]], d_1 = [[3],[0]], bias
    # [0, 2] and [0, 0]: class 0 spread (1-2)^2 + (3-2)^2 over 2 = 1; class 1 bias (2-1)^2... = 1.
    w = np.array([[[1.0], [0.0]], [[3.0], [0.0]]])
    b = np.array([[0.0, 2.0], [0.0, 0.0]])
    np.testing.assert_allclose(at.class_variance(w, b), [1.0, 1.0])
    np.testing.assert_allclose(at.class_variance(w), [1.0, 0.0])

    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 6, 10, 7))  # rounds, clients, classes, features
    b = rng.normal(size=(4, 6, 10))
    weights = rng.random(6)
    got = at.class_variance(w, b, weights)
    wn = weights / weights.sum()
    for r in range(4):
        rows = np.concatenate([w[r], b[r][..., None]], axis=-1)  # (S, K, F+1)
        m = sum(wn[i] * rows[i] for i in range(6))
        for k in range(10):
            v = sum(wn[i] * np.sum((rows[i, k] - m[k]) ** 2) for i in range(6))
            assert got[r, k] == pytest.approx(v)
    # summed over classes: the layer's update variance of the flattened (weight, bias) update
    flat = np.concatenate([w.reshape(4, 6, -1), b], axis=-1)
    mean = np.einsum("s,rsp->rp", wn, flat)
    total = np.einsum("s,rs->r", wn, ((flat - mean[:, None]) ** 2).sum(-1))
    np.testing.assert_allclose(got.sum(-1), total)


def test_class_variance_concentrates_on_the_classes_clients_disagree_on():
    rng = np.random.default_rng(2)
    shared = rng.normal(size=(10, 16))
    w = np.repeat(shared[None], 8, axis=0)  # 8 clients, identical rows ...
    w[:, [2, 7]] += rng.normal(size=(8, 2, 16))  # ... except classes 2 and 7
    v = at.class_variance(w)
    assert set(np.argsort(v)[-2:]) == {2, 7}
    np.testing.assert_allclose(np.delete(v, [2, 7]), 0.0, atol=1e-24)


def test_chunked_permutations_give_the_same_p_value(monkeypatch):
    rng = np.random.default_rng(4)
    d = rng.normal(size=(12, 40))
    hist = _dirichlet_clients(rng, s=12)
    whole = at.label_alignment(d @ d.T, hist, permutations=300, seed=5)
    monkeypatch.setattr(at, "CHUNK_VALUES", 100)  # 66 pairs: one relabelling per chunk
    chunked = at.label_alignment(d @ d.T, hist, permutations=300, seed=5)
    assert chunked == whole
