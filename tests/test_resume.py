"""Resume: a run stopped or killed at any round and resumed ends in the same state,
bit for bit, as the run left alone: metrics, recordings (Grams, updates, CKA) and the saved state
(global model, control variates)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import small_config

import driftscope
from driftscope import open_run, train
from driftscope.engine.events import Hook
from driftscope.engine.training import resume
from driftscope.errors import RunFileError
from driftscope.runfile import schema

ROOT = Path(driftscope.__file__).resolve().parent.parent
IGNORED_DATASETS = {schema.metric_path("seconds")}
IGNORED_ATTRS = {
    "created",
    "environment",
    schema.WRITER_PID,
    schema.WRITER_STARTED,
    schema.RESUMED_FROM,
}

SMALL = dict(train__rounds=4, train__clients=4, train__local_steps=3, record__probe_size=16)
CONFIGS = {
    "fedavg": SMALL,
    "fedpvr": dict(SMALL, train__algorithm="fedpvr", train__client_fraction=0.5),
    # layers chosen after round 0, chosen again after round 2: state and algorithm/ rows resume
    "fedpvr_auto": dict(
        SMALL,
        train__algorithm="fedpvr_auto",
        train__client_fraction=0.5,
        train__params__warmup_rounds=1,
        train__params__rechoose_every=2,
    ),
}


def contents(path: Path) -> dict[str, object]:
    """Every dataset and root attribute that must not depend on where a run was stopped."""
    out: dict[str, object] = {}
    with h5py.File(path, "r") as f:
        for key, value in f.attrs.items():
            if key not in IGNORED_ATTRS:
                out[f"@{key}"] = value

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset) and name not in IGNORED_DATASETS:
                out[name] = obj[()]

        f.visititems(visit)
    return out


def assert_same_run(got: Path, want: Path) -> None:
    a, b = contents(got), contents(want)
    assert sorted(a) == sorted(b)
    for key in a:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        assert x.shape == y.shape and x.dtype == y.dtype, key
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, digits):
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            path = tmp_path_factory.mktemp("whole") / f"{name}.h5"
            train(small_config(**CONFIGS[name]), path, dataset=digits)
            cache[name] = path
        return cache[name]

    return get


class StopAt(Hook):
    """Ctrl-C at the start of a round."""

    def __init__(self, round: int) -> None:
        self.round = round

    def on_round_start(self, event):
        if event.round == self.round:
            raise KeyboardInterrupt


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_interrupted_run_resumes_to_the_same_state(tmp_path, digits, uninterrupted, name):
    path = tmp_path / "r.h5"
    with pytest.raises(KeyboardInterrupt):
        train(small_config(**CONFIGS[name]), path, dataset=digits, hooks=[StopAt(2)])
    with open_run(path) as run:
        assert run.status == "interrupted" and run.num_rounds == 2
    resume(path, dataset=digits)
    with open_run(path) as run:
        assert run.status == "complete" and run.num_rounds == 4
    with h5py.File(path, "r") as f:
        assert list(f.attrs[schema.RESUMED_FROM]) == [2]
    assert_same_run(path, uninterrupted(name))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_failed_commit_resumes_to_the_same_state(
    tmp_path, digits, uninterrupted, monkeypatch, name
):
    """A round whose records, metrics rows and state were written but whose commit marker was not
    (an error inside the commit): resume cuts those rows and uses the previous state slot."""
    from driftscope.runfile.writer import RunWriter

    mark = RunWriter._mark

    def failing(self, round):
        if round == 2:
            raise OSError("disk on fire")
        mark(self, round)

    path = tmp_path / "r.h5"
    monkeypatch.setattr(RunWriter, "_mark", failing)
    with pytest.raises(OSError, match="disk on fire"):
        train(small_config(**CONFIGS[name]), path, dataset=digits)
    monkeypatch.setattr(RunWriter, "_mark", mark)
    with h5py.File(path, "r") as f:  # the uncommitted round's rows are there
        assert f[schema.metric_path("test_accuracy")].shape == (3,)
        assert f[schema.RECORD_ROUND][-1] == 2 and f[schema.STATUS][()] == b"failed"
    resume(path, dataset=digits)
    assert_same_run(path, uninterrupted(name))


KILLER = """
import json, os, signal, sys
import torch
torch.set_num_threads(1)
from driftscope import RunConfig, train
from driftscope.engine.events import Hook
from driftscope.runfile.state_slots import StateSlots
from driftscope.runfile.writer import RunWriter

cfg = RunConfig.from_dict(json.loads(sys.argv[1]))
where, at = sys.argv[3], int(sys.argv[4])

def die():
    os.kill(os.getpid(), signal.SIGKILL)

class MidRound(Hook):  # after the round's first client
    def on_client_end(self, event):
        if event.round == at:
            die()

write_state, mark = StateSlots.write, RunWriter._mark

def half_state(self, round, state):  # the first array of the round's state slot, then death
    if round == at:
        name = next(iter(state))
        write_state(self, round, {name: state[name] * 0 + 7})
        self.file.flush()  # the worst case: HDF5 may write any of this before the kill
        die()
    write_state(self, round, state)

def before_marker(self, round):  # records, metrics and state written, commit marker not
    if round == at:
        self.file.flush()
        die()
    mark(self, round)

if where == "state":
    StateSlots.write = half_state
if where == "marker":
    RunWriter._mark = before_marker
train(cfg, sys.argv[2], hooks=[MidRound()] if where == "client" else [])
"""


def run_python(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    ("name", "where", "at", "cli"),
    [
        ("fedavg", "client", 1, True),
        ("fedavg", "marker", 1, False),
        ("fedpvr", "marker", 2, False),
        ("fedpvr", "state", 3, False),
    ],
)
def test_killed_run_resumes_to_the_same_state(
    tmp_path, digits, uninterrupted, name, where, at, cli
):
    """SIGKILL in the middle of a round, after a round's records and state but before its commit
    marker, or in the middle of writing the state; then `driftscope run --resume` (or resume())."""
    path = tmp_path / "r.h5"
    cfg = small_config(**CONFIGS[name])
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    done = run_python([str(script), cfg.to_json(), str(path), where, str(at)])
    assert done.returncode == -9, done.stderr
    with open_run(path) as run:
        assert run.status == "running" and run.num_rounds == at
    if cli:
        done = run_python(["-m", "driftscope", "run", "--resume", str(path), "-q"])
        assert done.returncode == 0, done.stderr
    else:
        resume(path, dataset=digits)
    with open_run(path) as run:
        assert run.status == "complete" and run.num_rounds == 4
    assert_same_run(path, uninterrupted(name))


def test_run_killed_before_its_first_commit_leaves_nothing_in_the_way(tmp_path, digits):
    """SIGKILL before round 0's commit marker: the run never reached its path (only a hidden
    temporary file is left), so the same command again needs no --overwrite, and removes it."""
    path = tmp_path / "r.h5"
    cfg = small_config(**CONFIGS["fedavg"])
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    done = run_python([str(script), cfg.to_json(), str(path), "marker", "0"])
    assert done.returncode == -9, done.stderr
    assert not path.exists()
    assert [p.name for p in tmp_path.glob(".r.h5.*.tmp")] != []
    train(cfg, path, dataset=digits)
    assert list(tmp_path.glob(".r.h5.*")) == []
    with open_run(path) as run:
        assert run.status == "complete" and run.num_rounds == 4


def test_resume_refuses_what_it_cannot_continue(tmp_path, digits, uninterrupted):
    complete = uninterrupted("fedavg")
    with pytest.raises(RunFileError, match="complete"):
        resume(complete, dataset=digits)

    path = tmp_path / "r.h5"
    cfg = small_config(**CONFIGS["fedavg"])
    with pytest.raises(KeyboardInterrupt):
        train(cfg, path, dataset=digits, hooks=[StopAt(1)])
    with pytest.raises(RunFileError, match=r"train\.lr = 0\.05, not 0\.1"):
        train(cfg.replace({"train.lr": 0.1}), path, dataset=digits, resume=True)

    newer = tmp_path / "newer.h5"
    newer.write_bytes(path.read_bytes())
    with h5py.File(newer, "r+") as f:
        f.attrs["schema_version"] = schema.SCHEMA_VERSION + 1
    with pytest.raises(RunFileError, match="newer"):
        resume(newer, dataset=digits)

    with pytest.raises(RunFileError, match="does not exist"):
        resume(tmp_path / "missing.h5", dataset=digits)
    # nothing above touched the interrupted run: it still resumes
    with open_run(path) as run:
        assert run.status == "interrupted" and run.num_rounds == 1


def test_cli_resume_checks_flags_against_the_run(tmp_path, digits):
    path = tmp_path / "r.h5"
    with pytest.raises(KeyboardInterrupt):
        train(small_config(**dict(SMALL, train__rounds=2)), path, dataset=digits, hooks=[StopAt(1)])
    done = run_python(["-m", "driftscope", "run", "--resume", str(path), "--lr", "0.2"])
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.lr" in lines[0], done.stderr
    with open_run(path) as run:
        assert run.status == "interrupted" and json.loads(run.file.attrs["config"])


def test_resume_refuses_a_run_that_is_still_being_written(tmp_path):
    import time

    from driftscope.runfile.resume import resume_config

    path = tmp_path / "r.h5"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "driftscope", "run", "--out", str(path), "--rounds", "500", "-q"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with open_run(path) as run:
                    if run.num_rounds >= 1:
                        break
            except RunFileError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        with pytest.raises(RunFileError, match=f"being written by process {proc.pid}"):
            resume_config(path)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert json.loads(resume_config(path))["train"]["rounds"] == 500  # dead now: resumable
