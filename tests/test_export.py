"""driftscope export and the live loggers: every exported scalar is read back with the backend's own
reader (TensorBoard's EventAccumulator, MLflow's client, the W&B offline run's records) and equals
the value ``driftscope analyze --csv`` writes for the same round and layer."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftscope.cli import main
from driftscope.config import RunConfig
from driftscope.data import load_dataset
from driftscope.engine.events import Hook
from driftscope.engine.training import train
from driftscope.errors import RunFileError
from driftscope.export import LiveLogger, export_run
from driftscope.export.live import LoggerWarning
from driftscope.export.live_rounds import CommittedRounds
from driftscope.export.rounds import round_exports, scalar_name
from driftscope.export.sinks import Sink
from driftscope.metrics import METRICS
from driftscope.runfile.read_rows import Rows
from driftscope.runfile.reader import open_run

pytest.importorskip("tensorboard")

CFG = RunConfig().replace(
    {
        "train.rounds": 3,
        "train.clients": 4,
        "train.local_epochs": 1,
        "record.cka_every": 2,  # CKA in rounds 0 and 2, not 1
        "record.probe_size": 16,
    }
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, digits) -> tuple[Path, pd.DataFrame]:
    """A 3-round run and its analyze --csv table."""
    d = tmp_path_factory.mktemp("export")
    run = train(CFG, d / "run.h5", dataset=digits)
    assert main(["analyze", str(run), "--csv", str(d / "table.csv")]) == 0
    return run, pd.read_csv(d / "table.csv")


def expected_scalars(table: pd.DataFrame) -> dict[tuple[str, int], float]:
    """(exported name, round) -> value of every finite row of analyze --csv."""
    out = {}
    for r, layer, metric, value in table[["round", "layer", "metric", "value"]].values:
        if np.isfinite(value):
            out[(scalar_name(metric, layer), int(r))] = float(value)
    return out


def tensorboard_scalars(logdir: Path) -> tuple[dict[tuple[str, int], float], object]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    acc.Reload()
    got = {}
    for tag in acc.Tags()["scalars"]:
        for ev in acc.Scalars(tag):
            got[(tag, ev.step)] = ev.value
    return got, acc


def check_tensorboard(logdir: Path, run_path: Path, table: pd.DataFrame, la: bool) -> None:
    got, acc = tensorboard_scalars(logdir)
    want = expected_scalars(table)
    if not la:  # the live logger skips label alignment (a permutation test per layer and round)
        want = {k: v for k, v in want.items() if "/label_alignment" not in k[0]}
    assert want, "the run has drift rows"
    for key, value in want.items():
        # TensorBoard stores scalars as float32: the csv value rounded to float32, exactly
        assert got[key] == float(np.float32(value)), key
    # nothing per layer beyond the csv rows
    per_layer = {k for k in got if k[0].startswith(("drift/", "cka/"))}
    assert per_layer == set(want)
    with open_run(run_path) as run:
        m = run.metrics
        for _, row in m.iterrows():
            r = int(row["round"])
            assert got[("test/accuracy", r)] == float(np.float32(row["test_accuracy"]))
            assert got[("train/loss", r)] == float(np.float32(row["train_loss"]))
            assert got[("traffic/uplink_bytes", r)] == float(np.float32(row["uplink_bytes"]))
        cm = run.client_metrics
        for r, c, loss in cm[["round", "client", "train_loss"]].values:
            assert got[(f"client_train_loss/{int(c)}", int(r))] == float(np.float32(loss))
        # head and body: a gram metric of the summed Grams of the group's layers
        rv = METRICS.get("relative_variance")
        for group in ("head", "body"):
            layers = [ly for ly in run.layers if ly.group == group]
            g = sum(run.gram(ly.name) for ly in layers)
            values = rv.function(g, sum(ly.numel for ly in layers), None)
            for r, v in zip(run.rounds, values):
                assert got[(f"drift_{group}/relative_variance", int(r))] == pytest.approx(
                    float(v), rel=1e-6
                )  # float32 storage
        hist = acc.Tags()["histograms"]
        assert {f"update_norm/{ly.name}" for ly in run.layers} <= set(hist)
        first = run.layers[0].name
        h = acc.Histograms(f"update_norm/{first}")
        assert [e.step for e in h] == [int(r) for r in run.rounds]
        norms = np.sqrt(np.diagonal(run.gram(first, round=int(run.rounds[0]))))
        assert h[0].histogram_value.num == len(norms)
        assert h[0].histogram_value.sum == pytest.approx(norms.sum(), rel=1e-6)


def test_tensorboard_export_equals_analyze_csv(finished, tmp_path: Path) -> None:
    run, table = finished
    assert export_run(run, "tensorboard", str(tmp_path)) == 3
    check_tensorboard(tmp_path / run.stem, run, table, la=True)
    _, acc = tensorboard_scalars(tmp_path / run.stem)
    images = acc.Tags()["images"]
    assert (
        "figures/accuracy_curves" in images and "figures/layer_profile_relative_variance" in images
    )
    assert any(t.startswith("driftscope/config") for t in acc.Tags()["tensors"])


def test_live_tensorboard_logger_equals_analyze_csv(digits, tmp_path: Path) -> None:
    out = tmp_path / "live.h5"
    logger = LiveLogger(f"tensorboard={tmp_path / 'tb'}", out)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LoggerWarning)
        train(CFG, out, dataset=digits, hooks=[logger])
    assert main(["analyze", str(out), "--csv", str(tmp_path / "t.csv")]) == 0
    check_tensorboard(tmp_path / "tb" / "live", out, pd.read_csv(tmp_path / "t.csv"), la=False)


def test_mlflow_export_equals_analyze_csv(finished, tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run, table = finished
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["export", str(run), "--to", "mlflow", uri, "--no-figures"]) == 0
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("driftscope")
    (mrun,) = client.search_runs([exp.experiment_id])
    assert mrun.info.run_name == run.stem and mrun.info.status == "FINISHED"
    want = expected_scalars(table)
    keys = {k for k, _ in want}
    assert keys <= set(mrun.data.metrics)
    for key in keys:
        hist = {m.step: m.value for m in client.get_metric_history(mrun.info.run_id, key)}
        for (k, r), value in want.items():
            if k == key:
                assert hist[r] == value, (key, r)  # MLflow keeps float64: exact
    assert mrun.data.params["train.clients"] == "4"
    arts = {a.path for a in client.list_artifacts(mrun.info.run_id, "driftscope")}
    assert "driftscope/labels.json" in arts
    # artifacts next to the store, not in the working directory
    assert (tmp_path / "mlflow-artifacts").is_dir()
    assert not Path("mlruns").exists()


def wandb_history(run_dir: Path) -> tuple[dict[tuple[str, int], float], bool]:
    """The history rows of a W&B offline run file, and whether it holds the exit record (LevelDB-log records of wandb's protobuf
    Record): 7-byte header, 32 KiB blocks, each record a 7-byte header (crc, length, type)."""
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = glob.glob(str(run_dir / "run-*.wandb"))
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            pos += left - 7
            continue
        chunk, pos = data[pos : pos + length], pos + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            records.append(buf + chunk)
    out, ended = {}, False
    for raw in records:
        rec = pb.Record()
        rec.ParseFromString(raw)
        ended = ended or rec.WhichOneof("record_type") == "exit"
        if rec.WhichOneof("record_type") != "history":
            continue
        items = {it.key or "/".join(it.nested_key): it.value_json for it in rec.history.item}
        step = int(items["_step"])
        for key, value in items.items():
            v = json.loads(value)
            if isinstance(v, int | float):
                out[(key, step)] = float(v)
    return out, ended


def test_wandb_offline_export_lists_the_same_keys(finished, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run, table = finished
    assert main(["export", str(run), "--to", "wandb", str(tmp_path), "--no-figures"]) == 0
    (run_dir,) = [Path(p) for p in glob.glob(str(tmp_path / "wandb" / "offline-run-*"))]
    # wandb's service process may still be writing when finish() returns under load: read until
    # the run file holds its exit record
    deadline = time.monotonic() + 60
    while True:
        got, ended = wandb_history(run_dir)
        if ended or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert ended, "the offline run has no exit record"
    want = expected_scalars(table)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-15, abs=0), key  # JSON round trip
    assert {k for k in got if k[0].startswith(("drift/", "cka/"))} == set(want)


class Failing(Sink):
    """A backend that fails in its second round (a full disk, a service that went down)."""

    def __init__(self) -> None:
        self.rounds: list[int] = []

    def round(self, rec) -> None:
        if self.rounds:
            raise OSError(28, "No space left on device")
        self.rounds.append(rec.round)


def test_a_failing_logger_warns_once_and_the_run_completes(
    finished, digits, tmp_path: Path
) -> None:
    out = tmp_path / "r.h5"
    logger = LiveLogger(f"tensorboard={tmp_path / 'tb'}", out)
    logger.sink.close()  # replaced by the failing one
    sink = logger.sink = Failing()
    with pytest.warns(LoggerWarning, match="No space left on device") as caught:
        train(CFG, out, dataset=digits, hooks=[logger])
    assert len([w for w in caught if issubclass(w.category, LoggerWarning)]) == 1
    assert sink.rounds == [0]
    with open_run(out) as a, open_run(finished[0]) as b:  # the same run without a logger
        assert a.status == "complete" and a.num_rounds == 3
        for ly in a.layers:
            assert np.array_equal(a.gram(ly.name), b.gram(ly.name))
        cols = ["round", "test_accuracy", "test_loss", "train_loss"]
        assert a.metrics[cols].equals(b.metrics[cols])


def test_cli_run_log_and_errors(tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "cli.h5"
    args = ["run", "--rounds", "2", "--clients", "3", "--local-epochs", "1", "-q"]
    assert main([*args, "--out", str(out), "--log", f"tensorboard={tmp_path / 'tb'}"]) == 0
    got, _ = tensorboard_scalars(tmp_path / "tb" / "cli")
    assert {r for (tag, r) in got if tag == "test/accuracy"} == {0, 1}
    capsys.readouterr()
    # bad input: one line, exit 2, nothing trained
    assert main([*args, "--out", str(tmp_path / "x.h5"), "--log", "mlflow"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mlflow needs a target" in err
    assert not (tmp_path / "x.h5").exists()
    (tmp_path / "a_file").write_text("")
    assert main(["export", str(out), "--to", "tensorboard", str(tmp_path / "a_file")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write the tensorboard export" in err
    assert main(["export", str(out), "--to", "neptune", "x"]) == 2
    assert "unknown logger 'neptune'" in capsys.readouterr().err
    # a missing extra names it
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert main(["export", str(out), "--to", "tensorboard", str(tmp_path / "t2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'driftscope[tensorboard]'" in err


def test_round_exports_of_a_live_file_grow_with_its_rounds(finished) -> None:
    run, _ = finished
    with open_run(run) as r:
        some = round_exports(r, [1])
        assert [x.round for x in some] == [1]
        assert not any(k.startswith("cka/") for k in some[0].scalars)  # no CKA in round 1


class Follower(Hook):
    """Reads each round with CommittedRounds as the live logger does (at the next round's start,
    the last at the run's end), from the file while it is being written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rounds: CommittedRounds | None = None
        self.got: list = []
        self.calls: list[list[int]] = []

    def _read(self) -> None:
        if self.rounds is None:
            if not self.path.exists():
                return
            self.rounds = CommittedRounds(open_run(self.path))
        recs = self.rounds.new()
        self.calls.append([rec.round for rec in recs])
        self.got += recs

    def on_round_start(self, event) -> None:
        self._read()

    def on_run_end(self, event) -> None:
        self._read()
        if self.rounds is not None:
            self.rounds.run.close()


def test_committed_rounds_read_live_equal_round_exports_of_the_whole_file(
    digits, tmp_path: Path, monkeypatch
) -> None:
    """Row by row while the run is written (sample-weighted averaging, CKA on some rounds): every
    scalar and histogram equals what round_exports computes from the whole finished file
    (drift_table), in float64: the same functions on the same stored numbers."""
    cfg = CFG.replace({"train.weighting": "samples"})
    out = tmp_path / "w.h5"
    follower = Follower(out)
    reads: list[tuple[str, int]] = []
    read = Rows.read

    def counted(self, name: str, rows: slice):
        reads.append((name, rows.stop - rows.start))
        return read(self, name, rows)

    monkeypatch.setattr(Rows, "read", counted)
    train(cfg, out, dataset=digits, hooks=[follower])
    assert follower.calls[-3:] == [[0], [1], [2]]  # one new round a call, none twice
    # only the new round's rows: one row of each dataset a round, never the whole record
    assert reads and {n for _, n in reads} == {1}
    assert len([name for name, _ in reads if name.startswith("records/gram/")]) == 3 * len(
        [p for ly in follower.rounds.layers for p in ly.params]
    )
    with open_run(out) as run:
        want = round_exports(run)
    assert [r.round for r in follower.got] == [r.round for r in want] == [0, 1, 2]
    for got, ref in zip(follower.got, want):
        assert got.scalars.keys() == ref.scalars.keys(), got.round
        # the registry's functions reduce one round's (1, S, S) Grams in another order than the
        # whole run's (rounds, S, S) stack (numpy and BLAS choose it by shape): a few values
        # differ in their last bit or two (measured: at most 3.4e-16 relative); 1e-13 allows
        # that and nothing a wrong row or weight would give
        for name, value in ref.scalars.items():
            assert got.scalars[name] == pytest.approx(value, rel=1e-13, abs=0), (got.round, name)
        assert got.histograms.keys() == ref.histograms.keys()
        for name, values in ref.histograms.items():
            assert np.array_equal(got.histograms[name], values), name
    names = set(want[0].scalars)
    assert any(n.startswith("cka/") for n in names) and not any(
        n.startswith("cka/") for n in want[1].scalars
    )
    assert {
        "drift/angular_divergence/" + run.layers[0].name,
        "drift_head/relative_variance",
    } <= names


def test_rows_reads_slices_and_names_a_short_or_missing_dataset(finished) -> None:
    with open_run(finished[0]) as run:
        rows = Rows(run)
        assert rows.length("metrics/round") == 3
        assert list(rows.read("metrics/round", slice(1, 3))) == [1, 2]
        with pytest.raises(RunFileError, match=r"metrics/round ends before row 4 \(1 of rows 2-4"):
            rows.read("metrics/round", slice(2, 5))
        with pytest.raises(RunFileError, match="records/nope is missing"):
            rows.read("records/nope", slice(0, 1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_tensorboard_serves_the_exported_run(finished, tmp_path: Path) -> None:
    exe = shutil.which("tensorboard", path=str(Path(sys.executable).parent)) or shutil.which(
        "tensorboard"
    )
    if exe is None:
        pytest.skip("no tensorboard command")
    run, _ = finished
    export_run(run, "tensorboard", str(tmp_path), figures=False)
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--logdir", str(tmp_path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    try:
        url = f"http://127.0.0.1:{port}/data/plugin/scalars/tags"
        body = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    body = resp.read().decode()
                if run.stem in body and "drift/relative_variance/" in body:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert run.stem in body and "drift/relative_variance/" in body, body[:500]
    finally:
        os.kill(proc.pid, 15)
        proc.wait(timeout=30)


def test_live_logger_on_the_flower_strategy(digits, tmp_path: Path) -> None:
    """The same hook on the Flower engine (its strategy over an in-process test grid)."""
    pytest.importorskip("flwr")
    from flowergrid import LocalGrid

    from driftscope.flower.client import app as client_app
    from driftscope.flower.strategy import DriftscopeStrategy

    cfg = CFG.replace({"train.clients": 3, "train.rounds": 2})
    out = tmp_path / "flower.h5"
    logger = LiveLogger(f"tensorboard={tmp_path / 'tb'}", out)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LoggerWarning)
        strategy = DriftscopeStrategy(cfg, out, dataset=digits, hooks=[logger])
        strategy.start(LocalGrid(client_app, 3, seed=7))
    assert main(["analyze", str(out), "--csv", str(tmp_path / "t.csv")]) == 0
    check_tensorboard(tmp_path / "tb" / "flower", out, pd.read_csv(tmp_path / "t.csv"), la=False)
