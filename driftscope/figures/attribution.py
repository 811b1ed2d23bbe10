"""Figures of which labels drive a run's drift (tables from :mod:`driftscope.analysis.attribution`).

========================================  ===========================================================
function                                  what it shows
========================================  ===========================================================
:func:`label_alignment_profile`           per layer (model order), the label alignment of the clients'
                                          updates over rounds (median, interquartile bar, one dot per
                                          round; filled dots: p <= 0.05), the cumulative updates'
                                          alignment as a diamond; head shaded
:func:`class_variance_heatmap`            the output layer's update variance per class and stored
                                          round, as a share of the layer's variance
:func:`write_attribution_figures`         both, as PNG and PDF
========================================  ===========================================================

Like every driftscope figure these read only run files and return the Axes they drew on. They
depend on nothing else in :mod:`driftscope.figures`; ``write_figures`` calls
:func:`write_attribution_figures` for the first recorded run inside its paper style.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from driftscope.analysis.attribution import (
    SIGNIFICANCE,
    class_variance_table,
    label_alignment_summary,
    label_alignment_table,
)
from driftscope.analysis.labels import run_label
from driftscope.errors import RunFileError
from driftscope.runfile.reader import Run

__all__ = ["class_variance_heatmap", "label_alignment_profile", "write_attribution_figures"]

FIGSIZE = (3.4, 2.3)  # one column of a two-column paper, as the other figures
HEAD_COLOR = "0.88"
DPI = 200


def _ax(ax: Axes | None, figsize: tuple[float, float] = FIGSIZE) -> Axes:
    if ax is not None:
        return ax
    _, ax = plt.subplots(figsize=figsize)
    return ax


def _title(run: Run) -> str:
    return run_label(run)


def label_alignment_profile(
    run: Run,
    ax: Axes | None = None,
    table: pd.DataFrame | None = None,
    summary: pd.DataFrame | None = None,
    permutations: int = 999,
) -> Axes:
    """Label alignment per layer: how far the clients' disagreement follows their labels.

    ``table``/``summary``: precomputed :func:`label_alignment_table` /
    :func:`label_alignment_summary` of ``run`` (computed if omitted).
    """
    if table is None:
        table = label_alignment_table(run, permutations=permutations)
    if summary is None:
        summary = label_alignment_summary(run, permutations=permutations)
    ax = _ax(ax)
    labels = [ly.label for ly in run.layers]
    head = [i for i, ly in enumerate(run.layers) if ly.group == "head"]
    if head:
        ax.axvspan(min(head) - 0.5, max(head) + 0.5, color=HEAD_COLOR, lw=0, zorder=0)
        ax.text(
            (min(head) + max(head)) / 2,
            0.97,
            "head",
            ha="center",
            va="top",
            fontsize=7,
            style="italic",
            color="0.3",
            transform=ax.get_xaxis_transform(),
        )
    wide = table.pivot_table(index=["round", "label"], columns="metric", values="value")
    color = sns.color_palette("colorblind")[0]
    rng = np.random.default_rng(0)  # horizontal jitter only
    for i, label in enumerate(labels):
        if label not in wide.index.get_level_values("label"):
            continue
        sub = wide.xs(label, level="label")
        stat = sub["label_alignment"].to_numpy()
        sig = sub["label_alignment_p"].to_numpy() <= SIGNIFICANCE
        x = i + rng.uniform(-0.18, 0.18, len(stat))
        ax.scatter(x[sig], stat[sig], s=5, color=color, alpha=0.45, lw=0, zorder=2)
        ax.scatter(x[~sig], stat[~sig], s=5, facecolor="none", edgecolor=color, alpha=0.6, lw=0.5)
        finite = stat[np.isfinite(stat)]
        if len(finite):
            q1, med, q3 = np.percentile(finite, [25, 50, 75])
            ax.plot([i, i], [q1, q3], color="0.15", lw=1.4, zorder=3)
            ax.plot(i, med, "o", color="0.15", ms=3.5, zorder=4)
    cum = summary.set_index("label")["label_alignment_cumulative"].reindex(labels).to_numpy()
    diamond = sns.color_palette("colorblind")[3]
    handles = [
        Line2D([], [], ls="", marker="o", ms=2.5, color=color, alpha=0.6,
               label=f"one round, p \u2264 {SIGNIFICANCE:g}"),
        Line2D([], [], ls="", marker="o", ms=2.5, mfc="none", mec=color, mew=0.5,
               label=f"one round, p > {SIGNIFICANCE:g}"),
        Line2D([0], [0], color="0.15", lw=1.4, marker="o", ms=3.5,
               label="median, middle 50% of rounds"),
    ]  # fmt: skip
    if np.isfinite(cum).any():
        ax.plot(np.arange(len(labels)), cum, "D", color=diamond, ms=3.5, zorder=5)
        handles.append(
            Line2D([], [], ls="", marker="D", ms=3.5, color=diamond,
                   label="updates summed over all rounds")
        )  # fmt: skip
    ax.legend(
        handles=handles, loc="lower left", fontsize=5.5, frameon=False, handletextpad=0.3, ncol=2,
        columnspacing=0.8,
    )  # fmt: skip
    ax.axhline(0, color="0.5", lw=0.6, zorder=1)
    ax.set_xticks(np.arange(len(labels)), labels)
    for tick, ly in zip(ax.get_xticklabels(), run.layers):
        if ly.group == "head":
            tick.set_fontweight("bold")
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.set_ylim(-1.05, 1.15)
    ax.set_xlabel("layer")
    ax.set_ylabel("label alignment (Spearman)")
    ax.set_title(f"{_title(run)}: update cosine vs label cosine", fontsize=8)
    return ax


def class_variance_heatmap(
    run: Run, ax: Axes | None = None, table: pd.DataFrame | None = None, layer: str | None = None
) -> Axes:
    """Class x stored round: each class's share of the output layer's update variance.

    Row labels give each class's ``label_share_variance`` rank context: ``"3 (0.08)"`` is class
    3 whose share of the clients' samples varies with variance 0.08 across clients.
    """
    if table is None:
        table = class_variance_table(run, layer)
    if not len(table):
        raise ValueError(
            f"{run.path.name} stores no client updates of the output layer "
            "(record.updates_every = 0): record updates to see the per-class variance"
        )
    share = table[table["metric"] == "class_variance_share"].pivot(
        index="class", columns="round", values="value"
    )
    spread = table[table["metric"] == "label_share_variance"].groupby("class")["value"].mean()
    share.index = [f"{k} ({spread.loc[k]:.2f})" for k in share.index]
    n_classes, n_rounds = share.shape
    ax = _ax(ax, (max(3.4, 0.9 + 0.12 * n_rounds), max(2.0, 0.6 + 0.16 * n_classes)))
    sns.heatmap(
        share,
        ax=ax,
        cmap="rocket_r",
        vmin=0.0,
        cbar_kws={"label": "share of variance"},
        xticklabels="auto",
        yticklabels=True,
    )
    ax.set_xlabel("round")
    ax.set_ylabel("class (label-share variance)")
    ax.tick_params(axis="y", rotation=0)
    label = str(table["label"].iloc[0])
    ax.set_title(f"{_title(run)}: {label} update variance by class", fontsize=8)
    return ax


def write_attribution_figures(run: Run, out_dir: str | os.PathLike) -> list[Path]:
    """``label_alignment_profile`` and (when updates are stored) ``class_variance_heatmap`` of
    one run that knows its clients' labels, as PNG (200 dpi) and PDF in ``out_dir``; returns the written paths.

    Draws in the current matplotlib style: call it inside ``figures.paper_style()`` for
    print-ready files (``write_figures`` does).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if not len(run.rounds) or not run.has_label_histogram:  # no labels: nothing to attribute
        return written
    try:
        table = class_variance_table(run)
    except RunFileError:  # updates of the output layer not stored: skip that figure
        table = pd.DataFrame()
    figures = [("label_alignment_profile", label_alignment_profile(run).figure)]
    if len(table):
        ax = class_variance_heatmap(run, table=table)
        figures.append(("class_variance_heatmap", ax.figure))
    for name, fig in figures:
        assert isinstance(fig, Figure)  # the axes' own figure, not a subfigure
        paths = [out / f"{name}.png", out / f"{name}.pdf"]
        try:
            fig.savefig(paths[0], dpi=DPI, bbox_inches="tight")
            fig.savefig(paths[1], bbox_inches="tight")
        finally:
            plt.close(fig)
        written += paths
    return written
