"""Paper-style figures of where federated learning drifts, drawn with seaborn on matplotlib.

Figures read only run files (through :class:`~driftscope.reader.Run`) and the tidy tables of
:mod:`driftscope.analysis.tables`; they never touch live training objects. Every plotting
function takes runs or tidy data and an optional ``ax`` and returns the Axes it drew on, so
figures compose into panels; :func:`cosine_clustermap` returns seaborn's ``ClusterGrid``.

=========================  ====================================================================
function                   what it shows
=========================  ====================================================================
:func:`layer_profile`      one drift metric per layer (model order), spread over rounds, runs
                           side by side, head region shaded
:func:`layer_heatmap`      one metric, layer x round, for one run
:func:`cka_by_layer`       per layer, the distribution of client-pair CKA, runs side by side
:func:`cosine_clustermap`  client x client cosine of one layer's updates, clustered
:func:`accuracy_curves`    test accuracy per round, legend with communication per round
:func:`partition_histogram`  each client's label histogram
:func:`write_figures`      all of the above that the runs support, as PNG and PDF
=========================  ====================================================================

Use :func:`paper_style` (a context manager) or :func:`set_style` for print-ready output: a
single-column width of 3.4 in, fonts of 7-8 pt, seaborn's colour-blind-safe palette, TrueType
(fonttype 42) fonts in PDFs and tight bounding boxes.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import squareform

from driftscope.analysis.tables import drift_table
from driftscope.metrics.drift import pairwise_cosine
from driftscope.reader import Run

__all__ = [
    "accuracy_curves",
    "cka_by_layer",
    "communication_factor",
    "cosine_clustermap",
    "layer_heatmap",
    "layer_profile",
    "paper_style",
    "partition_histogram",
    "run_label",
    "run_labels",
    "set_style",
    "tidy",
    "write_figures",
]

COLUMN_WIDTH = 3.4  # inches, one column of a two-column paper
FIGSIZE = (COLUMN_WIDTH, 2.3)
DPI = 200
BYTES_PER_VALUE = 4  # float32 on the wire, as the simulator counts
DOMINANT_SHARE = 0.25  # a class is "dominant" for a client above this share of its samples
HEAD_COLOR = "0.88"
ROTATE_ABOVE = 8  # rotate layer tick labels when more layers than this share the axis
LEGEND_CHARS = 60  # characters (handles included) that fit in one legend row at 7 pt
HEADROOM = 0.09  # share of a layer axis' height kept free at the top for the "head" label

ALGORITHM_NAMES = {
    "fedavg": "FedAvg",
    "fedprox": "FedProx",
    "scaffold": "SCAFFOLD",
    "fedpvr": "FedPVR",
}

METRIC_LABELS = {
    "update_variance": r"update variance $V$",
    "relative_variance": r"relative variance $V/\|m\|^2$",
    "per_parameter_variance": "variance per parameter",
    "drift_diversity": "drift diversity",
    "cosine_divergence": r"cosine divergence $1-\cos(d_i,m)$",
    "mean_pairwise_cosine": r"mean $\cos(d_i,d_j)$",
    "mean_update_sq_norm": r"$\|m\|^2$",
    "mean_client_sq_norm": r"mean $\|d_i\|^2$",
    "cka": "CKA between clients",
    "cka_rbf": "RBF CKA between clients",
    "cka_debiased": "debiased CKA between clients",
    "cka_to_global": "CKA client to global",
}

# Metrics spanning orders of magnitude: drawn on a log scale.
LOG_METRICS = frozenset(
    {
        "update_variance",
        "relative_variance",
        "per_parameter_variance",
        "drift_diversity",
        "mean_update_sq_norm",
        "mean_client_sq_norm",
    }
)

PROFILE_METRICS = ("relative_variance", "drift_diversity", "cosine_divergence", "cka")

PAPER_RC: dict[str, Any] = {
    "figure.figsize": FIGSIZE,
    "figure.dpi": 100,
    "savefig.dpi": DPI,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "figure.titlesize": 8,
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "xtick.minor.size": 1.5,
    "ytick.minor.size": 1.5,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "patch.linewidth": 0.5,
    "legend.frameon": False,
    "legend.handlelength": 1.4,
    "legend.borderaxespad": 0.3,
    "axes.titlepad": 4.0,
}


# ---------------------------------------------------------------------------------------- style
def _style_rc() -> dict[str, Any]:
    rc: dict[str, Any] = dict(sns.axes_style("ticks"))
    rc.update(PAPER_RC)
    rc["axes.prop_cycle"] = mpl.cycler(color=sns.color_palette("colorblind"))
    return rc


@contextmanager
def paper_style() -> Iterator[None]:
    """Print-ready matplotlib settings inside a ``with`` block (restored afterwards).

    Single-column figures (3.4 in wide), 7-8 pt fonts, the colour-blind-safe ``colorblind``
    palette, TrueType fonts in PDF (fonttype 42) and tight bounding boxes when saving.
    """
    with mpl.rc_context(_style_rc()):
        yield


def set_style() -> None:
    """Apply :func:`paper_style`'s settings globally (e.g. at the top of a notebook)."""
    mpl.rcParams.update(_style_rc())


# ---------------------------------------------------------------------------------------- labels
def _partition_label(config: dict[str, Any]) -> str:
    data = config["data"]
    partition = data.get("partition", "")
    if partition == "dirichlet":
        return f"α={float(data['alpha']):g}"
    if partition == "iid":
        return "IID"
    if partition == "shards":
        return f"{data.get('classes_per_client', '?')} classes/client"
    return str(partition)


def _base_label(run: Run, with_data: bool, with_dataset: bool) -> str:
    algorithm = run.config["train"]["algorithm"]
    parts = [ALGORITHM_NAMES.get(algorithm, algorithm)]
    if with_data:
        parts.append(_partition_label(run.config))
    if with_dataset:
        parts.insert(0, str(run.config["data"].get("dataset", "")))
    return " ".join(p for p in parts if p)


def run_labels(runs: Sequence[Run], unique: bool = True) -> list[str]:
    """Display labels of runs shown together, e.g. ``["FedAvg", "SCAFFOLD", "FedPVR"]``.

    The partition ("α=0.1", "IID") is included unless every run shares it, the dataset only when
    the runs span several. With ``unique`` (default), labels that would repeat (seeds of one
    setting) get the seed appended, or the file stem when the seeds agree too; without it, runs of
    one setting share a label (used to pool seeds).
    """
    runs = list(runs)
    settings = {_partition_label(r.config) for r in runs}
    datasets = {r.config["data"].get("dataset") for r in runs}
    with_data = len(runs) == 1 or len(settings) > 1
    labels = [_base_label(r, with_data, len(datasets) > 1) for r in runs]
    if not unique:
        return labels
    out = list(labels)
    for label in set(labels):
        idx = [i for i, lab in enumerate(labels) if lab == label]
        if len(idx) < 2:
            continue
        seeds = [runs[i].config.get("seed") for i in idx]
        stems = [runs[i].path.stem for i in idx]
        if len(set(seeds)) == len(idx):
            for i, seed in zip(idx, seeds):
                out[i] = f"{label} seed {seed}"
        elif len(set(stems)) == len(idx):
            for i, stem in zip(idx, stems):
                out[i] = f"{label} ({stem})"
        else:
            for k, i in enumerate(idx, start=1):
                out[i] = f"{label} #{k}"
    return out


def run_label(run: Run, runs: Sequence[Run] | None = None) -> str:
    """A short display label of a run: ``"FedAvg α=0.1"``, ``"FedPVR IID"``, ``"SCAFFOLD"``.

    Alone, a run is labelled with its algorithm and partition. Given ``runs`` (the runs it is
    shown with, ``run`` among them) the label follows :func:`run_labels`: the partition is left
    out when all runs share it, and a seed or file stem keeps labels unique.
    """
    if runs is None:
        return run_labels([run])[0]
    runs = list(runs)
    for i, other in enumerate(runs):
        if other is run:
            return run_labels(runs)[i]
    raise ValueError("run_label: `run` is not one of `runs`")


def metric_label(metric: str) -> str:
    """Axis label of a drift-table metric."""
    return METRIC_LABELS.get(metric, metric.replace("_", " "))


class PlainLogFormatter(mticker.LogFormatter):
    """Log-axis tick labels as plain numbers ("0.5", "20") instead of "2x10^1"; matplotlib
    still decides which minor ticks get a label."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        text = super().__call__(x, pos)
        return f"{x:g}" if text else ""


def _plain_log_ticks(axis: Any) -> None:
    axis.set_major_formatter(PlainLogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _order_labels(labels: Sequence[str], algorithms: Sequence[str]) -> list[str]:
    """Distinct labels, sorted by algorithm (FedAvg, FedProx, SCAFFOLD, FedPVR) then by first
    appearance, so colours follow the same order in every figure."""
    rank = {a: i for i, a in enumerate(ALGORITHM_NAMES)}
    first: dict[str, tuple[int, int]] = {}
    for i, (label, algorithm) in enumerate(zip(labels, algorithms)):
        first.setdefault(label, (rank.get(algorithm, len(rank)), i))
    return sorted(first, key=first.__getitem__)


# ---------------------------------------------------------------------------------------- data
def _as_runs(runs: Run | Sequence[Run]) -> list[Run]:
    return [runs] if isinstance(runs, Run) else list(runs)


def tidy(runs: Run | Sequence[Run]) -> pd.DataFrame:
    """:func:`~driftscope.analysis.tables.drift_table` of each run, concatenated.

    Columns: ``round, layer, label, group, metric, value`` plus ``run`` (the unique run label of
    :func:`run_labels`), ``condition`` (the label shared by seeds of one setting) and
    ``algorithm``. Rows keep each run's model order of layers.
    """
    runs = _as_runs(runs)
    unique = run_labels(runs)
    shared = run_labels(runs, unique=False)
    frames = []
    for run, label, condition in zip(runs, unique, shared):
        table = drift_table(run)
        table["run"] = label
        table["condition"] = condition
        table["algorithm"] = run.config["train"]["algorithm"]
        frames.append(table)
    columns = ["round", "layer", "label", "group", "metric", "value", "run", "condition"]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=[*columns, "algorithm"])
    return pd.concat(frames, ignore_index=True)


def _as_tidy(data: Run | Sequence[Run] | pd.DataFrame) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        if "run" not in data.columns:
            raise ValueError("a tidy table needs a 'run' column: build it with figures.tidy(runs)")
        return data
    return tidy(data)


def _layer_order(df: pd.DataFrame) -> tuple[list[str], set[str]]:
    """Layer labels in model order (order of first appearance) and the labels in the head."""
    first = df.drop_duplicates("label")
    labels = [str(x) for x in first["label"]]
    head = {str(lab) for lab, g in zip(first["label"], first["group"]) if g == "head"}
    return labels, head


def _metric_rows(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    sub = df[df["metric"] == metric]
    if not len(sub):
        have = ", ".join(sorted(map(str, df["metric"].unique()))) or "none"
        raise ValueError(f"no '{metric}' in the table (metrics: {have})")
    return sub


def communication_factor(run: Run) -> float:
    """Communication per round (down + up) in units of one FedAvg one-way model transfer.

    ``mean over rounds of (downlink + uplink bytes) / (4 bytes x numel x clients per round)``:
    FedAvg reads 2.0, SCAFFOLD 4.0, FedPVR 2 (1 + head share).
    """
    numel = int(run.file["model"].attrs["numel"])
    return run.bytes_per_round / (BYTES_PER_VALUE * numel * _clients_per_round(run))


def _clients_per_round(run: Run) -> int:
    if len(run.rounds):
        return int(run.participants.shape[1])
    train = run.config["train"]
    return max(1, round(float(train.get("client_fraction", 1.0)) * int(train["clients"])))


@contextmanager
def _quiet_seaborn() -> Iterator[None]:
    """Silence deprecation notices that seaborn 0.13 raises inside newer matplotlib."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="seaborn")
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning, module="seaborn")
        warnings.filterwarnings("ignore", message=".*vert: bool was deprecated.*")
        yield


def _palette(n: int) -> list[Any]:
    return sns.color_palette("colorblind", max(n, 1))


# ---------------------------------------------------------------------------------------- helpers
def _new_ax(ax: Axes | None, figsize: tuple[float, float] = FIGSIZE) -> Axes:
    if ax is not None:
        return ax
    _, ax = plt.subplots(figsize=figsize)
    return ax


def _head_spans(labels: Sequence[str], head: set[str]) -> list[tuple[int, int]]:
    """Contiguous index ranges [i0, i1] of head layers."""
    spans: list[tuple[int, int]] = []
    for i, label in enumerate(labels):
        if label not in head:
            continue
        if spans and spans[-1][1] == i - 1:
            spans[-1] = (spans[-1][0], i)
        else:
            spans.append((i, i))
    return spans


def _add_headroom(ax: Axes, frac: float = HEADROOM) -> None:
    """Raise the top y limit so the data stay below the top ``frac`` of the axes (where the
    "head" label sits); works on linear and log axes."""
    bottom, top = ax.get_ylim()
    if ax.get_yscale() == "log" and bottom > 0 and top > 0:
        lo, hi = np.log10(bottom), np.log10(top)
        ax.set_ylim(bottom, 10 ** (lo + (hi - lo) / (1 - frac)))
    else:
        ax.set_ylim(bottom, bottom + (top - bottom) / (1 - frac))


def _shade_head(ax: Axes, labels: Sequence[str], head: set[str]) -> None:
    """Shade the head layers of a categorical x axis (positions 0..n-1), label them "head" at
    the top, and leave headroom there for the label."""
    spans = _head_spans(labels, head)
    if spans:
        _add_headroom(ax)
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    for k, (i0, i1) in enumerate(spans):
        ax.axvspan(i0 - 0.5, i1 + 0.5, color=HEAD_COLOR, lw=0, zorder=0, gid="head")
        if k == len(spans) - 1:
            ax.text(
                (i0 + i1) / 2,
                0.99,
                "head",
                transform=trans,
                ha="center",
                va="top",
                fontsize=7,
                style="italic",
                color="0.3",
            )
    ax.set_xlim(-0.5, len(labels) - 0.5)


def _layer_ticks(ax: Axes, labels: Sequence[str], head: set[str], axis: str = "x") -> None:
    """One tick per layer with its short label; head labels bold; rotated when crowded."""
    ticks = np.arange(len(labels))
    if axis == "x":
        ax.set_xticks(ticks, list(labels))
        texts = ax.get_xticklabels()
        if len(labels) > ROTATE_ABOVE:
            for t in texts:
                t.set_rotation(45)
                t.set_ha("right")
                t.set_rotation_mode("anchor")
    else:
        texts = ax.get_yticklabels()
    for t in texts:
        if t.get_text() in head:
            t.set_fontweight("bold")


def _legend_columns(texts: Sequence[str]) -> int:
    """Columns for a legend above a single-column figure: at most 3, fewer for long entries,
    and an even split of 4 entries."""
    n = len(texts)
    longest = max((len(t) for t in texts), default=0)
    ncol = max(1, min(n, 3, LEGEND_CHARS // (longest + 4)))
    return 2 if n == 4 and ncol >= 2 else ncol


def _legend_above(ax: Axes, title: str | None = None) -> None:
    """Move the axes' legend above the plot, out of the data."""
    if ax.get_legend() is None:
        return
    texts = [t.get_text() for t in ax.get_legend().texts]
    sns.move_legend(
        ax,
        "lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=_legend_columns(texts),
        title=title,
        frameon=False,
        columnspacing=1.0,
        handletextpad=0.4,
    )


# ---------------------------------------------------------------------------------------- figures
def layer_profile(
    data: Run | Sequence[Run] | pd.DataFrame,
    metric: str = "relative_variance",
    ax: Axes | None = None,
    log: bool | None = None,
) -> Axes:
    """One drift metric per layer, layers in model order on the x axis.

    Each point is the median over rounds (and over the runs sharing a condition, e.g. seeds),
    its bar the interquartile range; conditions side by side (hue). The head layers are shaded
    and labelled "head". ``data``: a Run, several Runs, or a :func:`tidy` table. ``log``: log y
    scale (default: for variance-like metrics).
    """
    df = _as_tidy(data)
    sub = _metric_rows(df, metric).dropna(subset=["value"])
    labels, head = _layer_order(_metric_rows(df, metric))
    hue = "condition" if "condition" in sub.columns else "run"
    algorithms = sub["algorithm"] if "algorithm" in sub.columns else [""] * len(sub)
    hues = _order_labels(list(map(str, sub[hue])), list(map(str, algorithms)))
    if log is None:
        log = metric in LOG_METRICS and bool((sub["value"] > 0).all())
    ax = _new_ax(ax)
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    with _quiet_seaborn():
        sns.pointplot(
            data=sub,
            x="label",
            y="value",
            hue=hue,
            order=labels,
            hue_order=hues,
            palette=_palette(len(hues)),
            estimator="median",
            errorbar=("pi", 50),
            dodge=0.45 if len(hues) > 1 else False,
            markers=[markers[i % len(markers)] for i in range(len(hues))],
            markersize=3.5,
            linewidth=0.9,
            err_kws={"linewidth": 0.9},
            log_scale=(False, True) if log else None,
            ax=ax,
        )
    if log:
        _plain_log_ticks(ax.yaxis)
    _shade_head(ax, labels, head)
    _layer_ticks(ax, labels, head)
    ax.set_xlabel("layer")
    ax.set_ylabel(metric_label(metric))
    _legend_above(ax)
    return ax


def layer_heatmap(
    run_or_data: Run | pd.DataFrame,
    metric: str = "relative_variance",
    ax: Axes | None = None,
    log: bool | None = None,
    cmap: str = "viridis",
) -> Axes:
    """One metric as a layer (rows, model order) x round (columns) heatmap of one run.

    Head layers have bold tick labels below a white separator line. ``log``: logarithmic colour
    scale (default: for variance-like metrics with positive values). ``run_or_data``: a Run or a
    :func:`tidy` table holding a single run.
    """
    df = _as_tidy(run_or_data)
    runs = list(dict.fromkeys(map(str, df["run"])))
    if len(runs) != 1:
        raise ValueError(
            f"layer_heatmap shows one run; the table holds {len(runs)}: select one with "
            "data[data['run'] == label]"
        )
    sub = _metric_rows(df, metric)
    labels, head = _layer_order(sub)
    grid = sub.pivot_table(index="label", columns="round", values="value", aggfunc="mean")
    grid = grid.reindex(index=labels)
    grid.columns = [int(c) for c in grid.columns]
    values = grid.to_numpy(dtype=np.float64)
    finite = values[np.isfinite(values)]
    if log is None:
        log = metric in LOG_METRICS and bool(len(finite)) and bool((finite > 0).all())
    norm = None
    if log:
        positive = finite[finite > 0]
        if len(positive):
            grid = grid.where(grid > 0)
            norm = LogNorm(vmin=float(positive.min()), vmax=float(positive.max()))
    ax = _new_ax(ax, (COLUMN_WIDTH, max(1.8, 0.6 + 0.17 * len(labels))))
    with _quiet_seaborn():
        sns.heatmap(
            grid,
            ax=ax,
            cmap=cmap,
            norm=norm,
            xticklabels=False,
            yticklabels=True,
            cbar_kws={"label": metric_label(metric), "pad": 0.03},
            linewidths=0,
        )
    ax.tick_params(axis="y", rotation=0)
    # at most ~8 round ticks at a round-number step, centred on their cells
    rounds = [int(r) for r in grid.columns]
    step = max(1, int(np.ceil(len(rounds) / 8)))
    step = next((s for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 500) if s >= step), step)
    ticks = [i for i, r in enumerate(rounds) if r % step == 0] or [0]
    ax.set_xticks([i + 0.5 for i in ticks], [str(rounds[i]) for i in ticks], rotation=0)
    if norm is not None:
        _plain_log_ticks(ax.collections[0].colorbar.ax.yaxis)
    spans = _head_spans(labels, head)
    for i0, _ in spans:
        if i0 > 0:
            ax.axhline(i0, color="white", lw=1.5)
    _layer_ticks(ax, labels, head, axis="y")
    ax.set_xlabel("round")
    ax.set_ylabel("layer")
    ax.set_title(runs[0])
    return ax


def cka_by_layer(
    runs: Run | Sequence[Run],
    kind: str = "linear",
    ax: Axes | None = None,
    last_round: bool = False,
) -> Axes:
    """Per layer, the distribution of CKA over client pairs (the off-diagonal entries of the
    client block of :meth:`Run.cka`), pooled over the CKA rounds (or only the last), one box per
    run (hue), head shaded. Runs without probe CKA are left out; none with CKA is an error."""
    runs = _as_runs(runs)
    labels_of = dict(zip(map(id, runs), run_labels(runs)))
    frames = []
    order: list[str] = []
    head: set[str] = set()
    hues: list[str] = []
    algorithms: list[str] = []
    for run in runs:
        if not len(run.cka_rounds):
            continue
        hues.append(labels_of[id(run)])
        algorithms.append(run.config["train"]["algorithm"])
        for layer in run.layers:
            if layer.label not in order:
                order.append(layer.label)
            if layer.group == "head":
                head.add(layer.label)
            c = run.cka(layer.name, kind)[:, :-1, :-1]
            if last_round:
                c = c[-1:]
            iu = np.triu_indices(c.shape[-1], k=1)
            vals = c[:, iu[0], iu[1]].ravel()
            frames.append(
                pd.DataFrame({"run": labels_of[id(run)], "label": layer.label, "value": vals})
            )
    if not hues:
        raise ValueError("no run has probe CKA (recorded with record.probe_size > 0)")
    df = pd.concat(frames, ignore_index=True)
    hues = _order_labels(hues, algorithms)
    ax = _new_ax(ax)
    with _quiet_seaborn():
        sns.boxplot(
            data=df,
            x="label",
            y="value",
            hue="run",
            order=order,
            hue_order=hues,
            palette=_palette(len(hues)),
            width=0.75,
            gap=0.1 if len(hues) > 1 else 0,
            linewidth=0.6,
            fliersize=1.2,
            ax=ax,
        )
    _shade_head(ax, order, head)
    _layer_ticks(ax, order, head)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"{'' if kind == 'linear' else kind + ' '}CKA, client pairs")
    _legend_above(ax)
    return ax


def _dominant_classes(counts: np.ndarray) -> list[int]:
    total = counts.sum()
    if total <= 0:
        return []
    return [int(k) for k in np.flatnonzero(counts / total >= DOMINANT_SHARE)]


def cosine_clustermap(
    run: Run, layer: str, round: int | None = None, cmap: str = "RdBu_r"
) -> sns.matrix.ClusterGrid:
    """Client x client cosine similarity of one layer's updates in one round, clustered.

    ``cos(d_i, d_j)`` comes from the recorded Gram matrix (:func:`pairwise_cosine`; undefined
    entries of a zero update shown as 0). Rows and columns are ordered by average-linkage
    hierarchical clustering (scipy) on the distance ``1 - cos``. Row labels read
    ``"client i: 3,7"``: the client's dominant classes (>= 25% of its samples). ``round``:
    default the last recorded. The diverging colour map is centred at 0.
    """
    if not len(run.rounds):
        raise ValueError(f"{run.path.name} has no per-layer records (recorded with --no-record)")
    ly = run.layer(layer)
    r = int(run.rounds[-1]) if round is None else int(round)
    cos = pairwise_cosine(run.gram(ly.name, r))  # a clear RunFileError for unrecorded rounds
    clients = run.participants[int(np.flatnonzero(run.rounds == r)[0])]
    cos = np.where(np.isfinite(cos), cos, 0.0)
    hist = run.label_histogram.to_numpy()
    names = []
    for c in clients:
        dom = _dominant_classes(hist[int(c)])
        names.append(f"client {int(c)}: {','.join(map(str, dom)) if dom else 'mixed'}")
    frame = pd.DataFrame(cos, index=names, columns=[str(int(c)) for c in clients])
    s = cos.shape[0]
    kwargs: dict[str, Any] = {}
    if s >= 2:
        dist = np.clip(1.0 - (cos + cos.T) / 2, 0.0, 2.0)
        np.fill_diagonal(dist, 0.0)
        z = linkage(squareform(dist, checks=False), method="average")
        kwargs.update(row_linkage=z, col_linkage=z)
    else:
        kwargs.update(row_cluster=False, col_cluster=False)
    side = COLUMN_WIDTH
    show = True if s <= 40 else "auto"
    with _quiet_seaborn():
        grid = sns.clustermap(
            frame,
            cmap=cmap,
            center=0.0,
            vmin=-1.0,
            vmax=1.0,
            figsize=(side, side),
            dendrogram_ratio=0.12,
            cbar_pos=(0.02, 0.86, 0.03, 0.12),
            cbar_kws={"ticks": [-1, 0, 1]},
            xticklabels=show,
            yticklabels=show,
            linewidths=0,
            tree_kws={"linewidths": 0.6},
            **kwargs,
        )
    hm = grid.ax_heatmap
    hm.set_xlabel("client")
    hm.set_ylabel("")
    hm.tick_params(axis="both", length=0, pad=1)
    hm.tick_params(axis="x", rotation=0)
    hm.tick_params(axis="y", rotation=0)
    grid.ax_cbar.set_title("cos", fontsize=7, pad=2)
    grid.ax_cbar.tick_params(labelsize=7, length=1.5)
    grid.figure.suptitle(
        f"{run_label(run)}: {ly.label} update cosine, round {r}", y=1.02, fontsize=8
    )
    return grid


def accuracy_curves(
    runs: Run | Sequence[Run], ax: Axes | None = None, metric: str = "test_accuracy"
) -> Axes:
    """Test accuracy against communication round, one line per condition (algorithm).

    Seeds of one condition are drawn as their mean with a min-max band. Legend entries read
    ``"FedPVR (2.3x)"``: communication per round in FedAvg one-way model transfers
    (:func:`communication_factor`; FedAvg 2.0x, SCAFFOLD 4.0x), like the paper's Figure 1. A run
    that diverged (or failed, or was interrupted) ends in a cross and says so in the legend.
    """
    runs = _as_runs(runs)
    conditions = run_labels(runs, unique=False)
    order = _order_labels(conditions, [r.config["train"]["algorithm"] for r in runs])
    groups: dict[str, list[Run]] = {cond: [] for cond in order}
    for run, cond in zip(runs, conditions):
        groups[cond].append(run)
    palette = _palette(len(groups))
    ax = _new_ax(ax)
    for color, (cond, members) in zip(palette, groups.items()):
        series = [m.set_index("round")[metric].dropna() for m in (r.metrics for r in members)]
        table = pd.concat(series, axis=1).sort_index()
        x = table.index.to_numpy(dtype=np.float64)
        mean = table.mean(axis=1).to_numpy()
        factor = float(np.mean([communication_factor(r) for r in members]))
        label = f"{cond} ({factor:.1f}x)"
        if len(members) > 1:
            label += f", n={len(members)}"
            ax.fill_between(
                x,
                table.min(axis=1).to_numpy(),
                table.max(axis=1).to_numpy(),
                color=color,
                alpha=0.2,
                lw=0,
            )
        stopped = [r for r in members if r.status in ("diverged", "failed", "interrupted")]
        if stopped:
            label += f", {stopped[0].status}" if len(members) == 1 else f", {len(stopped)} stopped"
        ax.plot(x, mean, color=color, label=label, marker="o" if len(x) <= 12 else None, ms=2.5)
        for r, s in zip(members, series):  # a cross where a run stopped: it did not simply end
            if r in stopped and len(s):
                ax.plot(s.index[-1], s.iloc[-1], "x", color=color, ms=6, mew=1.5)
    ax.set_xlabel("communication round")
    ax.set_ylabel(metric.replace("_", " "))
    ax.xaxis.set_major_locator(mticker.MaxNLocator(integer=True))
    ax.grid(True, color="0.9", lw=0.5)
    ax.set_axisbelow(True)
    ax.legend(handlelength=1.2)
    _legend_above(ax)
    return ax


def partition_histogram(run: Run, ax: Axes | None = None) -> Axes:
    """Each client's label histogram.

    Up to 10 classes: one stacked horizontal bar per client (client 0 on top), one colour per
    class. More classes: a client x class heatmap, counts annotated when the grid is small.
    """
    hist = run.label_histogram
    counts = hist.to_numpy()
    n_clients, n_classes = counts.shape
    ax = _new_ax(ax, (COLUMN_WIDTH, max(1.6, 0.8 + 0.16 * n_clients)))
    if n_classes <= 10:
        colors = _palette(n_classes)
        left = np.zeros(n_clients)
        y = np.arange(n_clients)
        for k in range(n_classes):
            ax.barh(y, counts[:, k], left=left, height=0.8, color=colors[k], label=str(k), lw=0)
            left += counts[:, k]
        ax.set_yticks(y, [str(c) for c in hist.index])
        ax.set_ylim(n_clients - 0.5, -0.5)
        ax.set_xlim(0, left.max() * 1.02 if left.max() > 0 else 1)
        ax.set_xlabel("samples")
        ax.set_ylabel("client")
        ax.legend(
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),
            title="class",
            handlelength=0.8,
            handleheight=0.8,
            handletextpad=0.4,
            labelspacing=0.25,
            frameon=False,
        )
        sns.despine(ax=ax)
    else:
        annotate = n_clients * n_classes <= 120
        with _quiet_seaborn():
            sns.heatmap(
                hist,
                ax=ax,
                cmap="mako_r",
                annot=annotate,
                fmt="d",
                annot_kws={"fontsize": 6},
                cbar_kws={"label": "samples"},
                xticklabels="auto",
                yticklabels=True,
            )
        ax.set_xlabel("class")
        ax.set_ylabel("client")
        ax.tick_params(axis="y", rotation=0)
    ax.set_title(f"{run_label(run)}: label partition")
    return ax


# ---------------------------------------------------------------------------------------- files
def _save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    try:
        fig.savefig(paths[0], dpi=DPI, bbox_inches="tight")
        fig.savefig(paths[1], bbox_inches="tight")
    finally:
        plt.close(fig)
    return paths


def write_figures(runs: Sequence[Run], out_dir: str | os.PathLike) -> list[Path]:
    """Write every figure the runs support, each as PNG (200 dpi) and PDF, into ``out_dir``.

    ``layer_profile_<metric>`` (relative variance, drift diversity, cosine divergence, and CKA
    when recorded), ``layer_heatmap_relative_variance`` (first recorded run), ``cka_by_layer``,
    ``cosine_clustermap_<layer>`` (the head's last layer and the first layer of the first
    recorded run), ``accuracy_curves`` and ``partition_histogram`` (first run). Figures a run
    cannot support (no records, no CKA) are skipped. Returns the written paths.
    """
    runs = list(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if not runs:
        return written
    recorded = [r for r in runs if len(r.rounds)]
    with paper_style():
        if recorded:
            data = tidy(recorded)
            present = set(map(str, data["metric"].unique()))
            for metric in PROFILE_METRICS:
                if metric in present:
                    ax = layer_profile(data, metric)
                    written += _save(ax.figure, out, f"layer_profile_{metric}")
            first = recorded[0]
            first_label = run_labels(recorded)[0]
            ax = layer_heatmap(data[data["run"] == first_label], "relative_variance")
            written += _save(ax.figure, out, "layer_heatmap_relative_variance")
            if any(len(r.cka_rounds) for r in recorded):
                ax = cka_by_layer(recorded)
                written += _save(ax.figure, out, "cka_by_layer")
            heads = [ly for ly in first.layers if ly.group == "head"]
            chosen = [heads[-1] if heads else first.layers[-1], first.layers[0]]
            for ly in dict.fromkeys(chosen):
                grid = cosine_clustermap(first, ly.name)
                written += _save(grid.figure, out, f"cosine_clustermap_{ly.label}")
        runs_with_metrics = [r for r in runs if r.num_rounds]
        if runs_with_metrics:
            ax = accuracy_curves(runs_with_metrics)
            written += _save(ax.figure, out, "accuracy_curves")
        ax = partition_histogram(runs[0])
        written += _save(ax.figure, out, "partition_histogram")
    return written
