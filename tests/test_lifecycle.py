"""The one run lifecycle every engine shares: status mapping, dispatch, traffic, means, close."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from driftscope.engine.events import Hook, RunStarted
from driftscope.engine.lifecycle import (
    Hooks,
    Lifecycle,
    reported_mean,
    round_ended,
    run_ended,
    traffic,
)
from driftscope.engine.signals import Terminated
from driftscope.errors import DivergenceError

PACKAGE = Path(__file__).resolve().parent.parent / "driftscope"


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (None, "complete", ""),
        (DivergenceError("nan at round 3"), "diverged", "nan at round 3"),
        (KeyboardInterrupt(), "interrupted", "stopped by the user"),
        (Terminated(), "interrupted", "stopped by SIGTERM"),
        (ValueError("bad"), "failed", "ValueError: bad"),
    ],
)
def test_how_a_run_ended_maps_to_one_status(error, status, message):
    ended = run_ended(error)
    assert (ended.status, ended.message) == (status, message)


def test_hooks_get_every_event_in_order():
    seen = []

    class Named(Hook):
        def __init__(self, name):
            self.name = name

        def on_round_start(self, event):
            seen.append((self.name, event))

    Hooks([Named("a"), Named("b")]).on_round_start("e")
    assert seen == [("a", "e"), ("b", "e")]


def test_traffic_counts_downlink_per_sent_and_uplink_per_answer():
    assert traffic((10, 3), sent=5, answered=4) == (50, 12)


def test_reported_mean_leaves_out_unreported_values_only():
    assert reported_mean([1.0, math.nan, 3.0]) == 2.0
    assert math.isnan(reported_mean([math.nan]))
    assert reported_mean([1.0, math.inf]) == math.inf  # a divergent value is not hidden


def test_round_ended_carries_failed_clients_and_the_traffic():
    event = round_ended(
        round=2,
        clients=[0, 3],
        test=(math.nan, math.nan),
        losses={0: 1.0},
        accuracies={0: 0.5},
        per_client_bytes=(8, 4),
        answered=1,
        started=0.0,
        global_params=torch.zeros(2),
        control_norms={},
        failed={3: "no reply"},
    )
    assert dict(event.failed) == {3: "no reply"} and event.clients == (0, 3)
    assert (event.downlink_bytes, event.uplink_bytes) == (16, 4)
    assert event.train_loss == 1.0


def test_the_lifecycle_ends_once_with_the_blocks_outcome():
    ends = []

    class Ends(Hook):
        def on_run_end(self, event):
            ends.append(event.status)

    life = Lifecycle([Ends()])
    started = RunStarted(None, None, 1, 1, np.zeros((1, 1)), "inprocess")  # type: ignore[arg-type]
    with pytest.raises(DivergenceError), life.running(started):
        raise DivergenceError("x")
    life.end(None)  # a second end is a no-op
    assert ends == ["diverged"]


def test_nothing_under_flower_imports_the_in_process_engine():
    for path in (PACKAGE / "flower").rglob("*.py"):
        text = path.read_text()
        assert "driftscope.engine.inprocess" not in text and "SimpleNamespace" not in text, (
            path.name
        )
