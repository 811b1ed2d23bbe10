"""A small Message-API app of its own (examples/flower_app: its own CNN and data, a central
evaluate_fn, 4 SuperNodes) recorded through ``driftscope.flower.recording``: the run file says
what the app is, and nothing of driftscope's defaults.

The app runs on the in-process test grid (tests/flowergrid.py: real Flower Messages, no Ray); the
slow test runs it on Flower's simulation engine.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")

from flowergrid import LocalGrid

from driftscope.cli import main
from driftscope.errors import RunFileError
from driftscope.runfile.reader import open_run

APP = Path(__file__).resolve().parents[1] / "examples" / "flower_app"
DEFAULTS = ("digits", "small_cnn", "alpha=0.1", "lr 0.05", "fedavg on")


@pytest.fixture(scope="module")
def example():
    sys.path.insert(0, str(APP))
    try:
        from drift_example import client_app, server_app, task

        yield client_app, server_app, task
    finally:
        sys.path.remove(str(APP))


def test_the_recorded_app_is_the_app(example, tmp_path, capsys, monkeypatch):
    client_app, server_app, task = example
    grid = LocalGrid(client_app.app, 4, seed=3)
    out = tmp_path / "app.h5"
    result = server_app.run(grid, out, rounds=3)
    err = capsys.readouterr().err
    assert "head = the last layer: out.weight, out.bias" in err
    central = [result.evaluate_metrics_serverapp[r]["accuracy"] for r in (1, 2, 3)]
    pid_of = {node: ctx.node_config["partition-id"] for node, ctx in grid.contexts.items()}
    parts = [task.partition(i, 4, 0.5) for i in range(4)]
    with open_run(out) as run:
        assert run.status == "complete" and run.num_rounds == 3
        # the recorded accuracy is the app's central evaluation, round by round, exactly
        assert run.metrics.test_accuracy.tolist() == central
        assert run.app_metrics("central")["accuracy"].tolist() == central
        federated = run.app_metrics("federated")
        assert list(federated.columns) == ["eval_acc", "eval_loss"] and len(federated) == 3
        # the head: the model's last parameterised layer (TinyCNN declares none)
        assert [p.name for p in run.params if p.group == "head"] == ["out.weight", "out.bias"]
        # client i is the SuperNode with partition-id i; sizes and labels are the partitions'
        assert run.client_sizes.tolist() == [len(y) for _, y in parts]
        hist = run.label_histogram.to_numpy()
        for i, (_, y) in enumerate(parts):
            np.testing.assert_array_equal(hist[i], np.bincount(y.numpy(), minlength=4))
        node_ids = run.file["app/node_id"][()]
        assert node_ids.shape == (3, 4)
        assert [[pid_of[int(n)] for n in row] for row in node_ids] == [[0, 1, 2, 3]] * 3
        assert run.app_facts["client identity"] == "partition-id"
        assert run.app_strategy["class"] == "FedAvg"
        assert run.app_strategy["fraction_evaluate"] == 0.5
        # Flower's weighted train loss: the strategy's aggregate, weighted by num-examples
        train = [result.train_metrics_clientapp[r]["train_loss"] for r in (1, 2, 3)]
        np.testing.assert_allclose(run.metrics.train_loss, train, rtol=0, atol=0)
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "TinyCNN" in shown and "synthetic 8x8 patterns" in shown and "alpha=0.5" in shown
    assert main(["analyze", str(out)]) == 0
    shown += capsys.readouterr().out
    for default in DEFAULTS:
        assert default not in shown, default

    # an export carries the app's description, not the config's defaults
    from driftscope.export import live
    from driftscope.export.sinks import Sink

    kept: dict = {}

    class Kept(Sink):
        def hyperparameters(self, params, labels):
            kept.update(params)

    monkeypatch.setattr(live, "open_sink", lambda *a: Kept())
    assert live.export_run(out, "tensorboard", None, figures=False) == 3
    assert kept["app.model"] == "TinyCNN" and kept["strategy.class"] == "FedAvg"
    assert not any("digits" in str(v) for v in kept.values())


def test_an_existing_out_fails_before_the_first_round(example, tmp_path):
    client_app, server_app, _ = example
    out = tmp_path / "app.h5"
    out.write_bytes(b"an earlier run")
    grid = LocalGrid(client_app.app, 4)
    with pytest.raises(RunFileError, match=r"already exists: .*overwrite=True"):
        server_app.run(grid, out, rounds=1)
    assert grid.sent == [] and out.read_bytes() == b"an earlier run"


def test_a_relative_out_lands_in_the_callers_directory(example, tmp_path, monkeypatch, capsys):
    from flwr.serverapp.strategy import FedAvg

    from driftscope.flower import recording

    monkeypatch.chdir(tmp_path)
    wrapped = recording(FedAvg(), "runs/r.h5")
    assert wrapped.out == tmp_path / "runs" / "r.h5"
    assert str(tmp_path / "runs" / "r.h5") in capsys.readouterr().err
    assert wrapped.app == {"dataset": "unknown", "model": "unknown", "partition": "unknown"}


@pytest.mark.slow
def test_the_example_app_on_flowers_simulation_engine(example, tmp_path, capfd):
    """The same app on Flower's real simulation engine (Ray, 4 virtual SuperNodes with random
    node ids): client i is partition-id i, the accuracy is the app's central one, and Flower
    prints no DEPRECATED notice."""
    pytest.importorskip("ray")
    from flwr.serverapp import ServerApp

    from driftscope.flower.simulation import simulate_app

    client_app, server_app, task = example
    out, results = tmp_path / "sim.h5", []
    server = ServerApp()

    @server.main()
    def _main(grid, context):
        results.append(server_app.run(grid, out, rounds=2))

    simulate_app(server, client_app.app, 4)
    central = [results[0].evaluate_metrics_serverapp[r]["accuracy"] for r in (1, 2)]
    parts = [task.partition(i, 4, 0.5) for i in range(4)]
    with open_run(out) as run:
        assert run.status == "complete" and run.metrics.test_accuracy.tolist() == central
        assert run.client_sizes.tolist() == [len(y) for _, y in parts]
        hist = run.label_histogram.to_numpy()
        for i, (_, y) in enumerate(parts):
            np.testing.assert_array_equal(hist[i], np.bincount(y.numpy(), minlength=4))
    assert "DEPRECATED" not in "".join(capfd.readouterr())
