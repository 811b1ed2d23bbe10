"""CKA between the clients' models, per layer: :func:`cka_by_layer`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

from driftscope.analysis.labels import config_value
from driftscope.figures.common import as_runs, layer_ticks, legend_above, shade_head
from driftscope.figures.labels import order_labels, run_labels
from driftscope.figures.style import new_ax, palette, quiet_seaborn
from driftscope.runfile.reader import Run

__all__ = ["cka_by_layer"]


def cka_by_layer(
    runs: Run | Sequence[Run],
    kind: str = "linear",
    ax: Axes | None = None,
    last_round: bool = False,
) -> Axes:
    """Per layer, the distribution of CKA over client pairs (the off-diagonal entries of the
    client block of :meth:`Run.cka`), pooled over the CKA rounds (or only the last), one box per
    run (hue), head shaded. Runs without probe CKA are left out; none with CKA is an error."""
    runs = as_runs(runs)
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
        algorithms.append(config_value(run, "train", "algorithm"))
        skipped = run.cka_skipped
        for layer in run.layers:
            if layer.name in skipped:  # probe CKA could not measure it (the reason is stored)
                continue
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
    hues = order_labels(hues, algorithms)
    ax = new_ax(ax)
    with quiet_seaborn():
        sns.boxplot(
            data=df,
            x="label",
            y="value",
            hue="run",
            order=order,
            hue_order=hues,
            palette=palette(len(hues)),
            width=0.75,
            gap=0.1 if len(hues) > 1 else 0,
            linewidth=0.6,
            fliersize=1.2,
            ax=ax,
        )
    shade_head(ax, order, head)
    layer_ticks(ax, order, head)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"{'' if kind == 'linear' else kind + ' '}CKA, client pairs")
    legend_above(ax)
    return ax
