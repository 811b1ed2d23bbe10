"""The run file: reader API, Gram matrices vs raw updates, crash safety, bad files."""

import itertools
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from driftscope import open_run
from driftscope.analysis.tables import drift_table, layer_summary
from driftscope.errors import RunFileError
from driftscope.metrics import drift


def test_reader_api(make_run):
    with open_run(make_run("scaffold", train__algorithm="scaffold")) as run:
        assert run.config.train.algorithm == "scaffold"
        assert [ly.label for ly in run.layers] == [
            "conv1",
            "conv2",
            "conv3",
            "conv4",
            "fc1",
            "fc2",
            "fc3",
        ]
        assert [ly.group for ly in run.layers] == ["body"] * 4 + ["head"] * 3
        assert run.clients == list(range(10))
        assert list(run.rounds) == [0, 1, 2] == list(run.update_rounds) == list(run.cka_rounds)
        m = run.metrics
        assert list(m.columns[:3]) == ["round", "test_accuracy", "test_loss"]
        assert len(m) == 3 and {"uplink_bytes", "downlink_bytes"} <= set(m.columns)
        w = run.updates("classifier.4.weight")
        assert w.shape == (3, 10, 10, 64)
        assert run.updates("fc3").shape == (3, 10, 650)  # a layer: weight and bias concatenated
        assert run.updates("fc3", round=1).shape == (10, 650)
        assert run.cka("fc3").shape == (3, 11, 11)
        assert run.control_norms("classifier.4.weight").shape == (3, 11)
        # SCAFFOLD sends model + control variate each way: 4 float32 model copies per client
        numel = sum(ly.numel for ly in run.layers)
        assert numel == 69_194  # the small CNN on 8x8 digits
        assert run.bytes_per_round == 4 * 4 * numel * 10
        assert run.label_histogram.to_numpy().sum() == run.client_sizes.sum()
        assert run.status == "complete"


def test_grams_equal_the_raw_updates_and_metrics_follow(make_run):
    with open_run(make_run()) as run:
        table = drift_table(run)
        for layer in run.layers:
            raw = run.updates(layer.name).astype(np.float64)  # (R, S, numel)
            g_raw = np.einsum("rsp,rtp->rst", raw, raw)
            np.testing.assert_allclose(run.gram(layer.name), g_raw, rtol=1e-10, atol=1e-14)
            # the tidy table's metrics equal a by-hand computation from raw updates
            for r_idx, r in enumerate(run.rounds):
                d = raw[r_idx]
                m = d.mean(0)
                v = np.mean(((d - m) ** 2).sum(1))
                rel = v / (m @ m)
                div = (d**2).sum() / (d.sum(0) @ d.sum(0))
                cos = np.mean([1 - di @ m / np.linalg.norm(di) / np.linalg.norm(m) for di in d])
                got = table[(table.layer == layer.name) & (table["round"] == r)].set_index(
                    "metric"
                )["value"]
                np.testing.assert_allclose(got["update_variance"], v, rtol=1e-9)
                np.testing.assert_allclose(got["relative_variance"], rel, rtol=1e-9)
                np.testing.assert_allclose(got["drift_diversity"], div, rtol=1e-9)
                np.testing.assert_allclose(got["cosine_divergence"], cos, rtol=1e-9, atol=1e-12)
        # CKA matrices: symmetric with unit diagonal
        c = run.cka("conv1")
        np.testing.assert_allclose(c, np.swapaxes(c, 1, 2), atol=1e-12)
        np.testing.assert_allclose(np.diagonal(c, axis1=1, axis2=2), 1.0, atol=1e-9)
        assert layer_summary(run)["label"].tolist() == [ly.label for ly in run.layers]


def test_drift_metrics_identity(make_run):
    with open_run(make_run()) as run:
        g = run.gram("fc1")
        n = g.shape[-1]
        np.testing.assert_allclose(
            drift.drift_diversity(g), (1 + drift.relative_variance(g)) / n, rtol=1e-10
        )


def test_storage_policy(make_run):
    path = make_run(
        "sparse",
        train__rounds=4,
        record__updates_every=2,
        record__update_dtype="float16",
        record__update_layers=["classifier.*"],
        record__probe_size=0,
    )
    with open_run(path) as run:
        assert list(run.rounds) == [0, 1, 2, 3]
        assert list(run.update_rounds) == [0, 2]
        assert run.updates("classifier.4.weight").dtype == np.float16
        with pytest.raises(RunFileError, match="not stored"):
            run.updates("features.0.weight")
        with pytest.raises(RunFileError, match="not stored"):
            run.updates("conv1")
        with pytest.raises(RunFileError, match="no probe CKA"):
            run.cka("fc3")
        with pytest.raises(RunFileError, match="round 1 has no stored updates"):
            run.updates("fc3", round=1)


def test_no_record_run_has_metrics_only(make_run):
    with open_run(make_run("norecord", record__enabled=False)) as run:
        assert len(run.metrics) == 3 and len(run.rounds) == 0
        assert drift_table(run).empty


def test_unknown_layer_and_round(make_run):
    with open_run(make_run()) as run:
        with pytest.raises(RunFileError, match=r"no layer 'fc9'.*fc3"):
            run.gram("fc9")
        with pytest.raises(RunFileError, match="round 99 has no records"):
            run.gram("fc1", round=99)


def test_bad_files(tmp_path, make_run):
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(RunFileError, match="not an HDF5 file"):
        open_run(text)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(RunFileError, match="not a driftscope run"):
        open_run(other)
    with pytest.raises(RunFileError, match="does not exist"):
        open_run(tmp_path / "missing.h5")
    newer = tmp_path / "newer.h5"
    newer.write_bytes(make_run().read_bytes())
    with h5py.File(newer, "r+") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(RunFileError, match=r"schema 99.*upgrade driftscope"):
        open_run(newer)
    truncated = tmp_path / "truncated.h5"
    data = make_run().read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(RunFileError):
        open_run(truncated)


def test_sigkill_mid_training_leaves_every_completed_round(tmp_path):
    path = tmp_path / "killed.h5"
    cmd = [
        sys.executable,
        "-m",
        "driftscope",
        "run",
        "--rounds",
        "200",
        "--local-epochs",
        "1",
        "--probe-size",
        "32",
        "--quiet",
        "--out",
        str(path),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        committed = 0
        while time.time() < deadline and committed < 3:
            time.sleep(0.5)
            if path.exists():
                try:
                    with open_run(path) as run:
                        committed = run.num_rounds
                except RunFileError:
                    pass
        assert committed >= 3, (
            proc.stderr.read().decode() if proc.poll() is not None else "too slow"
        )
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with open_run(path) as run:
        n = run.num_rounds
        assert n >= 3 and run.status == "running"
        assert len(run.metrics) == n and list(run.metrics["round"]) == list(range(n))
        assert list(run.rounds) == list(range(n))
        assert run.gram("fc3").shape == (n, 10, 10)
        assert np.isfinite(layer_summary(run)["relative_variance"]).all()
    out = subprocess.run(
        [sys.executable, "-m", "driftscope", "analyze", str(path)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "fc3" in out.stdout


def test_a_live_reader_refreshes_the_commit_marker_first(tmp_path, monkeypatch):
    """Run.refresh() on a running file refreshes metrics/round before every other dataset, so
    what a round wrote before its marker is at least as long as the marker says (in name order,
    metrics/downlink_bytes came before metrics/round and a live read could see it a round short)."""
    from driftscope import RunConfig, train
    from driftscope.engine.events import Hook
    from driftscope.runfile import schema

    out = tmp_path / "live.h5"
    order: list[str] = []
    refresh = h5py.Dataset.refresh

    def recording_refresh(ds):
        order.append(ds.name.lstrip("/"))
        return refresh(ds)

    class Reader(Hook):
        def on_round_start(self, event):
            if event.round == 1:  # round 0 committed, SWMR started
                with open_run(out) as run, monkeypatch.context() as m:
                    m.setattr(h5py.Dataset, "refresh", recording_refresh)
                    run.refresh()

    cfg = RunConfig().replace(
        {"train.rounds": 2, "train.clients": 3, "train.local_steps": 1, "record.probe_size": 0}
    )
    train(cfg, out, hooks=[Reader()])
    assert len(order) > 5 and order[0] == schema.METRICS_ROUND
    assert schema.metric_path("downlink_bytes") in order[1:]


def test_the_commit_marker_grows_in_a_flush_of_its_own(tmp_path, monkeypatch):
    """A kill during a flush may keep any part of it (HDF5 writes a flush's metadata in no set
    order), so a round's columns must reach the file in an earlier flush than its marker: between
    two flushes in which metrics/round grew, no other dataset grew. With one flush per round a
    killed run once read records/global/sq_norm one row short of its marker, as damaged."""
    from driftscope import RunConfig, train
    from driftscope.runfile import schema

    snapshots: list[dict[str, int]] = []
    flush = h5py.File.flush

    def recording_flush(f):
        rows: dict[str, int] = {}
        f.visititems(
            lambda name, obj: (
                rows.__setitem__(name, obj.shape[0])
                if isinstance(obj, h5py.Dataset) and obj.maxshape and obj.maxshape[0] is None
                else None
            )
        )
        snapshots.append(rows)
        return flush(f)

    monkeypatch.setattr(h5py.File, "flush", recording_flush)
    cfg = RunConfig().replace(
        {"train.rounds": 3, "train.clients": 3, "train.local_steps": 1, "record.probe_size": 0}
    )
    train(cfg, tmp_path / "r.h5")
    marker_grew = 0
    for before, after in itertools.pairwise(snapshots):
        grown = {k for k, n in after.items() if n > before.get(k, 0)}
        if schema.METRICS_ROUND in grown:
            marker_grew += 1
            assert grown == {schema.METRICS_ROUND}, sorted(grown)
    assert marker_grew == 3  # every round
