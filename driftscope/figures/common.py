"""Layer axes shared by the per-layer figures: model order, head shading, ticks, legends."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.transforms import blended_transform_factory

from driftscope.analysis.tables import tidy
from driftscope.runfile.reader import Run

HEAD_COLOR = "0.88"
ROTATE_ABOVE = 8  # rotate layer tick labels when more layers than this share the axis
LEGEND_CHARS = 60  # characters (handles included) that fit in one legend row at 7 pt
HEADROOM = 0.09  # share of a layer axis' height kept free at the top for the "head" label


def as_runs(runs: Run | Sequence[Run]) -> list[Run]:
    return [runs] if isinstance(runs, Run) else list(runs)


def as_tidy(data: Run | Sequence[Run] | pd.DataFrame) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        if "run" not in data.columns:
            raise ValueError(
                "a tidy table needs a 'run' column: build it with driftscope.analysis.tidy(runs)"
            )
        return data
    return tidy(data)


def layer_order(df: pd.DataFrame) -> tuple[list[str], set[str]]:
    """Layer labels in model order (order of first appearance) and the labels in the head."""
    first = df.drop_duplicates("label")
    labels = [str(x) for x in first["label"]]
    head = {str(lab) for lab, g in zip(first["label"], first["group"]) if g == "head"}
    return labels, head


def metric_rows(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    sub = df[df["metric"] == metric]
    if not len(sub):
        have = ", ".join(sorted(map(str, df["metric"].unique()))) or "none"
        raise ValueError(f"no '{metric}' in the table (metrics: {have})")
    return sub


def head_spans(labels: Sequence[str], head: set[str]) -> list[tuple[int, int]]:
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


def add_headroom(ax: Axes, frac: float = HEADROOM) -> None:
    """Raise the top y limit so the data stay below the top ``frac`` of the axes (where the
    "head" label sits); works on linear and log axes."""
    bottom, top = ax.get_ylim()
    if ax.get_yscale() == "log" and bottom > 0 and top > 0:
        lo, hi = np.log10(bottom), np.log10(top)
        ax.set_ylim(bottom, 10 ** (lo + (hi - lo) / (1 - frac)))
    else:
        ax.set_ylim(bottom, bottom + (top - bottom) / (1 - frac))


def shade_head(ax: Axes, labels: Sequence[str], head: set[str]) -> None:
    """Shade the head layers of a categorical x axis (positions 0..n-1), label them "head" at
    the top, and leave headroom there for the label."""
    spans = head_spans(labels, head)
    if spans:
        add_headroom(ax)
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


def layer_ticks(ax: Axes, labels: Sequence[str], head: set[str], axis: str = "x") -> None:
    """One tick per layer with its short label; head labels bold; rotated when crowded."""
    ticks = np.arange(len(labels))
    if axis == "x":
        ax.set_xticks(ticks, list(labels))
        texts = ax.get_xticklabels()
        if len(labels) > ROTATE_ABOVE:
            for t in texts:
                t.set_rotation(45)
                t.set_horizontalalignment("right")
                t.set_rotation_mode("anchor")
    else:
        texts = ax.get_yticklabels()
    for t in texts:
        if t.get_text() in head:
            t.set_fontweight("bold")


def legend_columns(texts: Sequence[str]) -> int:
    """Columns for a legend above a single-column figure: at most 3, fewer for long entries,
    and an even split of 4 entries."""
    n = len(texts)
    longest = max((len(t) for t in texts), default=0)
    ncol = max(1, min(n, 3, LEGEND_CHARS // (longest + 4)))
    return 2 if n == 4 and ncol >= 2 else ncol


def legend_above(ax: Axes, title: str | None = None) -> None:
    """Move the axes' legend above the plot, out of the data."""
    legend = ax.get_legend()
    if legend is None:
        return
    texts = [t.get_text() for t in legend.texts]
    sns.move_legend(
        ax,
        "lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=legend_columns(texts),
        title=title,
        frameon=False,
        columnspacing=1.0,
        handletextpad=0.4,
    )
