"""FedLAMA's layer discrepancy and L-DAWA's angular divergence: each against a slow, obvious
recomputation (client models built explicitly; a run's stored updates and its rebuilt global model),
and their properties."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import small_config

from driftscope import open_run, train
from driftscope.analysis import drift_table
from driftscope.engine.setup import RunSetup
from driftscope.metrics import METRICS, drift
from driftscope.metrics.layerwise import (
    angular_divergence,
    cosine_to_global,
    layer_discrepancy,
    one_minus_cosine,
)
from driftscope.runfile import schema

# two code paths on float results (the recorder's rebuilt global model, the test's): run again under
# other CPU kernels by make test
pytestmark = pytest.mark.kernels

# both sides are float64 sums of the same float64 numbers, grouped differently: a few unit
# roundoffs (2.2e-16) of the largest term, far below 1e-10
EXACT = 1e-10


def _fedlama_slow(x0, updates, p):
    """sum_i p_i ||u - x_i||^2 / numel with the client models x_i = x0 + d_i built explicitly."""
    models = [x0 + d for d in updates]
    p = np.asarray(p, dtype=np.float64) / np.sum(p)
    u = sum(pi * x for pi, x in zip(p, models))
    return sum(pi * float(np.sum((u - x) ** 2)) for pi, x in zip(p, models)) / len(x0)


def _one_minus_cos_slow(w, d):
    """1 - cos(w, w + d) as 2 sin^2(theta / 2), theta from the component of d across w: no
    cancellation, so exact to float64 rounding however small d is."""
    b = float(w @ d)
    perp = d - (b / float(w @ w)) * w
    theta = np.arctan2(np.linalg.norm(perp) * np.linalg.norm(w), float(w @ w) + b)
    return 2.0 * np.sin(theta / 2.0) ** 2


def test_layer_discrepancy_is_fedlama_from_client_models():
    rng = np.random.default_rng(0)
    for weights in (None, rng.uniform(0.5, 3.0, size=5)):
        for _ in range(3):
            x0 = rng.normal(size=40)
            d = rng.normal(size=(5, 40)) * rng.uniform(0.1, 2.0, size=(5, 1))
            g = d @ d.T
            p = np.ones(5) if weights is None else weights
            got = layer_discrepancy(g, 40, weights)
            want = _fedlama_slow(x0, d, p)
            assert got == pytest.approx(want, rel=EXACT)
            # the same quantity as the variance per parameter, computed another way
            assert got == pytest.approx(drift.per_parameter_variance(g, 40, weights), rel=1e-9)


def test_layer_discrepancy_is_zero_when_every_client_sends_the_same_update():
    d = np.tile(np.random.default_rng(1).normal(size=(1, 30)), (4, 1))
    g = d @ d.T
    # p^T G p and sum p_i G_ii are the same number up to rounding: relative to ||d||^2
    assert layer_discrepancy(g, 30) <= 1e-14 * float(d[0] @ d[0]) / 30
    assert layer_discrepancy(g, 30, [1.0, 2.0, 3.0, 4.0]) <= 1e-14 * float(d[0] @ d[0]) / 30


def test_angular_divergence_is_one_minus_the_cosine_of_the_weights():
    rng = np.random.default_rng(2)
    for scale in (1.0, 1e-2, 1e-6):  # tiny updates: the stable form keeps full precision
        w = rng.normal(size=50)
        d = rng.normal(size=(4, 50)) * scale
        g = d @ d.T
        got = angular_divergence(g, w @ w, d @ w)
        want = np.mean([_one_minus_cos_slow(w, di) for di in d])
        assert got == pytest.approx(want, rel=1e-9)
        cos = cosine_to_global(g, w @ w, d @ w)
        direct = [(w @ (w + di)) / np.linalg.norm(w) / np.linalg.norm(w + di) for di in d]
        np.testing.assert_allclose(cos, direct, rtol=0, atol=1e-12)
    # a client that turns the layer past 90 degrees (a + b < 0): the direct form
    w = np.array([1.0, 0.0])
    d = np.array([[-3.0, 1.0]])
    assert angular_divergence(d @ d.T, w @ w, d @ w) == pytest.approx(
        _one_minus_cos_slow(w, d[0]), rel=1e-12
    )


def test_angular_divergence_properties():
    w = np.random.default_rng(3).normal(size=20)
    zero = np.zeros((3, 20))
    assert angular_divergence(zero @ zero.T, w @ w, zero @ w) == 0.0
    # a client update along w changes no angle; the opposite of w (past zero) turns it by 180
    along = np.stack([0.5 * w, 2.0 * w])
    assert angular_divergence(along @ along.T, w @ w, along @ w) == pytest.approx(0.0, abs=1e-15)
    assert one_minus_cosine(w @ w, -2 * (w @ w), 4 * (w @ w)) == pytest.approx(2.0)
    # no global weights (a zero layer): undefined, not a number
    assert np.isnan(one_minus_cosine(0.0, 0.0, 1.0))
    # batched over rounds: (R, S, S), (R,), (R, S) -> (R,)
    d = np.random.default_rng(4).normal(size=(2, 3, 20))
    g = d @ np.swapaxes(d, -1, -2)
    assert angular_divergence(g, np.array([w @ w, w @ w]), d @ w).shape == (2,)


def test_the_metrics_are_registered():
    assert METRICS.get("layer_discrepancy").source == "gram"
    assert METRICS.get("angular_divergence").source == "global"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, digits):
    """A 3-round FedAvg run with every client update stored."""
    cfg = small_config(record__probe_size=0)
    path = tmp_path_factory.mktemp("layerwise") / "run.h5"
    train(cfg, path, dataset=digits)
    return cfg, path


def test_recorded_global_norms_match_the_rebuilt_global_model(recorded, digits):
    """Round 0 starts from the initial model (rebuilt here from the seed); round 2 from the global
    model after round 1 (the run's resume state keeps it in slot 1)."""
    cfg, path = recorded
    x0 = RunSetup(cfg, digits).initial_params.double().numpy()
    with h5py.File(path, "r") as f:
        slots = f[schema.STATE_ROUND][()]
        x2 = f[schema.state_path("global_params")][int(np.flatnonzero(slots == 1)[0])]
    with open_run(path) as run:
        assert run.has_global_weights
        assert list(run.update_rounds) == [0, 1, 2]
        table = drift_table(run)
        for r, x in ((0, x0), (2, np.asarray(x2, dtype=np.float64))):
            row = list(run.rounds).index(r)
            for layer in run.layers:
                lo = run.param(layer.params[0]).offset
                w = x[lo : lo + layer.numel]
                d = run.updates(layer.name, r).astype(np.float64)
                sq, dot = run.global_weights(layer.name)
                # the recorder rebuilds w as y - d from float32 vectors: off by <= 2^-24 |d|
                # per entry, so ||w||^2 within 2^-23 ||w|| ||d|| (+ rounding of the sum)
                tol = 2.0**-22 * np.linalg.norm(w) * np.abs(d).max() * np.sqrt(layer.numel)
                assert sq[row] == pytest.approx(float(w @ w), abs=tol + 1e-12 * float(w @ w))
                np.testing.assert_allclose(dot[row], d @ w, rtol=1e-6, atol=tol)
                want = np.mean([_one_minus_cos_slow(w, di) for di in d])
                # 1 - cos ~ ||d_perp||^2 / (2 ||w||^2); the rebuilt w moves b = <w, d> by at
                # most 2^-24 ||d||^2, a relative change of ~1e-7 here: 1e-5 leaves a margin of 100
                got = table.query("metric == 'angular_divergence' and round == @r")
                got = got[got["layer"] == layer.name]["value"].item()
                assert got == pytest.approx(want, rel=1e-5)
                want_fedlama = _fedlama_slow(w, d, np.ones(len(d)))
                got = table.query("metric == 'layer_discrepancy' and round == @r")
                got = got[got["layer"] == layer.name]["value"].item()
                # the Gram is accumulated in float64 from the same float32 updates
                assert got == pytest.approx(want_fedlama, rel=1e-9)


def test_a_run_without_global_norms_reads_as_not_recorded(recorded, tmp_path):
    """A file written before the global norms were recorded: the other metrics stay, the angle
    is left out, and asking for it names why."""
    import shutil

    from driftscope.errors import RunFileError

    _, path = recorded
    old = tmp_path / "old.h5"
    shutil.copy(path, old)
    with h5py.File(old, "r+") as f:
        del f[schema.GLOBAL_WEIGHTS]
    with open_run(old) as run:
        assert not run.has_global_weights
        metrics = set(drift_table(run)["metric"])
        assert "layer_discrepancy" in metrics and "angular_divergence" not in metrics
        with pytest.raises(RunFileError, match="no global-model norms"):
            run.global_weights(run.layers[0].name)


def test_a_file_written_before_the_global_norms_resumes_without_them(tmp_path, digits):
    """Resuming an older file (no records/global) continues it as it was: the other records grow,
    the global norms stay absent rather than starting mid-run."""
    from driftscope.engine.events import Hook
    from driftscope.engine.training import resume

    class StopAt(Hook):
        def on_round_start(self, event):
            if event.round == 2:
                raise KeyboardInterrupt

    path = tmp_path / "old.h5"
    cfg = small_config(record__probe_size=0, train__rounds=3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, path, dataset=digits, hooks=[StopAt()])
    with h5py.File(path, "r+") as f:
        del f[schema.GLOBAL_WEIGHTS]
    resume(path, dataset=digits)
    with open_run(path) as run:
        assert run.status == "complete" and list(run.rounds) == [0, 1, 2]
        assert not run.has_global_weights


def test_global_weights_from_client_events_and_a_failed_first_client():
    """||w||^2 and <w, d_k> per parameter from (y_k, d_k) pairs; a failed client (NaN update,
    parameters = the global model, as every engine sends it) gives NaN dots and still ||w||^2."""
    from types import SimpleNamespace

    import torch

    from driftscope.engine.global_weights import GlobalWeights

    rng = np.random.default_rng(5)
    w = torch.tensor(rng.normal(size=12), dtype=torch.float32)
    d = torch.tensor(rng.normal(size=12) * 1e-3, dtype=torch.float32)
    y = w + d
    params = [
        SimpleNamespace(name="a", offset=0, numel=5),
        SimpleNamespace(name="b", offset=5, numel=7),
    ]
    with h5py.File("mem.h5", "w", driver="core", backing_store=False) as f:
        rec = GlobalWeights(f, SimpleNamespace(params=params), 2)
        rec.start_round()
        rec.client(0, w, torch.full((12,), float("nan")))  # failed: carries the global model
        rec.client(1, y, y - w)
    w64 = w.double().numpy()
    d64 = (y - w).double().numpy()
    for j, p in enumerate(params):
        part = slice(p.offset, p.offset + p.numel)
        assert rec.sq_norm[j] == pytest.approx(float(w64[part] @ w64[part]), rel=EXACT)
        assert np.isnan(rec.dot[0, j])
        # w rebuilt as y - d: off by <= 2^-24 |d| per entry
        assert rec.dot[1, j] == pytest.approx(float(w64[part] @ d64[part]), abs=1e-12)
