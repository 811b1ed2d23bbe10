"""Write every figure a set of runs supports: :func:`write_figures`."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure, SubFigure

from driftscope.analysis.tables import tidy
from driftscope.figures.accuracy import accuracy_curves
from driftscope.figures.attribution import write_attribution_figures
from driftscope.figures.chosen_layers import chosen_layers_map, has_chosen_layers
from driftscope.figures.cka import cka_by_layer
from driftscope.figures.clustermap import cosine_clustermap
from driftscope.figures.labels import run_labels
from driftscope.figures.lora import has_lora, lora_factors
from driftscope.figures.partition import partition_histogram
from driftscope.figures.profile import layer_heatmap, layer_profile
from driftscope.figures.style import DPI, paper_style
from driftscope.metrics import headline_metrics
from driftscope.runfile.reader import Run

__all__ = ["write_figures"]


def _save(fig: Figure | SubFigure, out_dir: Path, name: str) -> list[Path]:
    assert isinstance(fig, Figure)  # the axes' own figure, not a subfigure
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    try:
        fig.savefig(paths[0], dpi=DPI, bbox_inches="tight")
        fig.savefig(paths[1], bbox_inches="tight")
    finally:
        plt.close(fig)
    return paths


def write_figures(runs: Sequence[Run], out_dir: str | os.PathLike) -> list[Path]:
    """Write every figure the runs support, each as PNG (200 dpi) and PDF, into ``out_dir``.

    ``layer_profile_<metric>`` (each ``headline`` metric of METRICS the runs have: relative
    variance, drift diversity, cosine divergence, and CKA when recorded), ``layer_heatmap_relative_variance`` (one per recorded run,
    ``_<run label>`` added when there are several), ``cka_by_layer``,
    ``cosine_clustermap_<layer>`` (the head's last layer and the first layer of the first
    recorded run), ``label_alignment_profile`` and ``class_variance_heatmap`` (first recorded run;
    :mod:`driftscope.figures.attribution`), ``lora_factors`` (the first recorded run, if it has
    LoRA adapters: :mod:`driftscope.figures.lora`), ``accuracy_curves``, ``partition_histogram`` (first
    run) and ``chosen_layers`` (the first run whose algorithm chose its control-variate layers,
    fedpvr_auto). Figures a run
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
            for metric in headline_metrics():
                if metric in present:
                    ax = layer_profile(data, metric)
                    written += _save(ax.figure, out, f"layer_profile_{metric}")
            first = recorded[0]
            labels = run_labels(recorded)
            for label in labels:  # one per run, titled with it (one figure would name one run)
                ax = layer_heatmap(data[data["run"] == label], "relative_variance")
                suffix = "" if len(labels) == 1 else "_" + re.sub(r"[^A-Za-z0-9.+-]+", "_", label)
                written += _save(ax.figure, out, f"layer_heatmap_relative_variance{suffix}")
            if any(len(r.cka_rounds) for r in recorded):
                ax = cka_by_layer(recorded)
                written += _save(ax.figure, out, "cka_by_layer")
            heads = [ly for ly in first.layers if ly.group == "head"]
            chosen = [heads[-1] if heads else first.layers[-1], first.layers[0]]
            for ly in dict.fromkeys(chosen):
                grid = cosine_clustermap(first, ly.name)
                written += _save(grid.figure, out, f"cosine_clustermap_{ly.label}")
            written += write_attribution_figures(first, out)
            if has_lora(first):
                written += _save(lora_factors(first), out, "lora_factors")
        runs_with_metrics = [r for r in runs if r.num_rounds]
        if runs_with_metrics:
            ax = accuracy_curves(runs_with_metrics)
            written += _save(ax.figure, out, "accuracy_curves")
        if runs[0].has_label_histogram:  # a recorded Flower app may not report its labels
            ax = partition_histogram(runs[0])
            written += _save(ax.figure, out, "partition_histogram")
        auto = [r for r in runs if has_chosen_layers(r) and r.num_rounds]
        if auto:
            ax = chosen_layers_map(auto[0])
            written += _save(ax.figure, out, "chosen_layers")
    return written
