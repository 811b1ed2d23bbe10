"""The parts of a loopback deployment that run without daemons: the reply poll of driftscope's
ServerApp and the SuperNode's capped idle poll (the end-to-end run is
tests/test_flower_deployment.py, slow)."""

from __future__ import annotations

import inspect
import sys
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

    # the premise (flwr pinned to 1.42): the SuperNode sleeps through its module's `time`, 3 s
    # when idle and 0.5 s steps while waiting for its ClientApp's reply
    assert "time.sleep(3)" in inspect.getsource(loop.start_client_internal)
    assert "time.sleep(0.5)" in inspect.getsource(loop._push_messages)
    slept: list[float] = []
    monkeypatch.setattr("driftscope.flower.supernode.time.sleep", slept.append)
    capped = CappedSleep(0.25, 0.02)
    for seconds in (3, 1, 0.5, 0.01, 3, 3, 3, 3, 3, 3):
        capped.sleep(seconds)
    # idle: up to the cap; short waits: capped at 0.02 s, and the idle poll starts short after them
    assert slept[:4] == [0.25, 0.25, 0.02, 0.01]
    assert slept[4:] == pytest.approx([0.02, 0.03, 0.045, 0.0675, 0.10125, 0.151875])
    assert capped.monotonic is not None  # other names: the real module's
    monkeypatch.setattr(loop, "time", loop.time)  # restored after the test
    cap_idle_poll(0.1, 0.01)
    assert isinstance(loop.time, CappedSleep) and (loop.time.seconds, loop.time.local) == (
        0.1,
        0.01,
    )


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--idle-poll", "0"], "--idle-poll: must be a finite number of seconds > 0 (got 0)"),
        (["--local-poll", "soon"], "--local-poll: not a number of seconds: 'soon'"),
        (["--idle-poll", "inf"], "--idle-poll: must be a finite number of seconds > 0 (got inf)"),
    ],
)
def test_the_capped_supernode_refuses_a_bad_poll(argv, says, capsys):
    from driftscope.flower.supernode import main

    with pytest.raises(SystemExit) as err:
        main([*argv, "--", "--insecure"])
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].endswith(says) and "Traceback" not in "".join(lines)


def test_the_capped_supernode_passes_flowers_arguments_on(monkeypatch):
    import flwr.supernode.cli
    import flwr.supernode.start_client_internal as loop

    from driftscope.flower import supernode

    seen: list[list[str]] = []
    monkeypatch.setattr(flwr.supernode.cli, "flower_supernode", lambda: seen.append(sys.argv[:]))
    monkeypatch.setattr(loop, "time", loop.time)  # restored after the test
    monkeypatch.setattr(loop, "pull_objects", loop.pull_objects)
    monkeypatch.setattr(sys, "argv", sys.argv[:])
    supernode.main(
        ["--local-poll", "0.01", "--idle-poll", "0.5", "--", "--insecure", "--port", "7"]
    )
    assert seen == [["flower-supernode", "--insecure", "--port", "7"]]
    assert (loop.time.seconds, loop.time.local) == (0.5, 0.01)


def test_the_executor_polls_soon_after_a_task_then_less_often(monkeypatch):
    from driftscope.flower import executor as ex

    waits: list[float] = []
    monkeypatch.setattr(ex.time, "sleep", waits.append)
    tokens = iter(["t1", None, None, None, None, None, None, None, None, "t2", None])
    ran: list[str] = []
    e = ex.Executor.__new__(ex.Executor)
    e.poll_s = 0.1
    e.acquire = lambda: next(tokens)  # type: ignore[method-assign]
    e.run_task = ran.append  # type: ignore[method-assign]
    alive = iter([True] * 11 + [False])
    monkeypatch.setattr(ex, "_alive", lambda pid: next(alive))
    e.serve(parent_pid=1)
    assert ran == ["t1", "t2"]
    expected = [0.02 * 1.5**k for k in range(4)] + [0.1] * 4  # grows by 1.5 up to the poll
    assert waits[:8] == pytest.approx(expected) and waits[8] == pytest.approx(0.02)


def test_quick_object_retries_in_the_grid_and_the_supernode(monkeypatch):
    import functools

    import flwr.superlink.grid.http_grid as grid_module
    import flwr.supernode.start_client_internal as node_module
    from flwr.supercore.inflatable.inflatable_utils import pull_objects

    from driftscope.flower.polling import OBJECT_RETRY_S, quick_object_retries

    # the premise (flwr pinned to 1.42): both pull a message's objects through their module's
    # `pull_objects` name with Flower's default backoff
    assert "pull_objects(" in inspect.getsource(grid_module.HttpGrid.pull_messages)
    assert "pull_objects(" in inspect.getsource(node_module._pull_and_store_message)
    for module in (grid_module, node_module):
        monkeypatch.setattr(module, "pull_objects", pull_objects)  # restored after the test
        quick_object_retries(module)
        quick_object_retries(module)  # idempotent: not a partial of a partial
        quick = module.pull_objects
        assert isinstance(quick, functools.partial) and quick.func is pull_objects
        assert quick.keywords["initial_backoff"] == OBJECT_RETRY_S


def test_the_loopback_ports_are_distinct_and_outside_the_ephemeral_range():
    import importlib.util
    import socket
    from pathlib import Path

    import driftscope

    script = Path(driftscope.__file__).resolve().parent.parent / "scripts" / "flower_loopback.py"
    spec = importlib.util.spec_from_file_location("flower_loopback", script)
    assert spec is not None and spec.loader is not None
    loopback = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loopback)
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low = int(ephemeral.read_text().split()[0]) if ephemeral.exists() else 32768
    ports = loopback.free_ports(11)
    assert len(set(ports)) == 11
    if low > 20000 + 110:  # where the outgoing connections' ports start (Linux: 32768)
        assert all(20000 <= p < low for p in ports)
    for port in ports:  # each can still be bound once handed out
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_deployment_grid_polls_faster_and_other_grids_stay():
    from flwr.superlink.grid.http_grid import HttpGrid

    from driftscope.flower.polling import faster_deployment_grid

    deployment = HttpGrid.__new__(HttpGrid)  # the class flwr-serverapp gives a deployment
    wrapped = faster_deployment_grid(deployment)
    assert isinstance(wrapped, PollingGrid) and wrapped._grid is deployment
    other = SlowReplies()
    assert faster_deployment_grid(other) is other  # type: ignore[arg-type]


def test_the_recording_wrapper_hands_the_strategy_loop_a_polling_deployment_grid(
    monkeypatch, tmp_path
):
    from flwr.serverapp.strategy import FedAvg, Strategy
    from flwr.superlink.grid.http_grid import HttpGrid

    from driftscope.flower import recording

    seen = []
    monkeypatch.setattr(Strategy, "start", lambda self, grid, *a, **k: seen.append(grid))
    wrapped = recording(FedAvg(), out=tmp_path / "r.h5")
    wrapped.start(HttpGrid.__new__(HttpGrid), initial_arrays=None, num_rounds=1)  # type: ignore[arg-type]
    assert len(seen) == 1 and isinstance(seen[0], PollingGrid)
