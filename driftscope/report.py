"""Plain-text reports for the terminal: the per-layer summary and a run file's contents."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from driftscope.metrics import headline_metrics
from driftscope.reader import Run


def format_summary(run: Run, summary: pd.DataFrame) -> str:
    """Per-layer drift table, layers in model order, head rows marked with '*'."""
    c = run.config
    lines = [
        f"{run.path.name}: {c['train']['algorithm']} on {c['data']['dataset']} ({c['model']['name']}), "
        f"{c['data']['partition']}"
        + (f" alpha={c['data']['alpha']:g}" if c["data"]["partition"] == "dirichlet" else "")
        + f", {len(run.clients)} clients, {run.num_rounds} rounds ({run.status})",
        f"per-layer drift over {len(run.rounds)} recorded rounds (ratios of sums; CKA = mean linear "
        "CKA over client pairs); * = head",
        "",
    ]
    table = summary.copy()
    table.insert(0, " ", np.where(table["group"] == "head", "*", ""))
    cols = [" ", "label", "layer", "group", "numel", *headline_metrics()]
    table = table[[col for col in cols if col in table]]
    lines.append(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if len(table) and "relative_variance" in summary:
        by = summary.groupby("group")[["relative_variance", "drift_diversity", "cka"]].mean()
        if {"head", "body"} <= set(by.index):
            lines += [
                "",
                "mean over layers       body      head",
                *(
                    f"{metric:<20} {by.loc['body', metric]:8.4f}  {by.loc['head', metric]:8.4f}"
                    for metric in ("relative_variance", "drift_diversity", "cka")
                ),
            ]
    m = run.metrics
    if len(m):
        last = m.iloc[-1]
        lines += [
            "",
            f"final test accuracy {last.test_accuracy:.4f}; communication per round "
            f"{run.bytes_per_round / 1e6:.3f} MB (down + up)",
        ]
    return "\n".join(lines)


def format_inspect(run: Run) -> str:
    """What a run file holds: config, environment, layers, rounds and datasets with sizes."""
    lines = [
        f"{run.path}",
        f"  status: {run.status}" + (f" ({run.status_message})" if run.status_message else ""),
    ]
    lines.append(
        f"  schema: {run.file.attrs['format']} v{int(run.file.attrs['schema_version'])}, created {run.file.attrs['created']}"
    )
    lines.append("  config:")
    for section, values in run.config.items():
        if isinstance(values, dict):
            lines.append(
                f"    [{section}] " + ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items())
            )
        else:
            lines.append(f"    {section} = {json.dumps(values)}")
    env = run.environment
    lines.append("  environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    lines.append(
        f"  clients: {len(run.clients)}; rounds committed: {run.num_rounds}; "
        f"recorded: {len(run.rounds)}; with updates: {len(run.update_rounds)}; with CKA: {len(run.cka_rounds)}"
    )
    lines.append(f"  layers ({len(run.layers)}, head share {run.head_share:.2%}):")
    for layer in run.layers:
        lines.append(
            f"    {layer.label:<6} {layer.name:<20} {layer.kind:<8} {layer.group:<5} {layer.numel:>10,d} params"
        )
    ds = run.describe_datasets()
    lines.append(f"  datasets ({len(ds)}, {ds['bytes'].sum() / 1e6:.2f} MB stored):")
    groups = ds.assign(top=ds["dataset"].str.split("/").str[:2].str.join("/"))
    for _, sub in groups.groupby("top", sort=False):
        first = sub.iloc[0]
        extra = f" (+{len(sub) - 1} more like it)" if len(sub) > 1 else ""
        lines.append(
            f"    {first['dataset']:<40} {first['shape']!s:<22} {first['dtype']:<8} {sub['bytes'].sum() / 1e6:9.3f} MB{extra}"
        )
    return "\n".join(lines)


def markdown_table(df: pd.DataFrame, float_format: str = "{:.3f}") -> str:
    """A GitHub-markdown table of ``df`` (no extra dependency)."""

    def cell(v: object) -> str:
        return float_format.format(v) if isinstance(v, float) else str(v)

    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body])


# ------------------------------------------------------------------ experiments (compare, reproduce)
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
                "communication / round vs FedAvg": f"{s.communication_vs_baseline:.3f}x",
            }
        )
    return pd.DataFrame(rows)


def _mean_std(mean: float, std: float, n: int, fmt: str) -> str:
    """'mean ± sample std' over seeds; the mean alone for a single seed."""
    if n < 2:
        return format(mean, fmt)
    return f"{format(mean, fmt)} ± {format(std, fmt)}"


def format_reproduce(result) -> str:  # result: driftscope.experiments.ReproduceResult
    """The printed report of ``driftscope reproduce``: per-layer drift head vs body, then accuracy
    and communication, then where the figures went."""

    def table(df: pd.DataFrame) -> str:
        return df.to_string(index=False, float_format=lambda v: f"{v:.3f}")

    layers = result.layers.copy()
    layers.insert(0, " ", ["*" if g == "head" else "" for g in layers["group"]])
    lines = [
        "\n== Where drift lives: FedAvg, per layer (aggregated over rounds; * = head) ==",
        table(layers.drop(columns="group")),
        "\nhead vs body (mean over layers of each group):",
        table(result.head_vs_body),
        "\n== Accuracy and communication ==",
        table(result.accuracy),
    ]
    if result.figures:
        lines.append(f"\nwrote {len(result.figures)} figure files to {result.figures_dir}")
    return "\n".join(lines)
