"""Tests for driftscope.metrics.drift: Gram-based measures vs. slow loops over raw updates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from driftscope.metrics import METRICS, drift, gram_metrics
from driftscope.metrics.gram import as_float64, update_gram


def gram(d):
    """Gram matrix of updates as float64 numpy (update_gram keeps tensors as tensors)."""
    return as_float64(update_gram(d))


# ---------------------------------------------------------------- slow reference implementations


def _norm_w(w: np.ndarray | None, n: int) -> np.ndarray:
    if w is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(w, dtype=np.float64)
    return w / w.sum()


def slow_metrics(d: np.ndarray, w: np.ndarray | None, numel: int) -> dict[str, float]:
    """Every metric by an obvious loop over raw updates d (N, P), float64."""
    n = d.shape[0]
    w = _norm_w(w, n)
    m = np.zeros(d.shape[1])
    for i in range(n):
        m += w[i] * d[i]
    msq = float(m @ m)
    v = 0.0
    for i in range(n):
        v += w[i] * float((d[i] - m) @ (d[i] - m))
    total = np.zeros(d.shape[1])
    for i in range(n):
        total += d[i]
    sq_norms = [float(d[i] @ d[i]) for i in range(n)]
    div = sum(sq_norms) / float(total @ total)
    cos_m = [float(d[i] @ m) / (np.linalg.norm(d[i]) * np.linalg.norm(m)) for i in range(n)]
    pair = [
        float(d[i] @ d[j]) / (np.linalg.norm(d[i]) * np.linalg.norm(d[j]))
        for i in range(n)
        for j in range(n)
        if i != j
    ]
    return {
        "update_variance": v,
        "relative_variance": v / msq,
        "per_parameter_variance": v / numel,
        "drift_diversity": div,
        "cosine_divergence": float(np.mean([1.0 - c for c in cos_m])),
        "mean_pairwise_cosine": float(np.mean(pair)),
        "mean_update_sq_norm": msq,
        "mean_client_sq_norm": float(np.mean(sq_norms)),
    }


def slow_cos_to_mean(d: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    w = _norm_w(w, d.shape[0])
    m = sum(w[i] * d[i] for i in range(d.shape[0]))
    return np.array([d[i] @ m / (np.linalg.norm(d[i]) * np.linalg.norm(m)) for i in range(len(d))])


def slow_pairwise_cos(d: np.ndarray) -> np.ndarray:
    n = d.shape[0]
    out = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = d[i] @ d[j] / (np.linalg.norm(d[i]) * np.linalg.norm(d[j]))
    return out


def _updates(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    # A shared drift direction plus client noise, so ||m|| is not tiny.
    base = rng.normal(size=(*shape[:-2], 1, shape[-1]))
    return base + 0.7 * rng.normal(size=shape)


# ---------------------------------------------------------------------------- metrics vs loops


@pytest.mark.parametrize("weighted", [False, True])
def test_layer_metrics_match_slow_loops_with_round_axis(weighted: bool) -> None:
    rng = np.random.default_rng(0)
    rounds, n, p = 3, 5, 40
    d = _updates(rng, (rounds, n, p))
    w = rng.uniform(0.5, 3.0, size=(rounds, n)) if weighted else None  # unnormalised on purpose
    g = gram(d)
    assert g.shape == (rounds, n, n)
    got = gram_metrics(g, numel=p, weights=w)
    assert set(got) == {m for m in METRICS if METRICS.get(m).source == "gram"}
    for r in range(rounds):
        ref = slow_metrics(d[r], None if w is None else w[r], p)
        for key, val in ref.items():
            assert got[key].shape == (rounds,)
            np.testing.assert_allclose(got[key][r], val, rtol=1e-10, err_msg=key)


@pytest.mark.parametrize("weighted", [False, True])
def test_individual_functions_match_slow_loops(weighted: bool) -> None:
    rng = np.random.default_rng(1)
    n, p = 6, 25
    d = _updates(rng, (n, p))
    w = rng.dirichlet(np.ones(n)) if weighted else None
    g = gram(d)
    ref = slow_metrics(d, w, p)
    np.testing.assert_allclose(drift.update_variance(g, w), ref["update_variance"], rtol=1e-10)
    np.testing.assert_allclose(drift.relative_variance(g, w), ref["relative_variance"], rtol=1e-10)
    np.testing.assert_allclose(
        drift.per_parameter_variance(g, p, w), ref["per_parameter_variance"], rtol=1e-10
    )
    np.testing.assert_allclose(
        drift.mean_update_sq_norm(g, w), ref["mean_update_sq_norm"], rtol=1e-10
    )
    np.testing.assert_allclose(drift.drift_diversity(g), ref["drift_diversity"], rtol=1e-10)
    np.testing.assert_allclose(drift.cosine_divergence(g, w), ref["cosine_divergence"], rtol=1e-9)
    np.testing.assert_allclose(drift.mean_pairwise_cosine(g), ref["mean_pairwise_cosine"])
    np.testing.assert_allclose(drift.cosine_to_mean(g, w), slow_cos_to_mean(d, w), rtol=1e-10)
    np.testing.assert_allclose(drift.pairwise_cosine(g), slow_pairwise_cos(d), rtol=1e-10)


def test_weights_shape_n_broadcast_over_rounds() -> None:
    rng = np.random.default_rng(2)
    d = _updates(rng, (4, 3, 10))
    w = np.array([1.0, 2.0, 5.0])
    g = gram(d)
    got = drift.update_variance(g, w)
    for r in range(4):
        np.testing.assert_allclose(got[r], slow_metrics(d[r], w, 10)["update_variance"])


def test_weights_change_the_result() -> None:
    rng = np.random.default_rng(3)
    g = gram(_updates(rng, (5, 30)))
    w = np.array([10.0, 1.0, 1.0, 1.0, 1.0])
    assert not np.isclose(drift.update_variance(g), drift.update_variance(g, w))


# ---------------------------------------------------------------------------- identities


def test_diversity_identity_uniform() -> None:
    rng = np.random.default_rng(4)
    n = 7
    g = gram(_updates(rng, (5, n, 50)))
    lhs = drift.drift_diversity(g)
    rhs = (1.0 + drift.update_variance(g) / drift.mean_update_sq_norm(g)) / n
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=8),
    p=st.integers(min_value=1, max_value=20),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_diversity_identity_property(n: int, p: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    g = gram(_updates(rng, (n, p)))
    msq = drift.mean_update_sq_norm(g)
    if msq <= 1e-8 * np.trace(g):  # identity is ill-conditioned when ||m|| ~ 0
        return
    lhs = drift.drift_diversity(g)
    rhs = (1.0 + drift.relative_variance(g)) / n
    np.testing.assert_allclose(lhs, rhs, rtol=1e-7)
    assert lhs >= 1.0 / n - 1e-12
    assert drift.update_variance(g) >= 0.0


def test_all_equal_updates() -> None:
    rng = np.random.default_rng(5)
    n = 6
    d = np.repeat(rng.normal(size=(1, 33)), n, axis=0)
    g = gram(d)
    np.testing.assert_allclose(drift.drift_diversity(g), 1.0 / n, rtol=1e-12)
    np.testing.assert_allclose(drift.cosine_divergence(g), 0.0, atol=1e-12)
    np.testing.assert_allclose(drift.mean_pairwise_cosine(g), 1.0, rtol=1e-12)
    assert drift.update_variance(g) == pytest.approx(0.0, abs=1e-10)
    assert drift.update_variance(g) >= 0.0  # round-off clipped


def test_zero_mean_gives_nan_not_error() -> None:
    d = np.array([[1.0, 2.0], [-1.0, -2.0]])
    g = gram(d)
    assert np.isnan(drift.relative_variance(g))
    assert np.isnan(drift.drift_diversity(g))
    assert np.isnan(drift.cosine_divergence(g))
    np.testing.assert_allclose(drift.update_variance(g), 5.0)
    np.testing.assert_allclose(drift.mean_pairwise_cosine(g), -1.0)


def test_zero_client_update_pairwise_nan() -> None:
    d = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    c = drift.pairwise_cosine(gram(d))
    assert np.isnan(c[1]).all() and np.isnan(c[:, 1]).all()
    assert c[0, 2] == 0.0 and c[0, 0] == 1.0


def test_combine_grams_equals_gram_of_concatenation() -> None:
    rng = np.random.default_rng(6)
    weight = rng.normal(size=(2, 5, 12, 3))  # rounds, clients, out, in
    bias = rng.normal(size=(2, 5, 12))
    gw = gram(weight.reshape(2, 5, -1))
    gb = gram(bias)
    both = np.concatenate([weight.reshape(2, 5, -1), bias], axis=-1)
    np.testing.assert_allclose(drift.combine_grams([gw, gb]), gram(both), rtol=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        drift.combine_grams([gw, gb[0]])
    with pytest.raises(ValueError, match="at least one"):
        drift.combine_grams([])


def test_gram_float16_matches_float64_reference() -> None:
    rng = np.random.default_rng(7)
    # Many parameters: a float16 accumulation would overflow (max 65504) or lose precision.
    d16 = (rng.normal(size=(4, 200_000)) * 2.0).astype(np.float16)
    ref = d16.astype(np.float64) @ d16.astype(np.float64).T
    g = gram(d16)
    assert g.dtype == np.float64
    np.testing.assert_allclose(g, ref, rtol=1e-12)
    assert np.all(np.isfinite(g))
    gt = update_gram(torch.from_numpy(d16))
    assert isinstance(gt, torch.Tensor) and gt.dtype == torch.float64
    np.testing.assert_allclose(gt.numpy(), ref, rtol=1e-12)


def test_gram_float32_torch_accumulates_in_float64() -> None:
    rng = np.random.default_rng(8)
    d = (rng.normal(size=(3, 100_000)) + 100.0).astype(np.float32)
    ref = d.astype(np.float64) @ d.astype(np.float64).T
    np.testing.assert_allclose(gram(torch.from_numpy(d)), ref, rtol=1e-13)
    np.testing.assert_allclose(gram(d), ref, rtol=1e-13)


def test_torch_gram_input_accepted() -> None:
    rng = np.random.default_rng(9)
    g = gram(_updates(rng, (4, 10)))
    np.testing.assert_allclose(
        drift.update_variance(torch.from_numpy(g).float()), drift.update_variance(g), rtol=1e-6
    )


def test_input_validation() -> None:
    g = np.eye(3)
    with pytest.raises(ValueError, match=r"\(\.\.\., N, N\)"):
        drift.update_variance(np.ones((3, 4)))
    with pytest.raises(ValueError, match="N=3"):
        drift.update_variance(g, np.ones(4))
    with pytest.raises(ValueError, match="non-negative"):
        drift.update_variance(g, np.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="numel"):
        gram_metrics(g, numel=0)
