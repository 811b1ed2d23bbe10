"""The recorder's probe CKA against a naive recomputation from the models it saw."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import small_config

from driftscope import open_run, train
from driftscope.engine.events import Hook
from driftscope.engine.inprocess import Simulator
from driftscope.engine.lifecycle import Lifecycle
from driftscope.engine.recorder import update_gram
from driftscope.metrics.cka import cka, cka_error_bound
from driftscope.metrics.gram import centred_gram, gram32_error
from driftscope.runfile.h5write import chunk_columns


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


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["linear", "rbf", "debiased"])
def test_recorded_cka_equals_cka_of_the_client_and_global_models(tmp_path, digits, kind, precision):
    """Recorded CKA against CKA of the same activations recomputed in float64: equal to float64
    rounding with ``record.cka_precision = "float64"``; within the derived error bound
    (``gram32_error`` carried to CKA by ``cka_error_bound``) with the default ``"float32"``."""
    cfg = small_config(
        train__rounds=2, train__clients=4, record__probe_size=48, record__cka_precision=precision
    )
    snaps = Snapshots()
    path = train(cfg, tmp_path / "r.h5", dataset=digits, hooks=[snaps])
    sim = Simulator(cfg, digits)  # same architecture; parameters come from the snapshots
    with open_run(path) as run:
        idx = run.probe_index
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
                if precision == "float64":
                    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
                    continue
                f32 = [a.astype(np.float32) for a in acts]  # what the probe model produced
                grams = np.stack([centred_gram(a, "float32") for a in f32])
                eps, eta = np.array([gram32_error(a) for a in f32]).T
                bound = cka_error_bound(grams, eps, eta, kind)
                assert np.all(np.abs(got - want) <= bound), (np.abs(got - want).max(), bound.min())
                assert np.nanmax(np.abs(got - want)) > 0  # the float32 path did run


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


def _recorder(writer, sim, cfg):
    from driftscope.engine.activations import probe_index
    from driftscope.engine.recorder import Recorder

    rows = probe_index(cfg.seed, len(sim.test_y), cfg.record.probe_size)
    return Recorder(
        writer,
        cfg.record,
        sim.layout,
        cfg.train.clients_per_round,
        sim.num_clients,
        sim.build_model,
        sim.test_x[rows],
        rows,
        tuple(sim.algorithm.state_norms()),
    )


def test_recorder_never_touches_the_training_model_or_the_rng(tmp_path, digits):
    from driftscope.runfile.writer import RunWriter

    cfg = small_config(
        train__rounds=3, train__clients=3, train__eval_every=2, record__probe_size=16
    )
    sim = Simulator(cfg, digits)
    writer = RunWriter.create(
        tmp_path / "r.h5", config=sim.cfg, layout=sim.layout, label_histogram=sim.label_histogram
    )
    rng = torch.get_rng_state()
    rec = _recorder(writer, sim, cfg)  # builds its own probe model
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(
        p.data_ptr() != q.data_ptr() for p in rec.model.parameters() for q in sim.model.parameters()
    )

    class Check(Hook):  # runs after the recorder
        def on_client_end(self, event):
            self.last = sim.flat.params.clone()

        def on_round_end(self, event):
            if np.isnan(event.test_accuracy):  # not evaluated: the engine left the last client
                self.checked = True
                assert torch.equal(sim.flat.params, self.last)

    writer.start_swmr()
    check = Check()
    sim.run(lifecycle=Lifecycle([rec, check], writer=writer))
    assert check.checked


def test_recorder_records_events_from_any_engine(tmp_path, digits):
    """Hand-made events (no engine): the Grams are the updates' inner products and the stored
    updates are the updates."""
    from driftscope.engine.events import ClientTrained, RoundEnded, RoundStarted
    from driftscope.runfile.writer import RunWriter

    cfg = small_config(train__clients=3, record__probe_size=8)
    sim = Simulator(cfg, digits)  # metadata only
    layout = sim.layout
    writer = RunWriter.create(
        tmp_path / "r.h5", config=sim.cfg, layout=sim.layout, label_histogram=sim.label_histogram
    )
    rec = _recorder(writer, sim, cfg)
    writer.start_swmr()
    g = torch.Generator().manual_seed(0)
    x = sim.global_params.clone()
    want = []
    for r in range(2):
        clients = (0, 1, 2)
        rec.on_round_start(RoundStarted(r, clients))
        d = torch.randn(3, layout.numel, generator=g) * 1e-2
        want.append(d)
        for i, c in enumerate(clients):
            rec.on_client_end(ClientTrained(r, c, 10, 1, 0.0, 0.0, d[i], x + d[i], layout))
        event = RoundEnded(r, clients, 0.0, 0.0, 0.0, 0.0, 0, 0, 0.0, {}, {}, x + d.mean(0), {})
        rec.on_round_end(event)
        writer.commit(event)
    writer.close()
    with open_run(tmp_path / "r.h5") as run:
        for r, d in enumerate(want):
            for p in layout.params:
                block = d[:, p.offset : p.offset + p.numel].double()
                np.testing.assert_allclose(run.gram(p.name, round=r), (block @ block.T).numpy())
                np.testing.assert_array_equal(
                    run.updates(p.name, round=r).reshape(3, -1),
                    d[:, p.offset : p.offset + p.numel].numpy(),
                )
            cka = run.cka(run.layers[0].name, round=r)
            assert cka.shape == (4, 4) and np.allclose(np.diag(cka), 1)


def test_client_event_views_per_layer(digits):
    from driftscope.engine.events import ClientTrained

    sim = Simulator(small_config(), digits)
    layout = sim.layout
    update = torch.arange(layout.numel, dtype=torch.float32)
    event = ClientTrained(0, 0, 1, 1, 0.0, 0.0, update, update * 2, layout)
    for p in layout.params:
        view = event.layer_update(p.name)
        assert view.data_ptr() == update[p.offset :].data_ptr() and len(view) == p.numel
    for layer in layout.layers:
        got = event.layer_update(layer)
        want = torch.cat([event.layer_update(name) for name in layer.params])
        assert torch.equal(got, want) and torch.equal(event.layer_params(layer.name), 2 * want)
