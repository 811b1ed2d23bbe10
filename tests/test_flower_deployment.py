"""A real Flower deployment on loopback through scripts/flower_loopback.py: one SuperLink, two
SuperNodes, ``flwr run`` of the driftscope app (driftscope/flower/app), 2 rounds of FedPVR; the run
file equals ``driftscope.train`` with the same config. Slow (each round starts a fresh ClientApp
process per node: 20-60 s per round on 2 cores); CI runs it.

The script starts every daemon in its own process group on 127.0.0.1 ports picked free, waits for
the SuperLink's port and the nodes' activation, and stops the daemons by PID; every wait is bounded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")

from driftscope import RunConfig, open_run, train
from driftscope.cli import main

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "flower_loopback.py"
RUN_S = 900  # start-up and the two rounds


@pytest.mark.slow
def test_loopback_deployment_runs_fedpvr_and_matches_inprocess(tmp_path, digits):
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
        f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in overrides.items()
    )
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--nodes", "2", "--out", str(out),
         "--run-config", run_config, "--workdir", str(tmp_path / "flwr")],
        capture_output=True, text=True, timeout=RUN_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "daemons up in" in done.stdout
    logs = tmp_path / "flwr"
    assert (logs / "superlink.log").exists() and (logs / "supernode1.log").exists()

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
