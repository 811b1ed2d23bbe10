"""Ctrl-C and SIGTERM on ``driftscope run --engine flower`` end the run as in-process: one line on
stderr, exit 130 / 143, the run file readable with status "interrupted" and every committed round.

Flower's engine runs the ServerApp (which writes the file) in a thread and Ray in other
processes; a stop used to leave the process waiting forever on threads blocked on a Ray that was
shut down (Ctrl-C), or Ray's own SIGTERM handler aborted it (exit -6). Slow: each case starts
Flower's simulation engine (20-60 s on 2 cores).

Ctrl-C is sent as a terminal sends it, to the whole process group (Ray's processes get it too);
SIGTERM to the driftscope process alone, as ``kill PID`` does. The time limits below bound a hang
(the fixed process waits at most a few seconds), they do not measure speed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import driftscope
from driftscope import open_run
from driftscope.errors import RunFileError

pytest.importorskip("flwr")
pytest.importorskip("ray")

ROOT = Path(driftscope.__file__).resolve().parent.parent
EXIT_WITHIN_S = 45  # a stopped run exits in seconds; a hang is what this catches


def committed_rounds(path: Path) -> int:
    try:
        with open_run(path) as run:
            return run.num_rounds
    except RunFileError:  # not created yet, or not yet open for readers
        return 0


def start(path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "driftscope", "run", "--engine", "flower", "--clients", "2"]
    cmd += ["--rounds", "500", "--out", str(path), "-q"]
    # its own process group: Ctrl-C reaches it and Ray's processes, not pytest
    return subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)


def stop(proc: subprocess.Popen, signum: int, group: bool) -> str:
    """Send ``signum`` (to the process group: as Ctrl-C does); its stderr once it exited."""
    (os.killpg if group else os.kill)(proc.pid, signum)
    try:
        _, err = proc.communicate(timeout=EXIT_WITHIN_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"still running {EXIT_WITHIN_S} s after {signal.Signals(signum).name}")
    return err


def check_one_line(err: str, signum: int) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert ("terminated" if signum == signal.SIGTERM else "interrupted") in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code", "group", "message"),
    [
        (signal.SIGINT, 130, True, "stopped by the user"),  # Ctrl-C in a terminal
        (signal.SIGTERM, 143, False, "stopped by SIGTERM"),  # kill PID, a scheduler
    ],
)
def test_flower_run_stops_mid_run(tmp_path, signum, code, group, message):
    path = tmp_path / "r.h5"
    proc = start(path)
    try:
        deadline = time.monotonic() + 240
        while committed_rounds(path) < 1:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "no round committed within 240 s"
            time.sleep(0.3)
        err = stop(proc, signum, group)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == code, err
    check_one_line(err, signum)
    with open_run(path) as run:
        assert run.status == "interrupted" and run.status_message == message
        assert run.num_rounds >= 1 and len(run.metrics) == run.num_rounds


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_flower_run_stops_at_start_up(tmp_path):
    """Ctrl-C while Flower's engine is starting Ray (the command has started Ray's first
    process, no round has run): exit 130 in one line; no run file, as a run that committed no
    round leaves nothing behind."""
    path = tmp_path / "r.h5"
    proc = start(path)
    try:
        deadline = time.monotonic() + 240
        while not children(proc.pid):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "Ray did not start within 240 s"
            time.sleep(0.1)
        err = stop(proc, signal.SIGINT, group=True)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    check_one_line(err, signal.SIGINT)
    if path.exists():  # a round committed before the signal arrived (a fast machine)
        with open_run(path) as run:
            assert run.status == "interrupted"


def test_flower_actor_exit_is_not_shown():
    """Flower's engine ends each ClientApp actor with a WARNING that Ray forwards to the user's
    terminal (a stop gives it time to): the ClientApp's module drops that record, only that."""
    import logging

    import driftscope.flower.client  # noqa: F401 (installs the filter, as in a Ray actor)

    logger = logging.getLogger("flwr")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        logger.log(logging.WARNING, "Manually terminating %s", "ClientAppActor")
        logger.log(logging.WARNING, "something else %s", "ClientAppActor")
    finally:
        logger.removeHandler(handler)
    assert seen == ["something else ClientAppActor"]
