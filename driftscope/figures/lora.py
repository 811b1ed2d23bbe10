"""LoRA adapters across clients: :func:`lora_factors` (A against B per adapted module, and the
aggregation residual over rounds) and :func:`write_lora_figures` (one figure per condition of the
LoRA scenario)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from driftscope.analysis.lora import lora_module_summary, lora_table
from driftscope.figures.style import DPI, palette, paper_style
from driftscope.metrics.lora import lora_pairs
from driftscope.runfile.reader import Run, open_run

__all__ = ["has_lora", "lora_factors", "write_lora_figures"]


def has_lora(run: Run) -> bool:
    """Whether ``run`` has LoRA factor pairs (PEFT's names) and recorded rounds."""
    return bool(lora_pairs(p.name for p in run.params)) and bool(len(run.rounds))


def lora_factors(runs: Run | Sequence[Run], title: str | None = None) -> Figure:
    """Two panels over the runs (seeds of one condition, averaged): left, per adapted module,
    the relative variance of the A and of the B updates (pooled over rounds; log scale; dashed:
    the classifier head's); right, FedEx-LoRA's aggregation residual per round, one thin line per
    module and their mean in black."""
    runs = [runs] if isinstance(runs, Run) else list(runs)
    summary = pd.concat([lora_module_summary(r) for r in runs]).groupby("module", sort=False).mean()
    table = pd.concat([lora_table(r) for r in runs])
    residual = table.groupby(["module", "round"], sort=False)["lora_residual"].mean().unstack(0)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    x = np.arange(len(summary))
    colours = palette(2)
    left.bar(x - 0.2, summary["A_relative_variance"], 0.4, label="A", color=colours[0])
    left.bar(x + 0.2, summary["B_relative_variance"], 0.4, label="B", color=colours[1])
    left.axhline(summary["head_relative_variance"].iloc[0], color="k", ls="--", label="head")
    left.set_yscale("log")
    left.set_xticks(x, summary.index, rotation=60, ha="right", fontsize=7)
    left.set_ylabel(r"relative variance $V/\|m\|^2$")
    left.legend(frameon=False)
    for module in residual.columns:
        right.plot(residual.index, residual[module], lw=0.7, alpha=0.5)
    right.plot(residual.index, residual.mean(axis=1), color="k", lw=2, label="mean over modules")
    right.set_xlabel("round")
    right.set_ylabel("aggregation residual")
    right.legend(frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_lora_figures(
    paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike
) -> list[Path]:
    """``lora_factors_<condition>`` (PNG and PDF) for each condition among the run files
    ``paths`` (runs of one condition: same partition and alpha); returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = [open_run(p) for p in paths]
    written: list[Path] = []
    try:
        groups: dict[str, list[Run]] = {}
        for run in runs:
            data = run.config.data
            label = "iid" if data.partition == "iid" else f"{data.partition}_{data.alpha:g}"
            groups.setdefault(label, []).append(run)
        with paper_style():
            for label, group in groups.items():
                if not has_lora(group[0]):
                    continue
                fig = lora_factors(group, title=f"{label}, {len(group)} seed(s)")
                name = "lora_factors_" + re.sub(r"[^A-Za-z0-9.+-]+", "_", label)
                for path in (out / f"{name}.png", out / f"{name}.pdf"):
                    fig.savefig(path, dpi=DPI, bbox_inches="tight")
                    written.append(path)
                plt.close(fig)
    finally:
        for run in runs:
            run.close()
    return written
