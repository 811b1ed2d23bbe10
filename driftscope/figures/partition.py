"""Each client's label histogram: :func:`partition_histogram`."""

from __future__ import annotations

import numpy as np
import seaborn as sns
from matplotlib.axes import Axes

from driftscope.figures.labels import run_label
from driftscope.figures.style import COLUMN_WIDTH, new_ax, palette, quiet_seaborn
from driftscope.runfile.reader import Run

__all__ = ["partition_histogram"]


def partition_histogram(run: Run, ax: Axes | None = None) -> Axes:
    """Each client's label histogram.

    Up to 10 classes: one stacked horizontal bar per client (client 0 on top), one colour per
    class. More classes: a client x class heatmap, counts annotated when the grid is small.
    """
    hist = run.label_histogram
    counts = hist.to_numpy()
    n_clients, n_classes = counts.shape
    ax = new_ax(ax, (COLUMN_WIDTH, max(1.6, 0.8 + 0.16 * n_clients)))
    if n_classes <= 10:
        colors = palette(n_classes)
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
        with quiet_seaborn():
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
