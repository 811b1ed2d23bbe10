"""Per-layer figures of one metric: :func:`layer_profile` (layers x conditions) and
:func:`layer_heatmap` (layers x rounds of one run)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.lines import Line2D

from driftscope.figures.common import (
    add_headroom,
    as_tidy,
    head_spans,
    layer_order,
    layer_ticks,
    legend_above,
    metric_rows,
    shade_head,
)
from driftscope.figures.labels import metric_label, metric_scale, order_labels
from driftscope.figures.style import (
    COLUMN_WIDTH,
    new_ax,
    palette,
    plain_log_ticks,
    quiet_seaborn,
)
from driftscope.metrics import METRICS
from driftscope.runfile.reader import Run

__all__ = ["layer_heatmap", "layer_profile", "profile_note"]

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
DODGE = 0.45  # share of a layer's slot that the conditions' markers spread over


#: the third line under a variance profile that draws runs of more than one algorithm
ACROSS_ALGORITHMS = (
    "across algorithms compare alignment (cosine, CKA):\n"
    "variance reduction also shrinks the mean update"
)


def spread_measure(metric: str) -> bool:
    """A measure of spread (a variance or a ratio of variances), which variance reduction changes
    through the mean update as well as through the clients' agreement."""
    m = METRICS.get(metric) if metric in METRICS else None
    return (m is not None and m.ratio is not None) or "variance" in metric


def profile_note(metric: str, seeds: bool = False, algorithms: int = 1) -> str:
    """What a layer-profile point and bar show, as written under the figure's x axis (two lines:
    one line was wider than the figure and clipped at both edges). Both are one statistic: the
    distribution of the single-round values. With runs of more than one ``algorithms`` on a spread
    measure, two more lines say which measures compare algorithms fairly."""
    pooled = "rounds" + (" and seeds" if seeds else "")
    m = METRICS.get(metric) if metric in METRICS else None
    analyze = "ratio of sums" if m is not None and m.ratio is not None else "mean"
    note = (
        f"marker: median of single {pooled}, bar: middle 50%\n"
        f"(analyze pools {pooled} as their {analyze})"
    )
    if algorithms > 1 and spread_measure(metric):
        note += "\n" + ACROSS_ALGORITHMS
    return note


def layer_profile(
    data: Run | Sequence[Run] | pd.DataFrame,
    metric: str = "relative_variance",
    ax: Axes | None = None,
    log: bool | None = None,
) -> Axes:
    """One drift metric per layer, layers in model order on the x axis, conditions side by side.

    Marker and bar show one statistic, the distribution of the single-round values (seeds of one
    condition pooled): the marker is their median, the bar their interquartile range, so the
    marker always lies on its bar. ``driftscope analyze`` (:func:`~driftscope.analysis.
    layer_summary`) pools rounds as a ratio of sums for a ratio metric, which weights the early
    rounds' large updates and can lie outside the bar; the x axis label says both. Head layers are shaded and
    labelled "head". ``data``: a Run, several Runs, or a :func:`~driftscope.analysis.tidy` table.
    ``log``: log y scale (default: for metrics with ``scale="log"`` and positive values).
    """
    df = as_tidy(data)
    rows = metric_rows(df, metric)
    labels, head = layer_order(rows)
    hue = "condition" if "condition" in rows.columns else "run"
    algorithms = rows["algorithm"] if "algorithm" in rows.columns else [""] * len(rows)
    hues = order_labels(list(map(str, rows[hue])), list(map(str, algorithms)))
    finite = rows.dropna(subset=["value"])
    quart = finite.groupby([hue, "label"])["value"].quantile([0.25, 0.5, 0.75]).unstack()
    pooled = quart[0.5]
    if log is None:
        positive = bool((finite["value"] > 0).all()) and bool((pooled.dropna() > 0).all())
        log = metric_scale(metric) == "log" and positive
    ax = new_ax(ax)
    colors = palette(len(hues))
    offsets = np.linspace(-DODGE / 2, DODGE / 2, len(hues)) if len(hues) > 1 else [0.0]
    handles = []
    for k, (cond, color, dx) in enumerate(zip(hues, colors, offsets)):
        x = np.arange(len(labels)) + dx
        y = np.array([pooled.get((cond, lab), np.nan) for lab in labels], dtype=np.float64)
        lo = np.array([quart[0.25].get((cond, lab), np.nan) for lab in labels])
        hi = np.array([quart[0.75].get((cond, lab), np.nan) for lab in labels])
        ax.vlines(x, lo, hi, color=color, lw=0.9, zorder=2)
        marker = MARKERS[k % len(MARKERS)]
        ax.plot(x, y, color=color, lw=0.9, marker=marker, ms=3.5, zorder=3)
        handles.append(Line2D([], [], color=color, lw=0.9, marker=marker, ms=3.5, label=cond))
    if log:
        ax.set_yscale("log")
        plain_log_ticks(ax.yaxis)
    if not head_spans(labels, head):
        add_headroom(ax)
    shade_head(ax, labels, head)
    layer_ticks(ax, labels, head)
    seeds = "run" in rows.columns and bool((rows.groupby(hue)["run"].nunique() > 1).any())
    n_algorithms = rows["algorithm"].nunique() if "algorithm" in rows.columns else 1
    ax.set_xlabel(f"layer\n{profile_note(metric, seeds, n_algorithms)}", fontsize=6.5)
    ax.set_ylabel(metric_label(metric))
    ax.legend(handles=handles)
    legend_above(ax)
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
    :func:`~driftscope.analysis.tidy` table holding a single run.
    """
    df = as_tidy(run_or_data)
    runs = list(dict.fromkeys(map(str, df["run"])))
    if len(runs) != 1:
        raise ValueError(
            f"layer_heatmap shows one run; the table holds {len(runs)}: select one with "
            "data[data['run'] == label]"
        )
    sub = metric_rows(df, metric)
    labels, head = layer_order(sub)
    grid = sub.pivot_table(index="label", columns="round", values="value", aggfunc="mean")
    grid = grid.reindex(index=labels)
    grid.columns = [int(c) for c in grid.columns]
    values = grid.to_numpy(dtype=np.float64)
    finite = values[np.isfinite(values)]
    if log is None:
        log = metric_scale(metric) == "log" and bool(len(finite)) and bool((finite > 0).all())
    norm = None
    if log:
        positive = finite[finite > 0]
        if len(positive):
            grid = grid.where(grid > 0)
            norm = LogNorm(vmin=float(positive.min()), vmax=float(positive.max()))
    ax = new_ax(ax, (COLUMN_WIDTH, max(1.8, 0.6 + 0.17 * len(labels))))
    with quiet_seaborn():
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
        colorbar = ax.collections[0].colorbar
        assert colorbar is not None  # heatmap drew one
        plain_log_ticks(colorbar.ax.yaxis)
    spans = head_spans(labels, head)
    for i0, _ in spans:
        if i0 > 0:
            ax.axhline(i0, color="white", lw=1.5)
    layer_ticks(ax, labels, head, axis="y")
    ax.set_xlabel("round")
    ax.set_ylabel("layer (head: bold, below the line)" if spans and spans[0][0] > 0 else "layer")
    ax.set_title(runs[0])
    return ax
