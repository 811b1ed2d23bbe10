"""Figures: each test checks what a figure shows (ticks, shading, data, legends), not only that
it draws. Runs come from the shared ``make_run`` fixture (small, 3 rounds)."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import seaborn as sns
import torch
from conftest import small_config

from driftscope import RunConfig, open_run, train
from driftscope.analysis.tables import communication_factor, drift_table, tidy
from driftscope.data import Dataset
from driftscope.engine.events import Hook
from driftscope.errors import DivergenceError
from driftscope.figures import (
    accuracy_curves,
    cka_by_layer,
    cosine_clustermap,
    layer_heatmap,
    layer_profile,
    paper_style,
    partition_histogram,
    run_label,
    run_labels,
    write_figures,
)

VGG_LABELS = [f"conv{i}" for i in range(1, 9)] + ["fc1", "fc2", "fc3"]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Train the fixture runs on one thread: on a small, shared machine torch's default
    (one thread per core) spins against other processes and is ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def runs(make_run):
    """FedAvg, SCAFFOLD and FedPVR runs (same partition), opened."""
    opened = [
        open_run(make_run()),
        open_run(make_run("scaffold", train__algorithm="scaffold")),
        open_run(make_run("fedpvr", train__algorithm="fedpvr")),
    ]
    yield opened
    for run in opened:
        run.close()


@pytest.fixture(scope="module")
def fedavg(runs):
    return runs[0]


@pytest.fixture(scope="module")
def norecord(make_run):
    with open_run(make_run("norecord", record__enabled=False)) as run:
        yield run


@pytest.fixture(scope="module")
def vgg_run(tmp_path_factory):
    """VGG-11 on 200 random CIFAR-shaped images: 3 clients, 1 round of 1 local step."""
    g = torch.Generator().manual_seed(0)
    ds = Dataset(
        name="cifar_shaped",
        train_x=torch.rand(200, 3, 32, 32, generator=g),
        train_y=torch.arange(200) % 10,
        test_x=torch.rand(40, 3, 32, 32, generator=g),
        test_y=torch.arange(40) % 10,
        num_classes=10,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        augment=False,
    )
    cfg = RunConfig().replace(
        {
            "model.name": "vgg11",
            "data.partition": "iid",
            "train.clients": 3,
            "train.rounds": 1,
            "train.local_steps": 1,
            "train.batch_size": 16,
            "record.probe_size": 16,
            "record.updates_every": 0,
        }
    )
    path = tmp_path_factory.mktemp("vgg") / "vgg11.h5"
    train(cfg, path, dataset=ds)
    with open_run(path) as run:
        yield run


def _head_span(run) -> tuple[float, float]:
    idx = [i for i, ly in enumerate(run.layers) if ly.group == "head"]
    return idx[0] - 0.5, idx[-1] + 0.5


def _head_patches(ax):
    return [p for p in ax.patches if p.get_gid() == "head"]


def _xtick_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_xticklabels()]


# ---------------------------------------------------------------------------------------- style
def test_paper_style_is_print_ready_and_restored():
    before = dict(plt.rcParams)
    with paper_style():
        rc = plt.rcParams
        assert rc["pdf.fonttype"] == 42
        assert rc["savefig.bbox"] == "tight"
        assert rc["figure.figsize"][0] == pytest.approx(3.4)
        sizes = [rc[k] for k in ("font.size", "xtick.labelsize", "ytick.labelsize")]
        assert min(float(s) for s in [*sizes, rc["legend.fontsize"]]) >= 7
        cycle = [c["color"] for c in rc["axes.prop_cycle"]]
        assert [matplotlib.colors.to_hex(c) for c in cycle[:3]] == sns.color_palette(
            "colorblind"
        ).as_hex()[:3]
    assert plt.rcParams["pdf.fonttype"] == before["pdf.fonttype"]
    assert plt.rcParams["font.size"] == before["font.size"]


# ---------------------------------------------------------------------------------------- labels
def test_run_labels(runs, norecord, tmp_path):
    assert run_label(runs[0]) == "FedAvg α=0.1"
    assert run_labels(runs) == ["FedAvg", "SCAFFOLD", "FedPVR"]
    assert run_label(runs[1], runs) == "SCAFFOLD"
    # two FedAvg runs with the same seed: told apart by file stem, pooled when not unique
    both = [runs[0], norecord]
    labels = run_labels(both)
    assert len(set(labels)) == 2 and all(lab.startswith("FedAvg") for lab in labels)
    assert run_labels(both, unique=False) == ["FedAvg", "FedAvg"]
    copy = tmp_path / "iid.h5"
    shutil.copy(runs[0].path, copy)
    with open_run(copy) as other:
        assert "FedAvg" in run_labels([runs[0], other])[1]


def test_tidy_adds_run_columns(runs):
    df = tidy(runs)
    assert {"round", "layer", "label", "group", "metric", "value", "run", "algorithm"} <= set(
        df.columns
    )
    assert list(dict.fromkeys(df["run"])) == ["FedAvg", "SCAFFOLD", "FedPVR"]
    assert list(dict.fromkeys(df["algorithm"])) == ["fedavg", "scaffold", "fedpvr"]
    assert len(df) == sum(len(drift_table(r)) for r in runs)


# ---------------------------------------------------------------------------------------- profile
def test_layer_profile_shows_what_analyze_reports(fedavg):
    ax = layer_profile(fedavg, "relative_variance")
    labels = [ly.label for ly in fedavg.layers]
    assert _xtick_texts(ax) == labels
    assert list(ax.get_xticks()) == list(range(len(labels)))
    assert ax.get_xlabel().startswith("layer\n") and "variance" in ax.get_ylabel()
    # the figure says what it shows, and how analyze's number differs
    assert "median of single rounds, bar: middle 50%" in ax.get_xlabel()
    assert "analyze pools rounds as their ratio of sums" in ax.get_xlabel()
    (patch,) = _head_patches(ax)
    x0, x1 = _head_span(fedavg)
    assert patch.get_x() == pytest.approx(x0)
    assert patch.get_x() + patch.get_width() == pytest.approx(x1)
    assert "head" in [t.get_text() for t in ax.texts]
    assert ax.get_yscale() == "log"
    # marker and bar show one statistic, the single rounds' values: the marker their median,
    # the bar their interquartile range, in model order; so every marker lies on its bar
    line = next(ln for ln in ax.lines if len(ln.get_ydata()) == len(labels))
    table = drift_table(fedavg)
    sub = table[table["metric"] == "relative_variance"]
    (bars,) = [c for c in ax.collections if type(c).__name__ == "LineCollection"]
    for lab, seg, y in zip(labels, bars.get_segments(), line.get_ydata(), strict=True):
        values = sub[sub["label"] == lab]["value"]
        assert y == pytest.approx(values.median())
        np.testing.assert_allclose(sorted(seg[:, 1]), values.quantile([0.25, 0.75]))
        assert seg[:, 1].min() <= y <= seg[:, 1].max()
    # a mean metric says how analyze pools it
    note = layer_profile(fedavg, "cosine_divergence").get_xlabel()
    assert "analyze pools rounds as their mean" in note


def test_layer_profile_compares_runs(runs):
    data = tidy(runs)
    ax = layer_profile(data, "cosine_divergence")
    assert [t.get_text() for t in ax.get_legend().texts] == ["FedAvg", "SCAFFOLD", "FedPVR"]
    assert _xtick_texts(ax) == [ly.label for ly in runs[0].layers]
    assert len(_head_patches(ax)) == 1
    assert ax.get_yscale() == "linear"
    # a list of runs gives the same figure as their tidy table
    ax2 = layer_profile(runs, "cosine_divergence")
    assert [t.get_text() for t in ax2.get_legend().texts] == ["FedAvg", "SCAFFOLD", "FedPVR"]
    with pytest.raises(ValueError, match="no 'nope'"):
        layer_profile(data, "nope")
    # across algorithms a spread measure names the measures that compare them fairly
    assert (
        "compare alignment (cosine, CKA)" in layer_profile(data, "relative_variance").get_xlabel()
    )
    assert "compare alignment" not in ax.get_xlabel()  # cosine divergence: alignment itself
    assert "compare alignment" not in layer_profile(runs[0], "relative_variance").get_xlabel()


# ---------------------------------------------------------------------------------------- heatmap
def test_layer_heatmap_rows_layers_columns_rounds(fedavg):
    ax = layer_heatmap(fedavg, "relative_variance")
    labels = [ly.label for ly in fedavg.layers]
    values = np.asarray(ax.collections[0].get_array())
    assert values.shape == (len(labels), len(fedavg.rounds))
    assert [t.get_text() for t in ax.get_yticklabels()] == labels
    assert ax.get_xlabel() == "round" and ax.get_ylabel() == "layer (head: bold, below the line)"
    assert ax.get_title().startswith("FedAvg")  # the run it draws
    weights = {t.get_text(): t.get_fontweight() for t in ax.get_yticklabels()}
    for ly in fedavg.layers:
        assert (weights[ly.label] == "bold") == (ly.group == "head")
    table = drift_table(fedavg)
    sub = table[(table["metric"] == "relative_variance") & (table["label"] == "fc3")]
    np.testing.assert_allclose(values[labels.index("fc3")], sub["value"].to_numpy())
    assert type(ax.collections[0].norm).__name__ == "LogNorm"


def test_layer_heatmap_needs_one_run(runs):
    with pytest.raises(ValueError, match="one run"):
        layer_heatmap(tidy(runs))


# ---------------------------------------------------------------------------------------- cka
def test_cka_by_layer_one_hue_per_run(runs, make_run):
    ax = cka_by_layer(runs)
    legend = [t.get_text() for t in ax.get_legend().texts]
    assert legend == ["FedAvg", "SCAFFOLD", "FedPVR"]
    assert _xtick_texts(ax) == [ly.label for ly in runs[0].layers]
    (patch,) = _head_patches(ax)
    assert patch.get_x() == pytest.approx(_head_span(runs[0])[0])
    assert ax.get_ylabel() and ax.get_xlabel() == "layer"
    with open_run(make_run("sparse", train__rounds=4, record__updates_every=2,
                           record__update_dtype="float16",
                           record__update_layers=["classifier.*"],
                           record__probe_size=0)) as no_cka:  # fmt: skip
        ax = cka_by_layer([*runs[:2], no_cka])
        assert len(ax.get_legend().texts) == 2
        with pytest.raises(ValueError, match="CKA"):
            cka_by_layer([no_cka])


# ---------------------------------------------------------------------------------------- clustermap
def test_cosine_clustermap_data_and_labels(fedavg):
    grid = cosine_clustermap(fedavg, "fc3")
    s = fedavg.participants.shape[1]
    data = grid.data.to_numpy()
    assert data.shape == (s, s)
    np.testing.assert_allclose(data, data.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(data), 1.0)
    hist = fedavg.label_histogram.to_numpy()
    last = len(fedavg.rounds) - 1
    expected = set()
    for c in fedavg.participants[last]:
        share = hist[c] / hist[c].sum()
        dominant = [str(k) for k in np.flatnonzero(share >= 0.25)]
        expected.add(f"client {c}: {','.join(dominant) if dominant else 'mixed'}")
    assert {t.get_text() for t in grid.ax_heatmap.get_yticklabels()} == expected
    assert (
        grid.ax_heatmap.get_ylabel() == "client: its dominant classes (\u2265 25% of its samples)"
    )
    mesh = grid.ax_heatmap.collections[0]
    assert mesh.norm.vmin == -1 and mesh.norm.vmax == 1
    title = grid.figure.get_suptitle()
    assert "fc3" in title and f"round {int(fedavg.rounds[-1])}" in title
    # an explicit round
    first = cosine_clustermap(fedavg, "conv1", round=int(fedavg.rounds[0]))
    assert "round 0" in first.figure.get_suptitle()


# ---------------------------------------------------------------------------------------- accuracy
def test_accuracy_curves_legend_shows_communication(runs):
    ax = accuracy_curves(runs)
    texts = [t.get_text() for t in ax.get_legend().texts]
    assert texts[0] == "FedAvg (2.0x)"
    assert "model copies" in ax.get_legend().get_title().get_text()  # what 2.0x means
    assert texts[1] == "SCAFFOLD (4.0x)"
    pvr = 2 * (1 + runs[2].head_share)
    assert texts[2] == f"FedPVR ({pvr:.1f}x)"
    assert communication_factor(runs[2]) == pytest.approx(pvr)
    lines = [ln for ln in ax.lines if not ln.get_label().startswith("_")]
    assert len(lines) == 3
    np.testing.assert_allclose(lines[0].get_ydata(), runs[0].metrics["test_accuracy"])
    assert ax.get_xlabel() == "communication round" and ax.get_ylabel() == "test accuracy"


def test_accuracy_curves_pool_seeds(runs, norecord):
    ax = accuracy_curves([runs[0], norecord, runs[1]])
    lines = [ln for ln in ax.lines if not ln.get_label().startswith("_")]
    assert len(lines) == 2  # one per algorithm
    assert lines[0].get_label().startswith("FedAvg (2.0x)")
    assert len(ax.collections) == 1  # the band of the two FedAvg runs
    mean = (runs[0].metrics["test_accuracy"] + norecord.metrics["test_accuracy"]) / 2
    np.testing.assert_allclose(lines[0].get_ydata(), mean)


class _DivergeAt(Hook):
    """Stops training the way a non-finite model does, at a chosen round."""

    def __init__(self, round: int) -> None:
        self.round = round

    def on_round_start(self, event):
        if event.round == self.round:
            raise DivergenceError(f"the global model became non-finite at round {event.round}")


def test_accuracy_curves_mark_a_diverged_run(runs, tmp_path, digits):
    path = tmp_path / "diverged.h5"
    with pytest.raises(DivergenceError):
        train(
            small_config(train__algorithm="scaffold"), path, dataset=digits, hooks=[_DivergeAt(2)]
        )
    with open_run(path) as bad:
        assert bad.status == "diverged" and bad.num_rounds == 2
        ax = accuracy_curves([runs[0], bad])
        texts = [t.get_text() for t in ax.get_legend().texts]
        assert texts == ["FedAvg (2.0x)", "SCAFFOLD (4.0x), diverged"]
        crosses = [ln for ln in ax.lines if ln.get_marker() == "x"]
        assert len(crosses) == 1  # only the diverged run ends in a cross, at its last round
        assert crosses[0].get_xdata()[0] == 1
        assert crosses[0].get_ydata()[0] == bad.metrics["test_accuracy"].iloc[-1]


# ---------------------------------------------------------------------------------------- partition
def test_partition_histogram_totals(fedavg):
    ax = partition_histogram(fedavg)
    totals: dict[int, float] = {}
    for p in ax.patches:
        y = round(p.get_y() + p.get_height() / 2)
        totals[y] = totals.get(y, 0.0) + p.get_width()
    sizes = fedavg.client_sizes
    assert [totals[c] for c in range(len(sizes))] == pytest.approx(list(sizes))
    assert ax.get_xlabel() == "samples" and ax.get_ylabel() == "client"
    assert len(ax.get_legend().texts) == fedavg.label_histogram.shape[1]


# ---------------------------------------------------------------------------------------- files
EXPECTED = [
    "layer_profile_relative_variance",
    "layer_profile_cosine_divergence",
    "layer_profile_mean_pairwise_cosine",
    "layer_profile_cka",
    "layer_heatmap_relative_variance",
    "cka_by_layer",
    "cosine_clustermap_fc3",
    "cosine_clustermap_conv1",
    "label_alignment_profile",
    "class_variance_heatmap",
    "accuracy_curves",
    "partition_histogram",
]


def test_write_figures_png_and_pdf(runs, tmp_path):
    open_before = plt.get_fignums()
    out = tmp_path / "figs" / "nested"
    written = write_figures(runs, out)
    # one heatmap per run, each titled with its run (one figure cannot show three)
    heatmaps = [f"layer_heatmap_relative_variance_{n}" for n in ("FedAvg", "SCAFFOLD", "FedPVR")]
    names = [n for n in EXPECTED if not n.startswith("layer_heatmap")] + heatmaps
    assert sorted(written) == sorted(out / f"{n}.{ext}" for n in names for ext in ("png", "pdf"))
    for path in written:
        assert path.stat().st_size > 1000
    assert (out / "accuracy_curves.png").read_bytes()[:4] == b"\x89PNG"
    pdf = (out / "layer_profile_relative_variance.pdf").read_bytes()
    assert pdf[:5] == b"%PDF-"
    assert b"CIDFontType2" in pdf and b"Type3" not in pdf  # TrueType (fonttype 42) text
    assert plt.get_fignums() == open_before  # every figure closed


def test_write_figures_without_records(norecord, tmp_path):
    written = write_figures([norecord], tmp_path)
    names = {Path(p).name for p in written}
    assert {"accuracy_curves.png", "accuracy_curves.pdf"} <= names
    assert {"partition_histogram.png", "partition_histogram.pdf"} <= names
    assert not any(n.startswith(("layer_", "cka_", "cosine_")) for n in names)


def test_write_figures_mixed_runs_skip_what_is_missing(fedavg, norecord, tmp_path):
    written = write_figures([norecord, fedavg], tmp_path)
    names = {Path(p).stem for p in written}
    assert set(EXPECTED) == names  # drift figures come from the recorded run


# ---------------------------------------------------------------------------------------- VGG-11
def _assert_tick_labels_apart(ax) -> None:
    """x tick labels are >= 7 pt and do not collide: unrotated, their boxes are disjoint;
    rotated by theta, neighbouring (parallel) labels lie d sin(theta) apart, d the tick spacing,
    which must exceed a label's height."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = ax.get_xticklabels()
    assert all(t.get_fontsize() >= 7 for t in texts)
    angle = np.deg2rad(texts[0].get_rotation())
    if angle == 0:
        boxes = [t.get_window_extent(renderer) for t in texts]
        assert not any(a.overlaps(b) for a, b in itertools.pairwise(boxes)), "tick labels overlap"
        return
    xs = ax.get_xaxis_transform().transform(np.c_[ax.get_xticks(), np.zeros(len(texts))])[:, 0]
    spacing = float(np.min(np.diff(xs)))
    height = max(
        renderer.get_text_width_height_descent(t.get_text(), t.get_fontproperties(), False)[1]
        for t in texts
    )
    assert spacing * np.sin(angle) > height, "rotated tick labels overlap"


def test_vgg11_layers_labelled_legibly(vgg_run):
    """driftscope figures on a run of CIFAR-shaped data with VGG-11 label the 11 VGG-11 layers
    legibly: 11 ticks, fonts >= 7 pt, no two tick labels overlapping at single-column width."""
    assert [ly.label for ly in vgg_run.layers] == VGG_LABELS
    with paper_style():
        for ax in (layer_profile(vgg_run, "relative_variance"), cka_by_layer(vgg_run)):
            assert _xtick_texts(ax) == VGG_LABELS
            assert ax.figure.get_figwidth() == pytest.approx(3.4)
            _assert_tick_labels_apart(ax)
            (patch,) = _head_patches(ax)
            assert patch.get_x() == pytest.approx(7.5)
            assert patch.get_x() + patch.get_width() == pytest.approx(10.5)
        ax = layer_heatmap(vgg_run)
        assert [t.get_text() for t in ax.get_yticklabels()] == VGG_LABELS
        assert np.asarray(ax.collections[0].get_array()).shape == (11, 1)


def test_figures_command_names_its_folder_after_the_runs_and_never_replaces_silently(
    make_run, tmp_path, monkeypatch, capsys
):
    from driftscope.cli import main

    monkeypatch.chdir(tmp_path)
    a, b = make_run("norecord", record__enabled=False), make_run()
    assert main(["figures", str(a)]) == 0
    first = tmp_path / "figures" / a.stem
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    assert any(n.endswith(".png") for n in before)
    assert main(["figures", str(a), str(b)]) == 0  # two runs: their own folder
    assert (tmp_path / "figures" / f"{a.stem}+{b.stem}").is_dir()
    capsys.readouterr()
    assert main(["figures", str(b), "--out", str(first)]) == 2
    err = capsys.readouterr().err.strip()
    assert "already holds" in err and "--overwrite" in err and "\n" not in err
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    assert main(["figures", str(b), "--out", str(first), "--overwrite"]) == 0
