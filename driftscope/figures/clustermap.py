"""Client x client cosine of one layer's updates, clustered: :func:`cosine_clustermap`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import squareform

from driftscope.figures.labels import run_label
from driftscope.figures.style import COLUMN_WIDTH, quiet_seaborn
from driftscope.metrics.drift import pairwise_cosine
from driftscope.runfile.reader import Run

__all__ = ["cosine_clustermap"]

DOMINANT_SHARE = 0.25  # a class is "dominant" for a client above this share of its samples


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
        if not hist.shape[1]:  # labels not reported (a recorded Flower app)
            names.append(f"client {int(c)}")
            continue
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
    with quiet_seaborn():
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
    if hist.shape[1]:  # the row labels' classes, said on the figure
        hm.set_ylabel(
            f"client: its dominant classes (\u2265 {DOMINANT_SHARE:.0%} of its samples)", fontsize=7
        )
    else:
        hm.set_ylabel("client")
    hm.tick_params(axis="both", length=0, pad=1)
    hm.tick_params(axis="x", rotation=0)
    hm.tick_params(axis="y", rotation=0)
    grid.ax_cbar.set_title("cos", fontsize=7, pad=2)
    grid.ax_cbar.tick_params(labelsize=7, length=1.5)
    grid.figure.suptitle(
        f"{run_label(run)}: {ly.label} update cosine, round {r}", y=1.02, fontsize=8
    )
    return grid
