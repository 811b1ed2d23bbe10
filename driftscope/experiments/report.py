"""Plain-text reports for the terminal: the per-layer summary and a run file's contents."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pandas as pd

from driftscope.errors import DriftscopeError
from driftscope.metrics import headline_metrics
from driftscope.runfile.reader import Run


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
