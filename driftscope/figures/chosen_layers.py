"""Which layers carried control variates, round by round (fedpvr_auto): :func:`chosen_layers_map`."""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm

from driftscope.figures.style import new_ax
from driftscope.runfile.reader import Run

__all__ = ["chosen_layers_map", "has_chosen_layers"]


def has_chosen_layers(run: Run) -> bool:
    """Whether ``run`` recorded a per-round layer choice (``algorithm/chosen_layers``)."""
    return "chosen_layers" in run.algorithm_record_keys


def chosen_layers_map(run: Run, ax: Axes | None = None) -> Axes:
    """Layer x round map: colour is each layer's share of the round's total update variance
    (``layer_variance`` / its sum over layers, log scale), a dot marks the layers that carried
    control variates in that round (``chosen_layers``). The output layer is at the top; a dashed
    line marks the first round with a choice, i.e. the end of the FedAvg warm-up."""
    chosen = run.algorithm_record("chosen_layers")
    variance = run.algorithm_record("layer_variance")
    ax = new_ax(ax)
    rounds = chosen.index.to_numpy()
    labels = list(chosen.columns)[::-1]  # output layer first (top row)
    total = variance.sum(axis=1).to_numpy()[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        share = (variance.to_numpy() / total).T[::-1]
    share = np.where(share > 0, share, np.nan)
    finite = share[np.isfinite(share)]
    norm = LogNorm(vmin=max(finite.min(), 1e-4), vmax=1.0) if finite.size else None
    mesh = ax.pcolormesh(
        np.append(rounds, rounds[-1] + 1) - 0.5 if len(rounds) else [0, 1],
        np.arange(len(labels) + 1) - 0.5,
        share,
        cmap="viridis",
        norm=norm,
        shading="flat",
    )
    ax.invert_yaxis()
    rr, ll = np.nonzero(chosen.to_numpy().T[::-1].astype(bool))
    ax.scatter(
        rounds[ll],
        rr,
        s=6,
        c="white",
        edgecolors="black",
        linewidths=0.4,
        label="control variates",
        zorder=3,
    )
    any_chosen = np.flatnonzero(chosen.to_numpy().any(axis=1))
    if len(any_chosen):
        ax.axvline(rounds[any_chosen[0]] - 0.5, color="white", ls="--", lw=0.8)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("round")
    ax.set_ylabel("layer (output at top)")
    bar = ax.figure.colorbar(mesh, ax=ax, pad=0.02)
    bar.set_label("share of update variance")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False, fontsize="small")
    return ax
