"""Ctrl-C and SIGTERM (what SLURM sends) end a run alike: one line on stderr and no traceback,
status "interrupted", a valid file with every committed round; exit 130 for Ctrl-C (SIGINT) and
143 for SIGTERM (128 + the signal number, the shell's convention)."""

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

ROOT = Path(driftscope.__file__).resolve().parent.parent


def committed_rounds(path: Path) -> int:
    try:
        with open_run(path) as run:
            return run.num_rounds
    except RunFileError:  # not created yet, or not yet open for readers
        return 0


@pytest.mark.parametrize(
    ("signum", "code", "then"),
    [
        (signal.SIGINT, 130, None),
        (signal.SIGTERM, 143, None),
        # a second signal while the first one closes the run file: waits for it, no traceback
        (signal.SIGTERM, 143, signal.SIGINT),
        (signal.SIGINT, 130, signal.SIGTERM),
    ],
)
def test_signal_stops_a_run_cleanly(tmp_path, signum, code, then):
    path = tmp_path / "r.h5"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "driftscope", "run", "--out", str(path), "--rounds", "500", "-q"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while committed_rounds(path) < 1:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "no round committed within 120 s"
            time.sleep(0.2)
        proc.send_signal(signum)
        if then is not None:
            time.sleep(0.05)
            proc.send_signal(then)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert ("terminated" if signum == signal.SIGTERM else "interrupted") in lines[0]
    with open_run(path) as run:
        assert run.status == "interrupted"
        assert run.num_rounds >= 1 and len(run.metrics) == run.num_rounds
        name = signal.Signals(signum).name
        assert run.status_message == (
            "stopped by SIGTERM" if name == "SIGTERM" else "stopped by the user"
        )
