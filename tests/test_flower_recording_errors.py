"""A recorded Flower app: live loggers show what the app declared, a recording error fails the
ServerApp, and head/body views refuse a run with an empty head. On the in-process test grid
(tests/flowergrid.py: real Flower Messages, no Ray)."""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from flowergrid import LocalGrid
from flwr.app import ArrayRecord, Context, RecordDict
from test_flower import _fedavg, plain_fedavg_app, tiny_model

from driftscope.analysis.evidence import head_vs_body
from driftscope.cli import main
from driftscope.errors import ConfigError, RunFileError
from driftscope.export import LiveLogger
from driftscope.export.live import shown_config
from driftscope.export.rounds import hyperparameters
from driftscope.export.sinks import Sink
from driftscope.flower import recording
from driftscope.runfile.reader import open_run

APP = Path(__file__).resolve().parents[1] / "examples" / "flower_app"


class KeptSink(Sink):
    """A backend that keeps what it is given."""

    def __init__(self) -> None:
        self.params: dict = {}
        self.rounds: list = []

    def hyperparameters(self, params, labels) -> None:
        self.params = dict(params)

    def round(self, rec) -> None:
        self.rounds.append(rec)


def test_a_live_logger_shows_what_the_app_declared(tmp_path):
    out = tmp_path / "app.h5"
    logger = LiveLogger(f"tensorboard={tmp_path / 'tb'}", out)
    logger.sink = sink = KeptSink()
    wrapped = recording(
        _fedavg(),
        out,
        dataset="blobs",
        model="TinyMLP",
        describe={"lr": 0.1, "local-steps": 3},
        model_factory=tiny_model,
        hooks=[logger],
    )
    wrapped.start(
        grid=LocalGrid(plain_fedavg_app({}), 3),
        initial_arrays=ArrayRecord(tiny_model().state_dict()),
        num_rounds=2,
    )
    params = sink.params
    assert params["app.dataset"] == "blobs" and params["app.model"] == "TinyMLP"
    assert params["app.lr"] == 0.1 and params["app.local-steps"] == 3
    assert params["app.partition"] == "unknown"  # not named: unknown, not a default
    assert params["strategy.class"] == "FedAvg"
    # none of driftscope's data, model or training defaults
    assert not [k for k in params if k.split(".")[0] in ("data", "model", "train", "seed")]
    assert len(sink.rounds) == 2
    with open_run(out) as run:  # the same as an export of the finished file logs
        import json

        app = {"app": run.app, "strategy": run.app_strategy}
        assert params == hyperparameters(shown_config(json.loads(run.config.to_json()), app))


@pytest.fixture
def example():
    sys.path.insert(0, str(APP))
    try:
        from drift_example import client_app, server_app

        yield client_app, server_app
    finally:
        sys.path.remove(str(APP))


def test_a_recording_error_fails_the_server_app(example, tmp_path, monkeypatch):
    """The output becomes unwritable at round 2: the example's ServerApp raises (Flower's
    flwr-serverapp then exits with SERVERAPP_EXCEPTION and marks the run failed) and the run file
    says failed, with round 1 kept."""
    from driftscope.runfile.writer import RunWriter

    client_app, server_app = example
    commit = RunWriter._commit

    def full_disk(self, event, *args):
        if int(event.round) >= 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return commit(self, event, *args)

    monkeypatch.setattr(RunWriter, "_commit", full_disk)
    out = tmp_path / "app.h5"
    context = Context(
        run_id=1,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config={
            "out": str(out),
            "num-server-rounds": 3,
            "alpha": 0.5,
            "lr": 0.1,
            "overwrite": False,
        },
    )
    with pytest.raises(RunFileError, match="no space left on the device"):
        server_app.app(LocalGrid(client_app.app, 4, seed=3), context)
    with open_run(out) as run:
        assert run.status == "failed" and run.num_rounds == 1


def test_head_views_refuse_an_empty_head(make_run, capsys):
    path = make_run("nohead", model__head_last_k=0, train__rounds=2)
    with open_run(path) as run:
        assert all(layer.group == "body" for layer in run.layers)
        with pytest.raises(ConfigError) as err:
            head_vs_body(run)
    msg = str(err.value)
    assert "\n" not in msg and "empty head" in msg and "head_prefixes" in msg
    # analyze shows the table and says why there is no comparison, instead of failing
    assert main(["analyze", str(path)]) == 0
    assert "no head/body comparison" in capsys.readouterr().out


def test_head_views_refuse_a_run_that_is_all_head(make_run, capsys):
    path = make_run("allhead", model__head=["*"], train__rounds=2)
    with open_run(path) as run, pytest.raises(ConfigError, match="empty body"):
        head_vs_body(run)
    assert main(["analyze", str(path)]) == 0
    assert "every layer of this run is in the head" in capsys.readouterr().out
