"""The recorder's probe CKA against a naive recomputation from the models it saw."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import small_config

from driftscope import open_run, train
from driftscope.analysis import cka
from driftscope.events import Hook
from driftscope.recorder import chunk_columns, update_gram
from driftscope.simulator import Simulator


class Snapshots(Hook):
    """Keeps each client's trained parameters and the new global model, every round."""

    def __init__(self) -> None:
        self.clients: dict[int, list[torch.Tensor]] = {}
        self.global_: dict[int, torch.Tensor] = {}

    def on_client_end(self, event):
        self.clients.setdefault(event.round, []).append(event.params.clone())

    def on_round_end(self, event):
        self.global_[event.round] = event.global_params.clone()


def activations(sim: Simulator, flat: torch.Tensor, x: torch.Tensor, layer: str) -> np.ndarray:
    """One layer's output on ``x`` for the model with parameters ``flat``: plain forward hook."""
    sim.flat.params.copy_(flat)
    out = {}
    module = sim.model.get_submodule(layer)
    handle = module.register_forward_hook(lambda m, i, o: out.setdefault("a", o.clone()))
    try:
        sim.model.eval()
        with torch.no_grad():
            sim.model(x)
    finally:
        handle.remove()
    return out["a"].reshape(len(x), -1).double().numpy()


@pytest.mark.parametrize("kind", ["linear", "rbf", "debiased"])
def test_recorded_cka_equals_cka_of_the_client_and_global_models(tmp_path, digits, kind):
    cfg = small_config(train__rounds=2, train__clients=4, record__probe_size=48)
    snaps = Snapshots()
    path = train(cfg, tmp_path / "r.h5", dataset=digits, hooks=[snaps])
    sim = Simulator(cfg, digits)  # same architecture; parameters come from the snapshots
    with open_run(path) as run:
        idx = run.file["records/probe_index"][()]
        assert len(idx) == 48 and len(set(idx.tolist())) == 48
        probe = sim.test_x[torch.from_numpy(idx)]
        for r in run.cka_rounds:
            models = [*snaps.clients[int(r)], snaps.global_[int(r)]]
            for layer in (run.layers[0], run.layers[-1]):
                acts = [activations(sim, m, probe, layer.name) for m in models]
                want = np.array(
                    [
                        [
                            cka(
                                a,
                                b,
                                kernel="rbf" if kind == "rbf" else "linear",
                                debiased=kind == "debiased",
                            )
                            for b in acts
                        ]
                        for a in acts
                    ]
                )
                got = run.cka(layer.name, kind=kind, round=int(r))
                np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("chunk_values", [1, 7, 1 << 18])
def test_update_gram_equals_one_float64_product(chunk_values):
    g = torch.Generator().manual_seed(0)
    block = torch.randn(6, 1000, generator=g) * 1e-3 + 5e-3  # an offset, like real updates
    exact = block.double() @ block.double().T
    got = update_gram(block, chunk_values=chunk_values)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, exact, rtol=1e-12, atol=0)


@pytest.mark.parametrize("numel", [1, 16, 26_214, 26_215, 36_928, 2_359_296])
def test_chunk_columns_cover_the_parameter_with_little_waste(numel):
    max_cols = 26_214
    cols = chunk_columns(numel, max_cols)
    chunks = -(-numel // cols)
    assert cols <= max_cols
    assert chunks == -(-numel // max_cols)  # no more chunks than needed
    assert chunks * cols - numel < chunks  # waste: under one column per chunk
