"""driftscope.metrics.gram: the one Gram implementation of each job, against slow loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from driftscope.metrics.gram import as_float64, centred_gram, linear_gram, update_gram

# float results compared at a rounding tolerance: make test runs these again under other CPU kernels
pytestmark = pytest.mark.kernels


def slow_update_gram(d: np.ndarray) -> np.ndarray:
    """G_ij = sum_p d_ip d_jp, one float64 product at a time."""
    n, p = d.shape
    g = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            g[i, j] = sum(float(d[i, k]) * float(d[j, k]) for k in range(p))
    return g


def slow_centred_gram(x: np.ndarray) -> np.ndarray:
    """K_ij = <x_i - mean, x_j - mean>, column means taken in float64 by hand."""
    n, p = x.shape
    x = x.astype(np.float64)
    means = [sum(x[i, k] for i in range(n)) / n for k in range(p)]
    g = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            g[i, j] = sum((x[i, k] - means[k]) * (x[j, k] - means[k]) for k in range(p))
    return g


@pytest.mark.parametrize("chunk_values", [1, 7, 64, 1 << 18])
def test_update_gram_matches_slow_loops_numpy_and_torch(chunk_values: int) -> None:
    rng = np.random.default_rng(0)
    d = rng.normal(size=(4, 37)).astype(np.float32)
    ref = slow_update_gram(d)
    got = update_gram(d, chunk_values=chunk_values)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    got_t = update_gram(torch.from_numpy(d), chunk_values=chunk_values)
    assert isinstance(got_t, torch.Tensor) and got_t.dtype == torch.float64
    np.testing.assert_allclose(got_t.numpy(), ref, rtol=1e-12)


def test_update_gram_keeps_leading_axes() -> None:
    rng = np.random.default_rng(1)
    d = rng.normal(size=(3, 4, 11))
    got = update_gram(d, chunk_values=8)
    got_t = update_gram(torch.from_numpy(d), chunk_values=8)
    for r in range(3):
        np.testing.assert_allclose(got[r], slow_update_gram(d[r]), rtol=1e-12)
        np.testing.assert_allclose(got_t[r].numpy(), slow_update_gram(d[r]), rtol=1e-12)


def test_update_gram_of_tensor_is_the_recorders_chunked_float64_product() -> None:
    """The recorder's Grams must not change: one addmm per block of columns, in float64."""
    rng = np.random.default_rng(2)
    block = torch.from_numpy(rng.normal(size=(5, 1000)).astype(np.float32))
    expected = torch.zeros(5, 5, dtype=torch.float64)
    step = 64 // 5
    for start in range(0, 1000, step):
        part = block[:, start : start + step].to(torch.float64)
        expected.addmm_(part, part.T)
    assert torch.equal(update_gram(block, chunk_values=64), expected)


def test_centred_gram_matches_slow_loops_and_centres_first() -> None:
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(6, 5)) + 1e4).astype(np.float32)  # a large offset, float32 storage
    ref = slow_centred_gram(x)
    np.testing.assert_allclose(centred_gram(x), ref, rtol=1e-9, atol=1e-6)
    t = centred_gram(torch.from_numpy(x))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64
    np.testing.assert_allclose(t.numpy(), ref, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(linear_gram(torch.from_numpy(x)), ref, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(centred_gram(x).sum(axis=0), 0.0, atol=1e-6)


def test_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="N, P"):
        update_gram(np.ones(3))
    with pytest.raises(ValueError, match="2-D"):
        centred_gram(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="2-D"):
        centred_gram(torch.ones(2, 3, 4))


def test_as_float64_widens_half_precision_tensors() -> None:
    x = torch.tensor([1.5, -2.25], dtype=torch.bfloat16)
    out = as_float64(x)
    assert out.dtype == np.float64 and out.tolist() == [1.5, -2.25]
