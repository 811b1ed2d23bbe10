"""Probe CKA of one layer with undefined models: a failed client, features that are not finite,
constant features. Every defined pair equals pairwise_cka on those two models alone (a pair's CKA
depends on its two Grams only), every undefined model is NaN, nothing raises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from driftscope.metrics.cka import pairwise_cka, rbf_from_linear_gram
from driftscope.metrics.gram import linear_gram
from driftscope.metrics.probe import KINDS, probe_cka


def _grams(m: int, n: int = 12, p: int = 5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(m):
        x = rng.normal(size=(n, p))
        out.append(linear_gram(x - x.mean(axis=0)))
    return np.stack(out)


def _slow(g: np.ndarray, i: int, j: int) -> dict[str, float]:
    pair = g[[i, j]]
    return {
        "linear": pairwise_cka(pair, centred=True)[0, 1],
        "rbf": pairwise_cka(rbf_from_linear_gram(pair))[0, 1],
        "debiased": pairwise_cka(pair, debiased=True)[0, 1],
    }


def test_all_defined_is_pairwise_cka_exactly():
    g = _grams(4)
    values, not_finite = probe_cka(g)
    assert not_finite == []
    np.testing.assert_array_equal(values["linear"], pairwise_cka(g, centred=True))
    np.testing.assert_array_equal(values["rbf"], pairwise_cka(rbf_from_linear_gram(g)))
    np.testing.assert_array_equal(values["debiased"], pairwise_cka(g, debiased=True))


def test_failed_not_finite_and_constant_models_are_nan_and_the_rest_unchanged():
    g = _grams(5)
    g[1, 0, 0] = np.inf  # overflowed features
    g[3] = 0.0  # constant features: zero RBF bandwidth, linear CKA 0/0
    values, not_finite = probe_cka(g, undefined=[2])
    assert not_finite == [1]
    for kind in KINDS:
        v = values[kind]
        assert np.isnan(v[[1, 2], :]).all() and np.isnan(v[:, [1, 2]]).all()
    assert np.isnan(values["rbf"][3, :]).all() and np.isnan(values["rbf"][:, 3]).all()
    for i, j in [(0, 4), (4, 0)]:
        slow = _slow(g, i, j)
        for kind in KINDS:
            # a pair's value from the stack equals the pair alone up to float64 summation order
            assert values[kind][i, j] == pytest.approx(slow[kind], rel=1e-12)
    assert np.isfinite(values["linear"][[0, 4]][:, [0, 4]]).all()


class _Overflows(torch.nn.Module):
    """A layer whose output overflows float32 in evaluation mode only, as BatchNorm's can after
    training batches of one or two samples: training is untouched, the probe sees infinities."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return y if self.training else y * 1e30


def _overflowing_model() -> torch.nn.Module:
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 16), _Overflows(), torch.nn.Linear(16, 10)
    )
    model.head_prefixes = ("3",)
    return model


def test_a_run_whose_probe_features_overflow_completes_with_nan_cka_and_a_warning(tmp_path, digits):
    from conftest import small_config

    from driftscope import open_run, train

    with pytest.warns(RuntimeWarning, match="not finite"):
        path = train(
            small_config(), tmp_path / "overflow.h5", model=_overflowing_model, dataset=digits
        )
    with open_run(path) as run:
        assert run.status == "complete"
        names = [ly.name for ly in run.layers]
        # the layer after the overflow sees infinite inputs in every model; the layers before
        # it are probed as usual
        assert np.isnan(run.cka(names[2], "linear")).all()
        for name in names[:2]:
            assert np.isfinite(run.cka(name, "linear")).all()
