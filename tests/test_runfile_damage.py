"""Property-based: a run file damaged in random ways reads correctly or fails with one
DriftscopeError; never another exception, never a hang.

A worker subprocess reads each damaged copy (every public reader call and the inspect report,
item by item) and answers within a timeout, so a hang fails the test instead of stalling it.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent(
    """
    import hashlib, json, sys, traceback
    import numpy as np
    from driftscope import open_run
    from driftscope.errors import DriftscopeError
    from driftscope.experiments.report import format_inspect

    def digest(value):
        if hasattr(value, "to_numpy"):
            value = value.to_numpy()
        arr = np.ascontiguousarray(np.asarray(value))
        return hashlib.sha1(arr.tobytes() + str(arr.dtype).encode()).hexdigest()

    def read(path):
        items = {}
        with open_run(path) as run:
            calls = {"metrics": lambda: run.metrics, "status": lambda: run.status,
                     "inspect": lambda: len(format_inspect(run)) > 0,
                     "client_metrics": lambda: run.client_metrics,
                     "rounds": lambda: run.rounds, "layout": lambda: repr(run.layout)}
            try:
                layers = [ly.name for ly in run.layers]
            except DriftscopeError:
                layers = []
            for name in layers:
                calls[f"gram {name}"] = lambda n=name: run.gram(n)
                calls[f"cka {name}"] = lambda n=name: run.cka(n)
                calls[f"updates {name}"] = lambda n=name: run.updates(n)
            for key, call in calls.items():
                try:
                    value = call()
                    items[key] = value if isinstance(value, (str, bool)) else digest(value)
                except DriftscopeError as err:
                    assert "\\n" not in str(err), str(err)
                    items[key] = "ERR"
        return items

    for line in sys.stdin:
        try:
            answer = {"items": read(line.strip())}
        except DriftscopeError as err:
            answer = {"error": str(err)}
        except BaseException:
            answer = {"bad": traceback.format_exc()}
        print(json.dumps(answer), flush=True)
    """
)


class Worker:
    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def read(self, path: Path, timeout: float = 60) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.proc.kill()
            pytest.fail(f"reading {path} hung for {timeout} s")
        line = self.proc.stdout.readline()
        assert line, "the reader process died"
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


@pytest.fixture(scope="module")
def base(make_run, tmp_path_factory):
    path = tmp_path_factory.mktemp("damage") / "base.h5"
    shutil.copy(make_run(), path)
    with h5py.File(path, "r") as f:
        datasets: list[str] = []
        f.visititems(lambda n, o: datasets.append(n) if isinstance(o, h5py.Dataset) else None)
    return path, datasets


def damage(path: Path, datasets: list[str], data: st.DataObject) -> str:
    kind = data.draw(st.sampled_from(["truncate", "flip", "delete", "dtype", "shape", "nonfinite"]))
    size = path.stat().st_size
    if kind == "truncate":
        keep = data.draw(st.integers(0, size - 1))
        with open(path, "r+b") as fh:
            fh.truncate(keep)
        return kind
    if kind == "flip":
        with open(path, "r+b") as fh:
            for _ in range(data.draw(st.integers(1, 8))):
                offset = data.draw(st.integers(0, size - 1))
                fh.seek(offset)
                byte = fh.read(1)
                fh.seek(offset)
                fh.write(bytes([byte[0] ^ data.draw(st.integers(1, 255))]))
        return kind
    name = data.draw(st.sampled_from(datasets))
    with h5py.File(path, "r+") as f:
        old = f[name]
        value = old[()]
        if kind == "delete":
            del f[name]
        elif kind == "dtype":
            del f[name]
            f[name] = np.asarray(value).astype("S8") if np.asarray(value).size else b"x"
        elif kind == "shape":
            del f[name]
            f[name] = np.zeros(data.draw(st.sampled_from([(), (1,), (2, 3), (1, 2, 3, 4)])))
        elif kind == "nonfinite" and np.asarray(value).dtype.kind == "f" and np.size(value):
            bad = np.array(value, copy=True)
            bad.flat[data.draw(st.integers(0, bad.size - 1))] = data.draw(
                st.sampled_from([np.nan, np.inf, -np.inf])
            )
            old[()] = bad
    return f"{kind} {name}"


@settings(
    max_examples=int(os.environ.get("DRIFTSCOPE_DAMAGE_EXAMPLES", "25")),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_damaged_run_files_read_correctly_or_fail_cleanly(base, worker, tmp_path, data):
    path, datasets = base
    original = worker.read(path)["items"]
    copy = tmp_path / "damaged.h5"
    shutil.copy(path, copy)
    what = damage(copy, datasets, data)
    answer = worker.read(copy)
    assert "bad" not in answer, f"{what}: {answer.get('bad')}"
    if "error" in answer:
        assert "\n" not in answer["error"]
        return
    if what in ("truncate", "flip"):  # silent damage would read as different numbers
        for key, value in answer["items"].items():
            if value != "ERR" and key != "status":
                assert value == original.get(key), f"{what}: {key} read silently wrong"
