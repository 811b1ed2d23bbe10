"""A real Flower deployment on loopback: one SuperLink, two SuperNodes, ``flwr run`` of the
driftscope app (driftscope/flower/app), 2 rounds of FedPVR. Slow (each round starts a fresh
ClientApp process per node: 20-60 s per round on 2 cores); CI runs it.

Every daemon is started by this test in its own process group, on 127.0.0.1 ports picked free,
and killed in ``finally``; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")

from driftscope import RunConfig, open_run, train
from driftscope.cli import main

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "driftscope" / "flower" / "app"
BIN = Path(sys.executable).parent
START_S = 60  # SuperLink and SuperNodes up
SUBMIT_S = 120  # flwr run returns once the run is submitted
RUN_S = 420  # the two rounds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def stop(proc: subprocess.Popen) -> None:
    """End the daemon and what it spawned (its process group), politely then firmly."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
    with contextlib.suppress(ProcessLookupError):  # children left in the group
        os.killpg(proc.pid, signal.SIGKILL)


def wait_for(predicate, seconds: float, what: str, procs=()) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(
                    f"{p.args[0]} exited ({p.returncode}) while waiting for {what}"
                )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(1)


def run_status(path: Path) -> str | None:
    if not path.exists():
        return None
    try:
        with open_run(path) as run:
            return run.status
    except Exception:  # being created
        return None


@pytest.mark.slow
def test_loopback_deployment_runs_fedpvr_and_matches_inprocess(tmp_path, digits):
    link, nodes = free_port(), [free_port(), free_port()]
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "loop"\n\n[superlink.loop]\n'
        f'address = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
        FLWR_HOME=str(home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        OMP_NUM_THREADS="1",
    )
    out = tmp_path / "deployment.h5"
    # the app's run config (driftscope/flower/app/pyproject.toml) with these dotted overrides
    overrides = {
        "train.algorithm": "fedpvr",
        "train.clients": 2,
        "train.rounds": 2,
        "train.local_epochs": 1,
        "record.probe_size": 16,
        "record.cka_every": 1,
        "record.updates_every": 1,
    }
    cfg = RunConfig().replace(overrides)
    run_config = " ".join(
        [f"out='{out}'"]
        + [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in overrides.items()]
    )
    daemons: list[subprocess.Popen] = []
    try:
        daemons.append(
            start(
                [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1",
                 "--port", str(link), "--database", ":flwr-in-memory:"],
                tmp_path / "superlink.log",
                env,
            )
        )  # fmt: skip
        for i, port in enumerate(nodes):
            daemons.append(
                start(
                    [str(BIN / "flower-supernode"), "--insecure",
                     "--superlink", f"127.0.0.1:{link}", "--host", "127.0.0.1", "--port", str(port),
                     "--node-config", f"partition-id={i} num-partitions=2"],
                    tmp_path / f"supernode{i}.log",
                    env,
                )
            )  # fmt: skip
        log = tmp_path / "superlink.log"
        wait_for(
            lambda: log.read_text().count("Activated node_id") >= 2,
            START_S,
            "two SuperNodes to connect",
            daemons,
        )
        submit = subprocess.run(
            [str(BIN / "flwr"), "run", str(APP), "loop", "--run-config", run_config],
            env=env,
            capture_output=True,
            text=True,
            timeout=SUBMIT_S,
        )
        assert submit.returncode == 0, submit.stdout + submit.stderr
        wait_for(lambda: run_status(out) not in (None, "running"), RUN_S, "the 2 rounds", daemons)
    finally:
        for proc in reversed(daemons):
            stop(proc)
    assert all(p.poll() is not None for p in daemons)

    train(cfg, tmp_path / "in.h5", dataset=digits)
    with open_run(out) as b, open_run(tmp_path / "in.h5") as a:
        assert b.status == "complete", b.status_message
        assert b.file.attrs["engine"] == "flower" and len(b.rounds) == 2
        assert (b.file["clients/failed"][()] == 0).all()
        for p in a.file["model/param_name"][()]:
            name = p.decode()
            ga, gb = a.gram(name), b.gram(name)
            np.testing.assert_allclose(gb, ga, rtol=1e-5, atol=1e-6 * np.abs(ga).max())
        np.testing.assert_allclose(b.metrics.test_accuracy, a.metrics.test_accuracy)
    assert main(["analyze", str(out)]) == 0
