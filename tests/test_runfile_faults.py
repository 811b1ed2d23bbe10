"""The run file under faults: locks, overwrite, killed writers, damaged files, full disks.

Every test that could hang runs its work in a subprocess with a timeout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from driftscope import open_run
from driftscope.errors import DriftscopeError, RunFileError
from driftscope.models.layout import ModelLayout, ParamInfo
from driftscope.runfile import schema
from driftscope.runfile.writer import RunWriter

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "driftscope", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        cwd=ROOT,
    )


def py(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("driftscope: error")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


# ------------------------------------------------------------------------------- small writer
LAYOUT = ModelLayout(
    (ParamInfo("w", "fc", "body", (2, 3), 0), ParamInfo("b", "fc", "head", (2,), 6)),
    (),
)


class Event:
    """Duck-typed RoundEnded: what RunWriter.commit reads."""

    def __init__(self, round: int) -> None:
        self.round = round
        self.clients = (0, 1)
        self.test_loss = self.train_loss = 1.0 / (round + 1)
        self.test_accuracy = self.train_accuracy = 0.5
        self.downlink_bytes = self.uplink_bytes = 32
        self.seconds = 0.1
        self.client_train_loss = {0: 1.0, 1: 2.0}
        self.client_train_accuracy = {0: 0.5, 1: 0.25}


def write_small(path: Path, rounds: int = 3, overwrite: bool = False) -> None:
    from driftscope.models.layout import LayerInfo

    layout = ModelLayout(LAYOUT.params, (LayerInfo("fc", "fc1", "Linear", "mixed", ("w", "b"), 8),))
    w = RunWriter.create(
        path,
        config={"seed": 0},
        layout=layout,
        label_histogram=np.array([[3, 1], [0, 4]]),
        overwrite=overwrite,
        engine="test",
    )
    w.declare_state({"global": (8,), "steps": ((), np.int64)})
    w.start_swmr()
    for r in range(rounds):
        w.commit(Event(r), {"global": np.full(8, r, np.float32), "steps": r * 10})
    w.close("complete")


def test_reader_does_not_import_torch():
    proc = py(
        """
        import sys, driftscope.runfile.reader, driftscope.models.layout, driftscope.runfile.schema, driftscope.experiments.report
        assert 'torch' not in sys.modules, 'torch imported'
        import driftscope
        assert callable(driftscope.open_run) and 'torch' not in sys.modules
        """
    )
    assert proc.returncode == 0, proc.stderr


def test_writer_api_and_double_buffered_state(tmp_path):
    path = tmp_path / "small.h5"
    write_small(path)
    assert not schema.lock_path(path).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["small.h5"]  # no temp, no lock left
    with open_run(path) as run:
        assert run.engine == "test" and run.status == "complete" and not run.live
        assert run.schema_version == schema.SCHEMA_VERSION
        assert run.writer["pid"] == os.getpid()
        assert run.num_rounds == 3 and list(run.metrics["round"]) == [0, 1, 2]
        assert run.layout.params == LAYOUT.params
        assert run.layout.layer("fc1").params == ("w", "b")
        assert list(run.client_sizes) == [4, 4]
        assert run.client_metrics["train_loss"].tolist() == [1.0, 2.0] * 3
        rnd, state = run.resume_state()
        assert rnd == 2 and state["global"].tolist() == [2.0] * 8 and int(state["steps"]) == 20
    with h5py.File(path, "r") as f:
        assert list(f[schema.STATE_ROUND][()]) == [2, 1]  # round r in slot r % 2
        assert f[schema.METRICS_ROUND].fletcher32


def test_reads_schema_1_fixtures_like_raw_h5py():
    """The reader's answers on the old files equal a plain h5py read of the same datasets."""
    from driftscope.config import RunConfig

    for path in sorted(FIXTURES.glob("v1_*.h5")):
        with h5py.File(path, "r") as f, open_run(path) as run:
            assert run.schema_version == 1 and run.engine == "inprocess"
            assert run.config == RunConfig.from_dict(json.loads(f.attrs["config"]))
            assert run.config.train.clients == 3 and run.config.train.rounds == 2
            names = [v.decode() for v in f["model/param_name"][()]]
            assert [p.name for p in run.params] == names
            assert [p.offset for p in run.params] == list(f["model/param_offset"][()])
            assert [p.numel for p in run.params] == list(f["model/param_numel"][()])
            assert run.layout.numel == f["model"].attrs["numel"]
            assert run.layout.head_numel == f["model"].attrs["head_numel"]
            np.testing.assert_array_equal(run.metrics["round"], f["metrics/round"][()])
            np.testing.assert_array_equal(run.metrics["test_loss"], f["metrics/test_loss"][()])
            np.testing.assert_array_equal(run.client_sizes, f["partition/client_size"][()])
            np.testing.assert_array_equal(run.probe_index, f["records/probe_index"][()])
            for p in names:
                np.testing.assert_array_equal(run.gram(p), f[f"records/gram/{p}"][()])
            for p in ("classifier.4.weight", "classifier.4.bias"):
                raw = f[f"records/updates/{p}"][()]
                np.testing.assert_array_equal(run.updates(p).reshape(raw.shape), raw)
            for layer in run.layers:
                np.testing.assert_array_equal(
                    run.cka(layer.name, "rbf"), f[f"records/cka/rbf/{layer.name}"][()]
                )
            assert run.records_policy == {k: int(v) for k, v in f["records"].attrs.items()}
            assert run.clients_per_round == 3 and run.resume_state() is None


# ------------------------------------------------------------------------------- lock, overwrite
def test_second_writer_is_refused_and_first_is_intact(tmp_path):
    path = tmp_path / "run.h5"
    first = RunWriter.create(
        path, config={}, layout=LAYOUT, label_histogram=np.ones((2, 2), np.int64)
    )
    first.start_swmr()
    with pytest.raises(RunFileError, match=r"being written by .* pid \d+"):
        RunWriter.create(
            path, config={}, layout=LAYOUT, label_histogram=np.ones((2, 2)), overwrite=True
        )
    first.commit(Event(0))
    first.close("complete")
    with open_run(path) as run:
        assert run.num_rounds == 1 and run.status == "complete"


def test_second_cli_run_on_same_out_is_refused(tmp_path):
    """A live `driftscope run` holds its --out: a second one (even with --overwrite) is refused."""
    path = tmp_path / "run.h5"
    hold = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, numpy as np; sys.path.insert(0, sys.argv[2]);"
            "from tests.test_runfile_faults import LAYOUT, Event;"
            "from driftscope.runfile.writer import RunWriter;"
            "w = RunWriter.create(sys.argv[1], config={}, layout=LAYOUT,"
            " label_histogram=np.ones((2, 2)));"
            "w.start_swmr(); print('ready', flush=True); sys.stdin.readline();"
            "w.commit(Event(0)); print('committed', flush=True); sys.stdin.read(); w.close()",
            str(path),
            str(ROOT),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=ROOT,
    )
    try:
        assert hold.stdout.readline().strip() == "ready"
        # before its first commit the run is not at its path yet, but the path is taken
        assert not path.exists()
        line = one_line_error(cli("run", "--rounds", "1", "--out", str(path), "--overwrite"))
        assert "being written by" in line
        hold.stdin.write("commit\n")
        hold.stdin.flush()
        assert hold.stdout.readline().strip() == "committed"
        line = one_line_error(cli("run", "--rounds", "1", "--out", str(path), "--overwrite"))
        assert "being written by" in line
        with open_run(path) as run:
            assert run.live and run.status == "running" and run.num_rounds == 1
    finally:
        hold.communicate("", timeout=60)
    with open_run(path) as run:
        assert run.status == "complete" and not run.live


def test_bad_input_keeps_old_run_and_leaves_no_stub(tmp_path, make_run, digits):
    from conftest import small_config

    from driftscope import train

    old = tmp_path / "old.h5"
    shutil.copy(make_run(), old)
    before = old.read_bytes()
    bad = small_config(record__update_layers=["nomatch.*"])
    with pytest.raises(DriftscopeError, match="match no parameter"):
        train(bad, old, overwrite=True, dataset=digits)
    assert old.read_bytes() == before
    new = tmp_path / "new.h5"
    with pytest.raises(DriftscopeError, match="match no parameter"):
        train(bad, new, dataset=digits)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.h5"]  # no stub, temp or lock


def test_overwrite_by_a_run_that_fails_in_round_0_keeps_the_old_run(tmp_path, make_run):
    """The new run replaces the old one only when its first round commits: a run that fails
    before (an overflowing learning rate here) leaves the old run byte for byte."""
    old = tmp_path / "old.h5"
    shutil.copy(make_run(), old)
    before = old.read_bytes()
    proc = cli(
        *("run", "--rounds", "2", "--clients", "3", "--lr", "1e308", "-q"),
        *("--out", str(old), "--overwrite"),
    )
    assert proc.returncode != 0
    assert old.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.h5"]  # no temp or lock left


def test_overwrite_keeps_a_reader_of_the_old_file_working(tmp_path, make_run):
    path = tmp_path / "run.h5"
    shutil.copy(make_run(), path)
    with open_run(path) as old:
        write_small(path, rounds=2, overwrite=True)
        assert old.num_rounds == 3 and old.gram("fc1").shape == (3, 10, 10)  # still the old run
    with open_run(path) as run:
        assert run.num_rounds == 2 and run.engine == "test"


# ------------------------------------------------------------------------------- killed writer
KILLED = """
import os, sys, numpy as np
sys.path.insert(0, {root!r})
from tests.test_runfile_faults import LAYOUT, Event
from driftscope.runfile.writer import RunWriter
w = RunWriter.create({path!r}, config={{}}, layout=LAYOUT, label_histogram=np.ones((2, 2)))
w.start_swmr()
for r in range(3):
    w.commit(Event(r))
os.kill(os.getpid(), 9)
"""


def test_killed_writer_is_seen_as_stopped_and_truncated_copy_fails_fast(tmp_path):
    path = tmp_path / "killed.h5"
    proc = py(KILLED.format(root=str(ROOT), path=str(path)))
    assert proc.returncode == -9
    with open_run(path) as run:
        assert run.status == "running" and not run.live
        assert run.num_rounds == 3
        assert "writer not alive" in run.status_text
    inspect = cli("inspect", str(path), timeout=60)
    assert inspect.returncode == 0 and "writer not alive" in inspect.stdout, inspect.stderr
    truncated = tmp_path / "truncated.h5"
    data = path.read_bytes()
    truncated.write_bytes(data[: len(data) * 2 // 3])
    for command in ("inspect", "analyze"):
        line = one_line_error(cli(command, str(truncated), timeout=60))
        assert "truncated" in line or "damaged" in line


def test_damaged_metadata_fails_fast_with_one_line(tmp_path):
    path = tmp_path / "killed.h5"
    py(KILLED.format(root=str(ROOT), path=str(path)))
    data = bytearray(path.read_bytes())
    for offset in range(48, 4096, 61):  # object headers and B-trees near the start of the file
        data[offset] ^= 0xFF
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(bytes(data))
    for command in ("inspect", "analyze"):
        one_line_error(cli(command, str(damaged), timeout=60))  # a hang would time out


def test_flipped_data_byte_is_a_checksum_error(tmp_path, make_run):
    path = tmp_path / "flipped.h5"
    shutil.copy(make_run(), path)
    name = schema.gram_path("classifier.4.weight")
    with h5py.File(path, "r") as f:
        info = f[name].id.get_chunk_info(0)
        offset = info.byte_offset + info.size // 2
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x10]))
    with open_run(path) as run:
        run.gram("classifier.0.weight")  # other datasets still read
        with pytest.raises(RunFileError, match=r"records/gram/classifier\.4\.weight is damaged"):
            run.gram("fc3")


# ------------------------------------------------------------------------------- damaged files
@pytest.mark.parametrize("part", [schema.METRICS_ROUND, schema.GRAM, schema.param_field("name")])
def test_missing_parts_are_named_and_the_rest_shown(tmp_path, part):
    path = tmp_path / "damaged.h5"
    shutil.copy(FIXTURES / "v1_fedavg.h5", path)
    with h5py.File(path, "r+") as f:
        del f[part]
    with open_run(path) as run:  # opening works; the missing part is named where it is needed
        assert run.status == "complete"
        assert any(m.startswith(part) for m in run.missing())
    inspect = cli("inspect", str(path), timeout=60)
    assert inspect.returncode == 0, inspect.stderr
    assert "MISSING" in inspect.stdout and part in inspect.stdout
    assert "status: complete" in inspect.stdout
    analyze = cli("analyze", str(path), timeout=60)
    assert "Traceback" not in analyze.stderr and part in analyze.stderr + analyze.stdout
    assert "v1_fedavg" not in analyze.stderr  # names the file it was given
    figures = cli("figures", str(path), "--out", str(tmp_path / "figs"), timeout=120)
    assert "Traceback" not in figures.stderr


def test_analyze_says_why_a_no_record_run_has_no_drift(make_run):
    out = cli("analyze", str(make_run("norecord", record__enabled=False)))
    assert out.returncode == 0, out.stderr
    assert "--no-record" in out.stdout and "NaN" not in out.stdout


def test_inspect_shows_group_totals_not_a_first_dataset(make_run):
    out = cli("inspect", str(make_run()))
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if "records/updates" in ln)
    assert "records/updates/*" in line and "14 datasets" in line and "in all" in line
    assert "more" not in out.stdout


# ------------------------------------------------------------------------------- output paths
def test_unwritable_outputs_are_one_line_errors(tmp_path, make_run):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    run = str(tmp_path / "run.h5")
    shutil.copy(make_run(), run)
    cases = [
        ("run", "--rounds", "1", "--out", str(blocker / "x.h5")),
        ("run", "--rounds", "1", "--out", str(tmp_path)),
        ("run", "--rounds", "1", "--out", run),
        ("analyze", run, "--csv", str(blocker / "x.csv")),
        ("analyze", run, "--csv", str(tmp_path)),
        ("figures", run, "--out", str(blocker)),
        ("figures", run, "--out", str(blocker / "sub")),
    ]
    for args in cases:
        line = one_line_error(cli(*args))
        assert str(tmp_path) in line, (args, line)
    assert blocker.read_text() == "x"


# ------------------------------------------------------------------------------- disk full
FULL = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from driftscope.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_full_disk_is_one_line_and_leaves_a_failed_readable_file(tmp_path):
    path = tmp_path / "full.h5"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            FULL.format(limit=6_000_000),
            "run",
            "--rounds",
            "50",
            "--local-epochs",
            "1",
            "--quiet",
            "--out",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
        cwd=ROOT,
    )
    line = one_line_error(proc)
    assert "file size limit" in line and "too few for another round" in line, line
    with open_run(path) as run:
        assert run.status == "failed" and run.num_rounds >= 1
        assert "too few for another round" in run.status_message
        assert len(run.metrics) == run.num_rounds


def test_write_error_mid_round_is_one_line_and_a_clean_exit(tmp_path):
    """A limit hit inside the first round (no room check can foresee it): one line, exit 2, no
    traceback storm and no segfault from HDF5 retrying its unwritable metadata."""
    path = tmp_path / "full.h5"
    args = ["run", "--rounds", "5", "--quiet", "--local-epochs", "1", "--out", str(path)]
    proc = subprocess.run(
        [sys.executable, "-c", FULL.format(limit=2_000_000), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
        cwd=ROOT,
    )
    line = one_line_error(proc)
    assert "file size limit" in line
    assert "HDF5-DIAG" not in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert not schema.lock_path(path).exists()


def test_full_disk_on_a_small_filesystem(tmp_path):
    """A real ENOSPC: a 6 MB tmpfs (needs root and mount; skipped where that is not allowed)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True
    )
    if mount.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        path = mnt / "full.h5"
        args = ["run", "--rounds", "50", "--local-epochs", "1", "--quiet", "--out", str(path)]
        line = one_line_error(cli(*args, timeout=300))
        assert "disk leaves" in line and "too few for another round" in line, line
        with open_run(path) as run:
            assert run.status == "failed" and run.num_rounds >= 1
            assert len(run.metrics) == run.num_rounds
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=60)


@pytest.mark.parametrize(
    "read",
    [
        lambda run: run.metrics,
        lambda run: run.num_rounds,
        lambda run: run.gram("classifier.4.weight"),
        lambda run: run.label_histogram,
        lambda run: run.recorded,
    ],
)
def test_reading_a_closed_run_says_it_is_closed(make_run, read):
    """Not "damaged" or "recording was off": the file is fine, the handle was closed."""
    run = open_run(make_run())
    run.close()
    with pytest.raises(RunFileError, match=r"is closed: read it before close\(\)"):
        read(run)
    assert repr(run).endswith(": closed>")


@pytest.mark.parametrize(
    ("pid", "started"), [("abc", 1.0), (7, "yesterday"), (b"12", b"now"), (1.5, None)]
)
def test_inspect_shows_a_run_whose_writer_attributes_are_damaged(tmp_path, make_run, pid, started):
    path = tmp_path / "r.h5"
    shutil.copyfile(make_run(), path)
    with h5py.File(path, "r+") as f:
        f.attrs[schema.WRITER_PID] = pid
        if started is not None:
            f.attrs[schema.WRITER_STARTED] = started
    done = cli("inspect", str(path))
    assert done.returncode == 0 and done.stderr == "", done.stderr
    with open_run(path) as run:
        writer = run.writer
    assert writer["pid"] == (pid if isinstance(pid, int) else None)
    if started is not None:
        assert writer["started"] == (started if isinstance(started, float) else None)


def _set_attr_config(f: h5py.File) -> None:
    config = json.loads(f.attrs[schema.ATTR_CONFIG])
    config["train"]["lr"] = 0.5  # valid JSON, a valid config: only the checksum can tell
    f.attrs[schema.ATTR_CONFIG] = json.dumps(config, sort_keys=True)


def _bump(name: str):
    def damage(f: h5py.File) -> None:
        values = f[name][()]
        values.flat[0] += 1
        f[name][...] = values

    return damage


@pytest.mark.parametrize(
    ("damage", "read", "needle"),
    [
        (_set_attr_config, lambda run: run.config, "config is damaged (CRC-32 mismatch)"),
        (
            _bump(schema.LABEL_HISTOGRAM),
            lambda run: run.label_histogram,
            f"{schema.LABEL_HISTOGRAM} is damaged (CRC-32 mismatch)",
        ),
        (
            _bump(schema.CLIENT_SIZE),
            lambda run: (
                run.client_sizes if hasattr(run, "client_sizes") else run._read(schema.CLIENT_SIZE)
            ),
            f"{schema.CLIENT_SIZE} is damaged (CRC-32 mismatch)",
        ),
    ],
)
def test_changed_static_parts_are_detected(tmp_path, make_run, damage, read, needle):
    """The config attribute and the small static datasets have no HDF5 chunk checksum: a CRC-32
    stored with them (static_crc32) tells a changed value from the written one."""
    path = tmp_path / "r.h5"
    shutil.copyfile(make_run(), path)
    with h5py.File(path, "r+") as f:
        damage(f)
    with open_run(path) as run, pytest.raises(RunFileError, match=re.escape(needle)):
        read(run)
    with open_run(make_run()) as run:  # the undamaged original reads
        read(run)


def test_a_shortened_metric_is_damage_not_missing_values(tmp_path, make_run):
    """A metric dataset with fewer rows than the commit marker: an error naming it, not NaN."""
    path = tmp_path / "r.h5"
    shutil.copyfile(make_run(), path)
    name = schema.metric_path("test_accuracy")
    with h5py.File(path, "r+") as f:
        f[name].resize(f[name].shape[0] - 1, axis=0)
    with open_run(path) as run, pytest.raises(RunFileError, match=f"{name} has .* rows for"):
        _ = run.metrics


@pytest.mark.parametrize("missing", [0.001, 0.5])
def test_a_truncated_file_is_named_truncated(tmp_path, make_run, missing):
    data = make_run().read_bytes()
    path = tmp_path / "r.h5"
    path.write_bytes(data[: int(len(data) * (1 - missing))])
    with pytest.raises(RunFileError, match=r"r\.h5 is truncated \([\d,]+ of [\d,]+ bytes\)"):
        open_run(path)
