"""Plain-text reports of experiments over several runs (``compare``, ``reproduce``, the LoRA
scenario): markdown tables of accuracy, communication, paired differences and where drift lives."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from driftscope.experiments.report import (
    EVIDENCE_NAMES,
    diversity_note,
    evidence_title,
    format_evidence,
)

if TYPE_CHECKING:
    from driftscope.experiments.reproduce import ReproduceResult


def markdown_table(df: pd.DataFrame, float_format: str = "{:.3f}") -> str:
    """A GitHub-markdown table of ``df`` (no extra dependency)."""

    def cell(v: object) -> str:
        return float_format.format(v) if isinstance(v, float) else str(v)

    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def format_compare(summary: pd.DataFrame, target: float) -> pd.DataFrame:
    """``experiments.summarize``'s numbers as the printed table: final accuracy and rounds to
    ``target`` as 'mean ± sample std' over seeds (diverged seeds counted, not averaged) and
    communication per round relative to the baseline."""
    rows = []
    for s in summary.itertuples(index=False):
        diverged = list(s.diverged_rounds)
        rounds = ", ".join(str(r) for r in diverged)
        if len(diverged) == s.seeds:
            final = f"diverged in {s.seeds}/{s.seeds} seeds (rounds {rounds})"
        else:
            final = _mean_std(s.final_mean, s.final_std, s.finished, ".3f")
            if diverged:
                final += f" ({len(diverged)}/{s.seeds} seeds diverged, rounds {rounds})"
        rows.append(
            {
                "algorithm": s.algorithm,
                "final test accuracy": final,
                f"rounds to {target:.0%}": (
                    _mean_std(s.rounds_mean, s.rounds_std, s.reached, ".1f")
                    if s.reached == s.seeds
                    else f"{s.reached}/{s.seeds} seeds reached"
                ),
                "communication / round vs FedAvg": (
                    f"{s.communication_vs_baseline:.3f}x"
                    if np.isfinite(s.communication_vs_baseline)
                    else "- (no FedAvg arm)"
                ),
            }
        )
    return pd.DataFrame(rows)


def format_paired(
    final: pd.DataFrame, last: pd.DataFrame | None = None, labels: dict[str, str] | None = None
) -> pd.DataFrame:
    """``experiments.paired`` of the final accuracy (and of the mean of the last rounds,
    ``last``) as the printed table, differences in accuracy points (1 point = 0.01)."""
    labels = labels or {}

    def interval(r: object) -> str:
        mean, low, high = (100 * getattr(r, k) for k in ("mean", "low", "high"))
        if not np.isfinite(mean):
            return "-"
        if not np.isfinite(low):
            return f"{mean:+.2f}"
        return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"

    rows = []
    later = {} if last is None else {(r.arm, r.reference): r for r in last.itertuples()}
    for r in final.itertuples():
        row = {
            "comparison": f"{labels.get(r.arm, r.arm)} - {labels.get(r.reference, r.reference)}",
            "what it measures": r.question,
            "per-seed difference (points)": " ".join(f"{100 * d:+.1f}" for d in r.differences)
            + ("" if r.pairs == r.seeds else f" ({r.seeds - r.pairs} seeds diverged)"),
            "mean [95% CI]": interval(r),
            "p (paired t)": "-" if not np.isfinite(r.p) else f"{r.p:.3f}",
            "higher in": f"{r.wins}/{r.pairs}",
        }
        if (r.arm, r.reference) in later:
            row["last 5 rounds: mean [95% CI]"] = interval(later[r.arm, r.reference])
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_std(mean: float, std: float, n: int, fmt: str) -> str:
    """'mean ± sample std' over seeds; the mean alone for a single seed."""
    if n < 2:
        return format(mean, fmt)
    return f"{format(mean, fmt)} ± {format(std, fmt)}"


ALIGNMENT_NOTE = (
    "Compare algorithms by alignment (pairwise cosine, CKA), not by relative variance alone: "
    "variance reduction shrinks the mean update, so a layer's relative variance can rise while its "
    "clients' updates become more aligned (docs/science.md)."
)


def format_reproduce(result: ReproduceResult) -> str:
    """The printed report of ``driftscope reproduce``: per-layer drift, head vs body pooled and
    per round, alignment per algorithm, then accuracy and communication, then where the figures
    went. Markdown tables, as docs/results.md shows them."""
    layers = result.layers
    cols = {
        "layer": [
            f"{lab} *" if g == "head" else lab for lab, g in zip(layers["label"], layers["group"])
        ]
    }
    for col in layers.columns.drop(["label", "group"]):
        metric, part = col.rsplit(" ", 1)
        name = f"{EVIDENCE_NAMES.get(metric, metric)} {'IID' if part == 'iid' else 'α=0.1'}"
        digits = 2 if metric == "relative_variance" else 3
        cols[name] = [f"{v:.{digits}f}" for v in layers[col]]
    gaps = result.head_vs_body
    evidence = format_evidence(gaps)
    evidence.insert(0, "partition", list(gaps["partition"]))
    acc = result.accuracy
    accuracy = pd.DataFrame(
        {
            "run": [result.labels.get(name, name) for name in acc["run"]],
            "final acc.": ["-" if np.isnan(v) else f"{v:.3f}" for v in acc["final acc"]],
            "best acc.": [f"{v:.3f}" for v in acc["best acc"]],
            "MB / round": [f"{v:.2f}" for v in acc["MB / round"]],
            "x FedAvg": [f"{v:.2f}" for v in acc["x FedAvg"]],
            "status": acc["status"],
        }
    )
    lines = [
        "\n== Where drift lives: FedAvg, per layer (pooled over rounds; * = head) ==",
        markdown_table(pd.DataFrame(cols)),
    ]
    if len(result.depth):
        lines.append(
            "\nrelative variance against depth (Spearman over the layers in model order; +1: it "
            "rises with every layer): "
            + "; ".join(
                f"{'α=0.1' if d.partition == 'alpha 0.1' else 'IID'} {d.all:.2f} over all layers, "
                f"{d.body:.2f} through the body"
                for d in result.depth.itertuples(index=False)
            )
        )
    if len(gaps):
        lines += [
            "\n" + evidence_title(gaps) + ":",
            markdown_table(evidence),
            diversity_note(),
        ]
    if len(result.alignment):
        lines += [
            "\n== Comparing algorithms, α=0.1: alignment of the clients' updates ==",
            markdown_table(_alignment_table(result.alignment)),
            ALIGNMENT_NOTE,
        ]
    lines += ["\n== Accuracy and communication ==", markdown_table(accuracy)]
    if result.figures:
        lines.append(f"\nwrote {len(result.figures)} figure files to {result.figures_dir}")
    return "\n".join(lines)


def _alignment_table(alignment: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "run": [
                f"{r} (rounds 0-{n - 1}, then diverged)" if d else r
                for r, n, d in zip(alignment["run"], alignment["rounds"], alignment["diverged"])
            ]
        }
    )
    for group in ("head", "body"):
        for metric, digits in (("relative_variance", 2), ("mean_pairwise_cosine", 3), ("cka", 3)):
            out[f"{group} {EVIDENCE_NAMES[metric]}"] = [
                "-" if not np.isfinite(v) else f"{v:.{digits}f}"
                for v in alignment[f"{group} {metric}"]
            ]
    return out
