"""Plain-text reports for the terminal: the per-layer summary and a run file's contents."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from driftscope.errors import DriftscopeError
from driftscope.metrics import headline_metrics
from driftscope.runfile.reader import Run

if TYPE_CHECKING:
    from driftscope.experiments.reproduce import ReproduceResult


def _run_title(run: Run) -> str:
    try:
        c = run.config
        data = c.data
        what = (
            run.describe_what()
            or f"{c.train.algorithm} on {data.dataset} ({c.model.name}), {data.partition}"
            + (f" alpha={data.alpha:g}" if data.partition == "dirichlet" else "")
        ) + ", "
    except DriftscopeError as err:
        what = f"(config unreadable: {err}) "
    parts = []
    for label, get in (("clients", lambda: len(run.clients)), ("rounds", lambda: run.num_rounds)):
        try:
            parts.append(f"{get()} {label}")
        except DriftscopeError:
            parts.append(f"? {label}")
    return f"{run.path.name}: {what}{', '.join(parts)} ({run.status_text})"


def format_summary(
    run: Run, summary: pd.DataFrame | None, evidence: pd.DataFrame | None = None
) -> str:
    """Per-layer drift table, layers in model order, head rows marked with '*', then head against
    body (``evidence``: ``analysis.evidence.head_vs_body``) with the per-round spread beside the
    pooled numbers (``summary`` None: the title and the metrics only, for a file whose records
    cannot be read)."""
    lines = [_run_title(run)]
    if summary is None:
        pass
    elif not run.recorded:
        lines.append(
            "no per-layer records: this run was recorded with --no-record (record.enabled = "
            "false); re-run without --no-record to get drift metrics"
        )
    else:
        lines += [
            f"per-layer drift over {len(run.rounds)} recorded rounds (ratios of sums; CKA = mean "
            "linear CKA over client pairs); * = head",
            "",
        ]
        table = summary.copy()
        table.insert(0, " ", np.where(table["group"] == "head", "*", ""))
        cols = [" ", "label", "layer", "group", "numel", *headline_metrics()]
        table = table[[col for col in cols if col in table]]
        lines.append(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        if evidence is not None and len(evidence):
            lines += ["", evidence_title(evidence)]
            lines.append(format_evidence(evidence).to_string(index=False))
            lines.append(diversity_note(_weighting(run)))
        elif len(table) and "head" not in set(summary["group"]):  # said, not silently left out
            lines += [
                "",
                "no head/body comparison: no layer of this run is in the head (declare one: "
                "the model's head_prefixes, or recording(..., head=[...]) for a Flower app)",
            ]
        elif len(table) and "body" not in set(summary["group"]):
            lines += ["", "no head/body comparison: every layer of this run is in the head"]
    try:
        m = run.metrics
    except DriftscopeError as err:
        lines += ["", f"metrics unreadable: {err}"]
        return "\n".join(lines)
    if len(m):
        last = m.iloc[-1]
        lines += [
            "",
            f"final test accuracy {last.test_accuracy:.4f}; communication per round "
            f"{run.bytes_per_round / 1e6:.3f} MB (down + up)",
        ]
    return "\n".join(lines)


def _weighting(run: Run) -> str:
    try:
        return run.config.train.weighting
    except DriftscopeError:
        return "uniform"


EVIDENCE_NAMES = {
    "relative_variance": "rel. variance",
    "mean_pairwise_cosine": "pairwise cosine",
    "cka": "CKA",
}


def evidence_title(evidence: pd.DataFrame) -> str:
    """The line above :func:`format_evidence`'s table."""
    warmup = int(evidence["warmup"].iloc[0])
    return (
        "head vs body (mean over the layers of each group): pooled over all rounds, pooled from "
        f"round {warmup} on, and compared round by round (median [interquartile range] over "
        "rounds; rounds in which the head is beyond the body: more variance, less alignment)"
    )


def format_evidence(evidence: pd.DataFrame) -> pd.DataFrame:
    """``head_vs_body``'s rows as printed: one row per measure, numbers as text."""
    warmup = int(evidence["warmup"].iloc[0]) if len(evidence) else 0

    def num(v: float) -> str:
        return "-" if not np.isfinite(v) else f"{v:.3f}" if abs(v) < 1 else f"{v:.2f}"

    return pd.DataFrame(
        {
            "measure": [
                f"{EVIDENCE_NAMES.get(m, m)} {c}"
                for m, c in zip(evidence["metric"], evidence["comparison"])
            ],
            "pooled": [num(v) for v in evidence["pooled"]],
            f"pooled, rounds >= {warmup}": [num(v) for v in evidence["pooled_after_warmup"]],
            "per-round median [IQR]": [
                f"{num(m)} [{num(a)}, {num(b)}]"
                for m, a, b in zip(evidence["median"], evidence["q25"], evidence["q75"])
            ],
            "rounds head beyond body": [
                f"{k}/{n}" for k, n in zip(evidence["head_beyond"], evidence["rounds"])
            ],
        }
    )


def diversity_note(weighting: str = "uniform") -> str:
    """Why drift diversity is not shown beside relative variance (docs/science.md)."""
    if weighting == "uniform":
        return (
            "drift diversity is not shown: with uniform client weights it equals "
            "(1 + relative variance) / S, the same evidence (docs/science.md)"
        )
    return (
        "drift diversity is (1 + relative variance around the unweighted mean update) / S; the "
        "relative variance above is around the size-weighted mean the server applies "
        "(docs/science.md)"
    )


def _section(lines: list[str], title: str, body: Callable[[], list[str]]) -> None:
    """Append ``body()``; a damaged part prints one line saying so, and the rest still prints."""
    try:
        lines.extend(body())
    except DriftscopeError as err:
        lines.append(f"  {title}: unreadable ({err})")


def _dataset_groups(ds: pd.DataFrame) -> list[str]:
    """One line per dataset, or per group of like datasets with its count and total size."""
    lines = []
    parents = ds["dataset"].str.rsplit("/", n=1).str[0].where(ds["dataset"].str.contains("/"), "")
    ds = ds.assign(parent=parents)
    for parent, sub in ds.groupby("parent", sort=False):
        if len(sub) <= 2:
            for _, row in sub.iterrows():
                lines.append(
                    f"    {row['dataset']:<44} {row['shape']!s:<20} {row['dtype']:<8} "
                    f"{row['bytes'] / 1e6:10.3f} MB"
                )
            continue
        dtypes = "/".join(sorted(set(sub["dtype"])))
        lines.append(
            f"    {parent + '/*':<44} {f'{len(sub)} datasets':<20} {dtypes:<8} "
            f"{sub['bytes'].sum() / 1e6:10.3f} MB in all"
        )
    return lines


def format_inspect(run: Run) -> str:
    """What a run file holds: config, environment, layers, rounds and datasets with sizes."""
    lines = [f"{run.path}"]
    status = run.status_text
    lines.append(f"  status: {status}" + (f" ({run.status_message})" if run.status_message else ""))
    w = run.writer
    pid = "unknown (damaged)" if w["pid"] is None else w["pid"]
    writer = f", writer {w['host']} pid {pid}" if w["host"] else ""
    lines.append(
        f"  schema: driftscope-run v{run.schema_version}, created {run.created}, "
        f"engine {run.engine}{writer}"
    )
    missing = run.missing()
    if missing:
        shown = ", ".join(missing[:6]) + (
            f" (+{len(missing) - 6} more)" if len(missing) > 6 else ""
        )
        lines.append(f"  MISSING ({len(missing)}): {shown}; the file is damaged, the rest follows")

    def config() -> list[str]:
        out = ["  config:"]
        for section, values in run.config_dict.items():
            if isinstance(values, dict):
                out.append(
                    f"    [{section}] "
                    + ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items())
                )
            else:
                out.append(f"    {section} = {json.dumps(values)}")
        return out

    def app() -> list[str]:  # a recorded Flower app: its own words, not the config's defaults
        described = ", ".join(f"{k}={json.dumps(v)}" for k, v in (run.app or {}).items())
        settings = ", ".join(f"{k}={json.dumps(v)}" for k, v in run.app_strategy.items())
        out = [f"  app (Flower, as its ServerApp described it): {described}"]
        out.append(f"    strategy: {settings}")
        out += [f"    {k}: {v}" for k, v in run.app_facts.items()]
        record = run.config_dict.get("record", {})
        out.append("    [record] " + ", ".join(f"{k}={json.dumps(v)}" for k, v in record.items()))
        return out

    _section(lines, "app" if run.app is not None else "config", app if run.app else config)
    env = run.environment
    lines.append("  environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))

    def counts() -> list[str]:
        return [
            f"  clients: {len(run.clients)}; rounds committed: {run.num_rounds}; "
            f"recorded: {len(run.rounds)}; with updates: {len(run.update_rounds)}; "
            f"with CKA: {len(run.cka_rounds)}"
            + ("" if run.recorded else " (recording was off: --no-record)")
        ]

    _section(lines, "rounds", counts)

    def layers() -> list[str]:
        out = [f"  layers ({len(run.layers)}, head share {run.head_share:.2%}):"]
        for layer in run.layers:
            out.append(
                f"    {layer.label:<6} {layer.name:<20} {layer.kind:<8} {layer.group:<5} "
                f"{layer.numel:>10,d} params"
            )
        return out

    _section(lines, "layers", layers)
    _section(lines, "layers with control variates", lambda: format_chosen_layers(run))
    ds = run.describe_datasets()
    lines.append(
        f"  datasets ({len(ds)}, {ds['bytes'].sum() / 1e6:.2f} MB stored; a group of like "
        "datasets shows its count and total size):"
    )
    lines += _dataset_groups(ds)
    return "\n".join(lines)


def format_chosen_layers(run: Run) -> list[str]:
    """Lines naming the layers that carried control variates, by spans of rounds (fedpvr_auto's
    ``chosen_layers`` record); [] for runs without it."""
    if "chosen_layers" not in run.algorithm_record_keys:
        return []
    table = run.algorithm_record("chosen_layers")
    if table.empty:
        return ["  layers with control variates: no round committed"]
    lines = ["  layers with control variates (chosen from measured drift):"]
    rows = [" ".join(c for c, v in row.items() if v) or "none" for _, row in table.iterrows()]
    rounds = table.index.to_numpy()
    start = 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or rows[i] != rows[start]:
            span = f"{rounds[start]}" if i - 1 == start else f"{rounds[start]}-{rounds[i - 1]}"
            lines.append(f"    rounds {span:<9} {rows[start]}")
            start = i
    return lines


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
