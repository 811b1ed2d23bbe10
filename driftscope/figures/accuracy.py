"""Test accuracy per round, with communication per round in the legend: :func:`accuracy_curves`."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from driftscope.analysis.labels import config_value
from driftscope.analysis.tables import communication_factor
from driftscope.figures.common import as_runs, legend_above
from driftscope.figures.labels import COMMUNICATION_TITLE, order_labels, run_labels
from driftscope.figures.style import new_ax, palette
from driftscope.runfile.reader import Run

__all__ = ["accuracy_curves"]


def accuracy_curves(
    runs: Run | Sequence[Run], ax: Axes | None = None, metric: str = "test_accuracy"
) -> Axes:
    """Test accuracy against communication round, one line per condition (algorithm).

    Seeds of one condition are drawn as their mean with a min-max band. Legend entries read
    ``"FedPVR (2.1x)"``: communication per round in model copies per participating client, down
    + up (:func:`~driftscope.analysis.communication_factor`; FedAvg 2.0x, SCAFFOLD 4.0x), like
    the paper's Figure 1; the legend's title says so. A run
    that diverged (or failed, or was interrupted) ends in a cross and says so in the legend.
    """
    runs = as_runs(runs)
    conditions = run_labels(runs, unique=False)
    order = order_labels(conditions, [config_value(r, "train", "algorithm") for r in runs])
    groups: dict[str, list[Run]] = {cond: [] for cond in order}
    for run, cond in zip(runs, conditions):
        groups[cond].append(run)
    colors = palette(len(groups))
    ax = new_ax(ax)
    for color, (cond, members) in zip(colors, groups.items()):
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
    legend_above(ax, title=COMMUNICATION_TITLE)
    return ax
