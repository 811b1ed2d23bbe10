"""The equivalence test on Flower's real simulation engine (Ray): slow (one engine start,
20-60 s on 2 cores), so both algorithms, and a client fault, share it. CI runs it; skip locally
with ``-m "not slow"``.

Same seed and config (3 clients, 2 rounds), in-process vs Flower: the global model, each client's
update and every Gram matrix agree to float32 rounding. Tolerance: rtol 1e-6 / atol 1e-7 on the
float32 models and updates (a few ulps), rtol 1e-5 on the Grams (products of two such updates,
atol 1e-6 of the largest entry for off-diagonals near 0). Why not exact: the clients train in Ray worker
processes, and a torch with another thread count there could sum in another order; on the test
machine (one torch thread on both sides) they agree bit for bit (max difference 0.0).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import small_config

pytest.importorskip("flwr")
pytest.importorskip("ray")

from driftscope import open_run, train
from driftscope.engine.events import Hook
from driftscope.flower.simulation import simulate
from driftscope.flower.strategy import DriftscopeStrategy

EQUIV = {
    "train__clients": 3,
    "train__rounds": 2,
    "train__local_steps": 3,
    "record__probe_size": 16,
}


class Globals(Hook):
    def __init__(self) -> None:
        self.models: list[torch.Tensor] = []

    def on_round_end(self, event) -> None:
        self.models.append(event.global_params.clone())


class CorruptOne(DriftscopeStrategy):
    """Sends client 1 a round-0 message without the global model."""

    def configure_train(self, server_round, arrays, config, grid):
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if server_round == 1:
            for m in messages:
                if m.metadata.dst_node_id == self._node_of[1]:
                    del m.content["arrays"]
        return messages


@pytest.mark.slow
def test_flower_simulation_engine_matches_inprocess(digits, tmp_path):
    algorithms = ("fedavg", "fedpvr")
    strategies, flower_models, inprocess_models = [], [], []
    for algorithm in algorithms:
        cfg = small_config(train__algorithm=algorithm, **EQUIV)
        ours = Globals()
        train(cfg, tmp_path / f"{algorithm}-inprocess.h5", dataset=digits, hooks=[ours])
        inprocess_models.append(ours.models)
        theirs = Globals()
        flower_models.append(theirs.models)
        strategies.append(
            DriftscopeStrategy(
                cfg, tmp_path / f"{algorithm}-flower.h5", dataset=digits, hooks=[theirs]
            )
        )
    # a fault on the real engine: client 1's round-0 message is corrupt, its ClientApp raises in
    # a Ray actor, Flower answers with an error reply; the round goes on with clients 0 and 2
    faulty = CorruptOne(small_config(**EQUIV), tmp_path / "faulty.h5", dataset=digits)
    simulate([*strategies, faulty])

    for algorithm, ours, theirs in zip(algorithms, inprocess_models, flower_models, strict=True):
        assert len(ours) == len(theirs) == 2
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
        with (
            open_run(tmp_path / f"{algorithm}-inprocess.h5") as a,
            open_run(tmp_path / f"{algorithm}-flower.h5") as b,
        ):
            assert b.status == "complete" and b.file.attrs["engine"] == "flower"
            assert (b.file["clients/failed"][()] == 0).all()
            for p in a.file["model/param_name"][()]:
                name = p.decode()
                np.testing.assert_allclose(b.updates(name), a.updates(name), rtol=1e-6, atol=1e-7)
                ga, gb = a.gram(name), b.gram(name)
                np.testing.assert_allclose(gb, ga, rtol=1e-5, atol=1e-6 * np.abs(ga).max())
            np.testing.assert_allclose(
                b.metrics.test_accuracy.to_numpy(), a.metrics.test_accuracy.to_numpy()
            )
    with open_run(tmp_path / "faulty.h5") as run:
        assert run.status == "complete" and len(run.rounds) == 2
        assert run.file["clients/failed"][()].tolist() == [[0, 1, 0], [0, 0, 0]]
        g = run.gram("features.0.weight")
        assert np.isnan(g[0, 1]).all() and np.isfinite(g[0][np.ix_([0, 2], [0, 2])]).all()
        assert np.isfinite(g[1]).all()
