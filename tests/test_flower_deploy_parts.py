"""The parts of a loopback deployment that run without daemons: the reply poll of driftscope's
ServerApp and the SuperNode's capped idle poll (the end-to-end run is
tests/test_flower_deployment.py, slow)."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest

pytest.importorskip("flwr")

from driftscope.flower.polling import PollingGrid
from driftscope.flower.supernode import CappedSleep, cap_idle_poll


class SlowReplies:
    """A grid whose replies arrive over several pulls: none, then one, then the rest."""

    def __init__(self) -> None:
        self.pulls = 0

    def push_messages(self, messages):
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids):
        self.pulls += 1
        ready = {1: [], 2: ["m0"]}.get(self.pulls, sorted(ids))
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in ready]

    def get_node_ids(self):
        return [7, 8, 9]


def test_polling_grid_collects_every_reply_and_delegates():
    inner = SlowReplies()
    grid = PollingGrid(inner, poll_s=0.001)  # type: ignore[arg-type]
    replies = grid.send_and_receive([object()] * 3, timeout=60)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    assert inner.pulls == 3 and list(grid.get_node_ids()) == [7, 8, 9]


def test_polling_grid_stops_at_the_timeout_with_what_came():
    inner = SlowReplies()
    inner.pull_messages = lambda ids: []  # nobody answers
    assert list(PollingGrid(inner, poll_s=0.001).send_and_receive([object()], timeout=0.01)) == []  # type: ignore[arg-type]


def test_the_capped_supernode_sleep(monkeypatch):
    import flwr.supernode.start_client_internal as loop

    # the premise (flwr pinned to 1.42): the SuperNode loop sleeps through its module's `time`
    source = inspect.getsource(loop.start_client_internal)
    assert "time.sleep(3)" in source
    slept: list[float] = []
    monkeypatch.setattr("driftscope.flower.supernode.time.sleep", slept.append)
    capped = CappedSleep(0.5)
    capped.sleep(3)
    capped.sleep(0.1)
    assert slept == [0.5, 0.1] and capped.monotonic is not None  # other names: the real module
    monkeypatch.setattr(loop, "time", loop.time)  # restored after the test
    cap_idle_poll(0.25)
    assert isinstance(loop.time, CappedSleep) and loop.time.seconds == 0.25
