"""driftscope on Flower's Message API, without starting Ray: the strategy and the ClientApp talk
through real Flower Messages over an in-process test grid (tests/flowergrid.py).

The slow test against Flower's real simulation engine is in test_flower_simulation.py.
"""

from __future__ import annotations

import importlib.util
import random

import numpy as np
import pytest
import torch
from conftest import small_config

pytest.importorskip("flwr")

from flowergrid import LocalGrid
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg
from torch import nn

from driftscope import RunConfig, open_run, train
from driftscope.cli import main
from driftscope.engine.events import Hook
from driftscope.engine.inprocess import Simulator
from driftscope.errors import DivergenceError
from driftscope.flower import FlowerMissingError, FlowerRunError, recording, require_flwr
from driftscope.flower.client import app as client_app
from driftscope.flower.strategy import DriftscopeStrategy

# the equivalence config: 3 clients, 2 rounds (3 local steps, 16 probe inputs: fast)
EQUIV = {
    "train__clients": 3,
    "train__rounds": 2,
    "train__local_steps": 3,
    "record__probe_size": 16,
}


def _run_files_equal(a_path, b_path) -> None:
    with open_run(a_path) as a, open_run(b_path) as b:
        assert b.file.attrs["engine"] == "flower"
        assert a.status == b.status == "complete"
        np.testing.assert_array_equal(a.file["records/clients"][()], b.file["records/clients"][()])
        for p in a.file["model/param_name"][()]:
            name = p.decode()
            np.testing.assert_array_equal(a.gram(name), b.gram(name))
            np.testing.assert_array_equal(a.updates(name), b.updates(name))
        for layer in a.layers:
            np.testing.assert_array_equal(a.cka(layer.name), b.cka(layer.name))
        if "control_norm" in a.file["records"]:
            for name in a.file["records/control_norm"]:
                np.testing.assert_allclose(
                    a.control_norms(name), b.control_norms(name), rtol=1e-6, atol=1e-7
                )
        cols = ["test_accuracy", "test_loss", "train_loss", "train_accuracy", "uplink_bytes"]
        np.testing.assert_array_equal(a.metrics[cols].to_numpy(), b.metrics[cols].to_numpy())
        np.testing.assert_array_equal(b.file["clients/failed"][()], 0)


@pytest.mark.parametrize("algorithm", ["fedavg", "fedpvr", "scaffold"])
def test_messages_reproduce_the_inprocess_run_exactly(algorithm, digits, tmp_path):
    """Same seed and config: the same global model, updates, Grams, CKA and metrics, bit for bit
    (one process, one torch thread, the same local-training code; float32 crosses the wire
    exactly). Control-variate norms differ by rounding only: the server mirrors c_i as
    c_i + delta while the client holds c_i+ itself."""
    cfg = small_config(train__algorithm=algorithm, **EQUIV)
    sim = Simulator(cfg, digits)
    sim.run()
    train(cfg, tmp_path / "inprocess.h5", dataset=digits)
    strategy = DriftscopeStrategy(cfg, tmp_path / "flower.h5", dataset=digits)
    strategy.start(LocalGrid(client_app, 3, seed=7))
    assert torch.equal(strategy.x, sim.global_params)
    _run_files_equal(tmp_path / "inprocess.h5", tmp_path / "flower.h5")


def test_sampling_and_client_ids_match_the_simulator(digits, tmp_path):
    """A seeded sample of 2 of 4 clients per round: the same clients as in-process, each sent to
    the node with its partition id, whatever the random node ids."""
    cfg = small_config(
        train__clients=4, train__client_fraction=0.5, train__rounds=3, train__local_steps=2
    )
    sim = Simulator(cfg, digits)
    expected = [sim.sample_clients(r) for r in range(3)]
    assert len({tuple(c) for c in expected}) > 1
    grid = LocalGrid(client_app, 4, seed=3)
    strategy = DriftscopeStrategy(cfg, tmp_path / "f.h5", dataset=digits)
    strategy.start(grid)
    pid = {node: ctx.node_config["partition-id"] for node, ctx in grid.contexts.items()}
    trained = [
        [pid[m.metadata.dst_node_id] for m in grid.sent if m.metadata.message_type == "train"][
            2 * r : 2 * r + 2
        ]
        for r in range(3)
    ]
    assert trained == expected
    with open_run(tmp_path / "f.h5") as run:
        assert run.file["records/clients"][()].tolist() == expected


def test_failed_clients_are_left_out_and_marked(digits, tmp_path, capsys):
    """Round 0: client 1 answers with an error; round 1: client 2 never answers. Each round
    averages the clients that answered, the run completes, /clients/failed says who failed."""

    def fail(msg, client):
        if msg.metadata.message_type != "train":
            return None
        r = int(msg.content["config"]["round"])
        return {(0, 1): "error", (1, 2): "drop"}.get((r, client))

    class Globals(Hook):
        def on_round_end(self, event):
            models.append(event.global_params.clone())

    models: list[torch.Tensor] = []
    cfg = small_config(train__clients=3, train__rounds=2, train__local_steps=2)
    strategy = DriftscopeStrategy(cfg, tmp_path / "f.h5", dataset=digits, hooks=[Globals()])
    models.append(strategy.x.clone())
    strategy.start(LocalGrid(client_app, 3, fail=fail))
    with open_run(tmp_path / "f.h5") as run:
        assert run.status == "complete"
        assert run.file["clients/failed"][()].tolist() == [[0, 1, 0], [0, 0, 1]]
        g = run.gram("features.0.weight")
        assert np.isnan(g[0, 1]).all() and np.isnan(g[0, :, 1]).all()
        assert np.isfinite(g[0][np.ix_([0, 2], [0, 2])]).all()
        assert np.isnan(g[1, 2]).all() and np.isfinite(g[1][:2, :2]).all()
        # each round's new model = old + the mean of the answered clients' updates (FedAvg)
        for r, answered in [(0, [0, 2]), (1, [0, 1])]:
            for name in run.file["records/updates"]:
                u = run.updates(name, r).reshape(3, -1)
                expected = _param(models[r], strategy, name) + u[answered].mean(axis=0)
                got = _param(models[r + 1], strategy, name)
                np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert main(["analyze", str(tmp_path / "f.h5")]) == 0  # NaN rows do not break the analysis


def _param(flat: torch.Tensor, strategy: DriftscopeStrategy, name: str) -> np.ndarray:
    p = strategy.layout.param(name)
    return flat[p.offset : p.offset + p.numel].numpy()


def test_a_diverging_client_stops_the_run_as_inprocess(digits, tmp_path):
    cfg = small_config(train__clients=3, train__rounds=2, train__lr=1e6, train__local_steps=5)
    strategy = DriftscopeStrategy(cfg, tmp_path / "f.h5", dataset=digits)
    with pytest.raises(DivergenceError):
        strategy.start(LocalGrid(client_app, 3))
    # it diverged in round 0: as in-process, a run with no committed round leaves no file
    assert list(tmp_path.iterdir()) == []


def test_nodes_without_distinct_partition_ids_are_a_one_line_error(digits):
    cfg = small_config(train__clients=3, train__rounds=1)
    strategy = DriftscopeStrategy(cfg, None, dataset=digits)
    dup = LocalGrid(client_app, 3, node_config=lambda i: {"partition-id": min(i, 1)})
    with pytest.raises(FlowerRunError, match="two SuperNodes say partition-id=1"):
        strategy.start(dup)
    strategy = DriftscopeStrategy(cfg, None, dataset=digits)
    none = LocalGrid(client_app, 3, node_config=lambda i: {})
    with pytest.raises(FlowerRunError, match="no SuperNode holds partition-id 0"):
        strategy.start(none)
    strategy = DriftscopeStrategy(cfg, None, dataset=digits, node_wait_s=0.1)
    with pytest.raises(FlowerRunError, match="only 2 of 3 SuperNodes connected"):
        strategy.start(LocalGrid(client_app, 2))


def test_the_strategy_warns_about_momentum_with_control_variates(digits):
    from driftscope.errors import SettingsWarning

    cfg = small_config(train__clients=3, train__algorithm="scaffold", train__momentum=0.5)
    with pytest.warns(SettingsWarning, match="momentum 0.5 with SCAFFOLD") as record:
        DriftscopeStrategy(cfg, None, dataset=digits)
    assert record[0].filename == __file__


def test_fedpvr_auto_is_refused_with_one_line(digits):
    """Its clients would not learn the server's choice of layers (the run would silently differ
    from in-process after the warm-up), so the strategy refuses it."""
    from driftscope.errors import ConfigError

    cfg = small_config(train__clients=3, train__algorithm="fedpvr_auto")
    with pytest.raises(ConfigError, match="fedpvr_auto is not available on the Flower engine"):
        DriftscopeStrategy(cfg, None, dataset=digits)


def test_flwr_missing_is_a_one_line_error_naming_the_extra(monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "flwr" else real(name, *a)
    )
    with pytest.raises(FlowerMissingError, match=r"pip install 'driftscope\[flower\]'"):
        require_flwr()
    code = main(["run", "--engine", "flower", "--rounds", "1", "--out", str(tmp_path / "r.h5")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "driftscope[flower]" in err


def test_supernodes_must_match_clients(capsys, tmp_path):
    code = main(
        [
            "run",
            "--engine",
            "flower",
            "--clients",
            "3",
            "--supernodes",
            "2",
            "--out",
            str(tmp_path / "r.h5"),
        ]
    )
    assert code == 2
    assert "--supernodes equal to --clients" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- wrapper
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def plain_fedavg_app(returned: dict) -> ClientApp:
    """A plain Flower app (no driftscope in it): 3 SGD steps on the node's own random data."""
    app = ClientApp()

    @app.train()
    def fit(msg, context):
        model = tiny_model()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        pid = int(context.node_config["partition-id"])
        gen = torch.Generator().manual_seed(pid)
        x, y = torch.randn(32, 4, generator=gen) + pid, torch.randint(0, 3, (32,), generator=gen)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        arrays = ArrayRecord(model.state_dict())
        r = int(msg.content["config"]["server-round"])
        returned[(r, pid)] = {k: v.numpy().copy() for k, v in arrays.items()}
        metrics = MetricRecord({"num-examples": 32 + 16 * pid, "train_loss": float(loss.detach())})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg, context):
        metrics = MetricRecord({"num-examples": 10, "eval_loss": 1.5, "eval_acc": 0.25})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def _fedavg() -> FedAvg:
    return FedAvg(min_available_nodes=3, min_train_nodes=3, min_evaluate_nodes=3)


def test_recording_a_plain_flower_fedavg(tmp_path, capsys):
    """The wrapped FedAvg computes what the bare one does; the run file's Grams equal those
    recomputed from the models the clients returned and the global arrays sent to them."""
    init = ArrayRecord(tiny_model().state_dict())
    bare_returned: dict = {}
    random.seed(0)  # Flower's FedAvg samples nodes with the global, unseeded random.sample
    bare = _fedavg().start(
        grid=LocalGrid(plain_fedavg_app(bare_returned), 3), initial_arrays=init, num_rounds=3
    )
    returned: dict = {}
    grid = LocalGrid(plain_fedavg_app(returned), 3)
    random.seed(0)
    wrapped = recording(
        _fedavg(),
        tmp_path / "fedavg.h5",
        model_factory=tiny_model,
        probe_inputs=torch.randn(16, 4, generator=torch.Generator().manual_seed(1)),
    )
    result = wrapped.start(grid=grid, initial_arrays=init, num_rounds=3)
    for k, v in bare.arrays.items():
        np.testing.assert_array_equal(result.arrays[k].numpy(), v.numpy())

    # FedAvg reuses one ConfigRecord across rounds, so count rounds by message: 3 per round
    train_msgs = [m for m in grid.sent if m.metadata.message_type == "train"]
    sent = {
        i // 3 + 1: {k: a.numpy() for k, a in m.content["arrays"].items()}
        for i, m in enumerate(train_msgs)
    }
    pid = {node: ctx.node_config["partition-id"] for node, ctx in grid.contexts.items()}
    order = sorted(grid.node_ids)  # the wrapper numbers clients by sorted node id
    with open_run(tmp_path / "fedavg.h5") as run:
        assert run.status == "complete" and run.file.attrs["flower_strategy"] == "FedAvg"
        assert len(run.rounds) == 3
        clients = run.file["records/clients"][()]
        assert clients.tolist() == [[0, 1, 2]] * 3
        for r in range(3):
            for name in ("0.weight", "0.bias", "2.weight"):
                d = np.stack(
                    [
                        (returned[(r + 1, pid[order[c]])][name] - sent[r + 1][name])
                        .astype(np.float64)
                        .reshape(-1)
                        for c in clients[r]
                    ]
                )
                np.testing.assert_allclose(run.gram(name, r), d @ d.T, rtol=1e-9, atol=1e-15)
        # no evaluate_fn: no test metrics; the federated evaluation is its own, labelled series
        assert np.isnan(run.metrics.test_loss).all()
        np.testing.assert_array_equal(run.app_metrics("federated")["eval_loss"], [1.5] * 3)
        assert run.app_facts["client identity"].startswith("node id order")
        assert run.client_sizes.tolist() == [32 + 16 * pid[node] for node in order]
        assert not run.has_label_histogram
        cka = run.cka("0")
        assert cka.shape == (1, 4, 4) and np.allclose(np.diagonal(cka[0]), 1)
    assert main(["analyze", str(tmp_path / "fedavg.h5")]) == 0
    assert "fc1" in capsys.readouterr().out


def test_recording_without_a_model_names_layers_by_array_keys(tmp_path):
    wrapped = recording(_fedavg(), tmp_path / "f.h5")
    wrapped.start(
        grid=LocalGrid(plain_fedavg_app({}), 3),
        initial_arrays=ArrayRecord(tiny_model().state_dict()),
        num_rounds=2,
    )
    with open_run(tmp_path / "f.h5") as run:
        assert [layer.name for layer in run.layers] == ["0", "2"]
        assert [layer.group for layer in run.layers] == ["body", "head"]
        assert len(run.cka_rounds) == 0 and len(run.rounds) == 2


def test_the_flower_apps_run_config_is_a_driftscope_config(tmp_path):
    """driftscope/flower/app/pyproject.toml's run config, flattened as Flower does, with
    ``--run-config`` style overrides, is a valid RunConfig; Flower's own checker accepts the app."""
    import tomllib
    from pathlib import Path

    from flwr.cli.config_utils import load_and_validate
    from flwr.common.config import flatten_dict

    from driftscope.flower.server import config_from_run_config

    app = Path(__file__).resolve().parents[1] / "driftscope" / "flower" / "app" / "pyproject.toml"
    load_and_validate(app)  # raises on a malformed app (components must import)
    run_config = flatten_dict(tomllib.loads(app.read_text())["tool"]["flwr"]["app"]["config"])
    assert config_from_run_config(run_config) == RunConfig()  # the app's defaults are driftscope's
    run_config.update({"train.algorithm": "fedpvr", "train.rounds": 2, "seed": 3})
    cfg = config_from_run_config(run_config)
    assert (cfg.train.algorithm, cfg.train.rounds, cfg.seed) == ("fedpvr", 2, 3)
    # a config file keeps its values where the run config holds only the app's defaults
    (tmp_path / "c.toml").write_text("[train]\nrounds = 7\nlr = 0.1\n")
    run_config["config-file"] = str(tmp_path / "c.toml")
    cfg = config_from_run_config(run_config)
    assert (cfg.train.rounds, cfg.train.lr, cfg.train.algorithm) == (2, 0.1, "fedpvr")


def test_the_flower_engine_entry_point_is_the_one_pinned():
    """driftscope runs Flower's simulation engine through the function that flwr 1.42's
    deprecated ``run_simulation`` calls after its notice: it must still take these arguments."""
    import inspect

    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    params = inspect.signature(_run_simulation).parameters
    for name in ("num_supernodes", "exit_event", "client_app", "server_app", "backend_config"):
        assert name in params, name
    assert hasattr(EventType, "PYTHON_API_RUN_SIMULATION_LEAVE")


def test_a_head_that_matches_nothing_is_an_error_naming_the_arrays():
    from driftscope.flower.replies import layout_from_arrays

    arrays = ArrayRecord(tiny_model().state_dict())
    with pytest.raises(ValueError, match=r"head=\['fc\*'\] matches no array; the arrays are 0\."):
        layout_from_arrays(arrays, ["fc*"])
    assert [p.group for p in layout_from_arrays(arrays, ["2.*"]).params][-2:] == ["head"] * 2


def test_the_model_travels_as_one_array(digits, tmp_path):
    """driftscope's messages carry the model as one flat array: bit-exact, checked against the
    layout, and a fixed number of Flower objects however many parameters the model has (a
    deployment sends each object in a request of its own)."""
    from flwr.app import ConfigRecord
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    from driftscope.flower import wire

    strategy = DriftscopeStrategy(small_config(), tmp_path / "w.h5", dataset=digits)
    x, layout = strategy.x, strategy.layout
    record = wire.model_record(x)
    assert list(record.keys()) == [wire.MODEL]
    back = wire.record_model(record, layout)
    assert back.dtype == torch.float32 and torch.equal(back, x)  # bit for bit

    def objects(arrays: ArrayRecord) -> int:
        content = RecordDict({wire.ARRAYS: arrays, wire.CONFIG: ConfigRecord({"round": 0})})
        return len(get_all_nested_objects(content))  # the message's content, without the message

    per_parameter = objects(wire.flat_to_arrays(x, layout))
    assert len(layout.params) >= 4 and objects(record) < per_parameter - len(layout.params)
    with pytest.raises(KeyError, match="'x' is missing"):
        wire.record_model(ArrayRecord(), layout)
    with pytest.raises(ValueError, match=f"expected {layout.numel}"):
        wire.record_model(wire.model_record(x[:-1]), layout)
