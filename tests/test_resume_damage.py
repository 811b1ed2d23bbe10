"""Resuming a damaged run file: every damage is a one-line error before anything is written, and
the file is left exactly as it was (no temporary copy left beside it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import small_config

from driftscope import open_run, train
from driftscope.cli import main
from driftscope.engine.events import Hook
from driftscope.runfile import schema


class StopAt(Hook):
    """Ctrl-C at the start of a round."""

    def __init__(self, round: int) -> None:
        self.round = round

    def on_round_start(self, event):
        if event.round == self.round:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, digits) -> Path:
    """A run stopped after its first committed round: one that resumes when undamaged."""
    path = tmp_path_factory.mktemp("stopped") / "r.h5"
    cfg = small_config(
        train__rounds=2, train__clients=3, train__local_steps=1, record__probe_size=8
    )
    with pytest.raises(KeyboardInterrupt):
        train(cfg, path, dataset=digits, hooks=[StopAt(1)])
    with open_run(path) as run:
        assert run.status == "interrupted" and run.num_rounds == 1
    return path


def _attr(name: str, value):
    def damage(path: Path) -> None:
        with h5py.File(path, "r+") as f:
            f.attrs[name] = value

    return damage


def _delete(name: str):
    def damage(path: Path) -> None:
        with h5py.File(path, "r+") as f:
            del f[name if not callable(name) else name(f)]

    return damage


def _first_gram(f: h5py.File) -> str:
    return f"{schema.GRAM}/{next(iter(f[schema.GRAM]))}"


def _replace_metric(path: Path) -> None:
    """A metric dataset swapped for a contiguous one with the same values."""
    name = schema.metric_path("test_accuracy")
    with h5py.File(path, "r+") as f:
        values = f[name][()]
        del f[name]
        f.create_dataset(name, data=values)


def _truncate(fraction: float):
    def damage(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * (1 - fraction))])

    return damage


def _flip_metadata(path: Path) -> None:
    """One byte of the root group's object header (where the attribute names live) flipped."""
    data = bytearray(path.read_bytes())
    at = data.index(b"schema_version")
    data[at + 3] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGES = {
    "truncated by 10%": _truncate(0.1),
    "truncated by 0.1%": _truncate(0.001),
    "a metadata byte flipped": _flip_metadata,
    "status missing": _delete(schema.STATUS),
    "round marker missing": _delete(schema.METRICS_ROUND),
    "config not JSON": _attr(schema.ATTR_CONFIG, "{not json"),
    "config JSON but not a table": _attr(schema.ATTR_CONFIG, "[1, 2]"),
    "schema version a string": _attr(schema.ATTR_SCHEMA_VERSION, "two"),
    "writer pid a string": _attr(schema.WRITER_PID, "abc"),
    "writer start time a string": _attr(schema.WRITER_STARTED, "yesterday"),
    "a Gram dataset missing": _delete(_first_gram),
    "a metric dataset replaced": _replace_metric,
    "resume state missing": _delete(schema.STATE_ROUND),
}


@pytest.mark.parametrize("kind", sorted(DAMAGES))
def test_resume_of_a_damaged_file_is_refused_and_leaves_it_untouched(
    interrupted, tmp_path, capsys, kind
):
    path = tmp_path / "r.h5"
    shutil.copyfile(interrupted, path)
    DAMAGES[kind](path)
    before = path.read_bytes()
    assert main(["run", "--resume", str(path), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err, err
    assert any(w in err for w in ("start a new run", "check the file", "cannot be resumed")), err
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5"]


def test_an_undamaged_copy_resumes(interrupted, tmp_path, capsys):
    """The damages above are the only reason for refusing: the same file undamaged resumes."""
    path = tmp_path / "r.h5"
    shutil.copyfile(interrupted, path)
    assert main(["run", "--resume", str(path), "-q"]) == 0
    with open_run(path) as run:
        assert run.status == "complete" and run.num_rounds == 2
        assert json.loads(run.file.attrs["config"])["train"]["rounds"] == 2
        assert np.isfinite(run.metrics.test_accuracy).all()


FULL = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from driftscope.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_during_resume_leaves_the_run_and_no_copy(interrupted, tmp_path):
    """The resume copy hits the file size limit: one line, the run unchanged, no .resume file."""
    path = tmp_path / "r.h5"
    shutil.copyfile(interrupted, path)
    before = path.read_bytes()
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    code = FULL.format(limit=len(before) // 2)
    done = subprocess.run(
        [sys.executable, "-c", code, "run", "--resume", str(path), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "it is unchanged" in lines[0], done.stderr
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5"]
