"""The text ``driftscope advise`` prints: the ranked layers, the rules with their thresholds, what
could not be assessed, and fedpvr_auto's choice beside the advice."""

from __future__ import annotations

import numpy as np

from driftscope.analysis.advise import KEEP_LOCAL, VARIANCE_REDUCE, VARIANCE_SHARE, Advice
from driftscope.analysis.labels import config_value
from driftscope.runfile.reader import Run

__all__ = ["format_advice"]


def _names(labels: list[str]) -> str:
    return ", ".join(labels) if labels else "none"


def format_advice(run: Run, advice: Advice) -> str:
    t = advice.table
    r = advice.rounds
    algorithm = (
        run.app_strategy.get("class", "unknown")  # a recorded Flower app: its strategy
        if run.app is not None
        else config_value(run, "train", "algorithm", "unknown")
    )
    lines = [
        f"{run.path.name}: {algorithm}, {len(run.layers)} layers; drift pooled over "
        f"{len(r)} recorded rounds ({int(r[0])}-{int(r[-1])})",
        "layers ranked by FedLAMA's discrepancy d (update variance per parameter and round):",
        "",
    ]
    shown = t.assign(
        fedpvr_auto=np.where(t["fedpvr_auto"], "chosen", "-"),
        group=np.where(t["group"] == "head", "*", ""),
    )[
        [
            "rank",
            "group",
            "label",
            "numel",
            "discrepancy",
            "variance_share",
            "alignment",
            "angular_divergence",
            "action",
            "fedpvr_auto",
        ]
    ].rename(
        columns={
            "group": "",
            "discrepancy": "d",
            "variance_share": "var share",
            "angular_divergence": "angle",
            "fedpvr_auto": "fedpvr_auto",
        }
    )
    lines.append(
        shown.to_string(
            index=False,
            formatters={
                "d": "{:.3g}".format,
                "var share": "{:.1%}".format,
                "alignment": "{:.3f}".format,
                "angle": lambda x: "n/a" if np.isnan(x) else f"{x:.3g}",
            },
        )
    )
    lines += ["", "evidence per layer (* = head):"]
    for _, row in t.iterrows():
        lines.append(f"  {row['label']}: {row['recommendation']}: {row['reason']}")
    lines.append(
        f"  ({KEEP_LOCAL!r}: keep local where the clients' updates cancel, aggregate less often "
        "where FedLAMA and the angle say they change little)"
    )
    angle = "not recorded" if np.isnan(advice.model_angle) else f"{advice.model_angle:.3g}"
    lines += [
        "",
        "rules (first match; docs/advise.md):",
        "  keep local            alignment = sum ||m||^2 / sum sum_i p_i^2 ||d_i||^2 <= 1 (the mean",
        "                        update no longer than if the clients' updates were orthogonal)",
        f"                        and < the whole model's ({advice.model_alignment:.3g})",
        f"  variance-reduce       the layers by d (largest first) until they hold "
        f"{VARIANCE_SHARE:.0%} of the variance",
        "  aggregate less often  FedLAMA: by d ascending while the cumulative variance share < 1 -",
        "                        the cumulative parameter share; and L-DAWA's angle",
        f"                        1 - cos(w_g, w_k) <= the whole model's ({angle})",
        "  federate as is        the rest",
    ]
    for note in advice.notes:
        lines.append(f"note: {note}")
    f = advice.fedpvr
    labels = list(t["label"])
    chosen = {lab for lab, c in zip(labels, t["fedpvr_auto"]) if c}
    reduce = {lab for lab, rec in zip(labels, t["recommendation"]) if rec == VARIANCE_REDUCE}
    local = {
        lab
        for lab, rec, reason in zip(labels, t["recommendation"], t["reason"])
        if rec == KEEP_LOCAL and reason.startswith("keep local")
    }
    order = [lab for lab in (ly.label for ly in run.layers)]

    def ordered(names: set[str]) -> list[str]:
        return [n for n in order if n in names]

    what = (
        f"fedpvr_auto's choice in this run ({f.settings}; {f.window}"
        + (f"; it changed {f.changed} times after the first" if f.changed else "")
        + ")"
        if f.source == "recorded"
        else f"fedpvr_auto's rule on this run's numbers ({f.settings}; variance of {f.window})"
    )
    lines += [
        "",
        f"{what}: control variates on {_names(ordered(chosen))}",
        f"  advice variance-reduces {_names(ordered(reduce))}; keeps local "
        f"{_names(ordered(local))}",
        f"  both: {_names(ordered(chosen & reduce))}; only fedpvr_auto: "
        f"{_names(ordered(chosen - reduce))}; only the advice: {_names(ordered(reduce - chosen))}",
    ]
    if chosen & local:
        lines.append(
            f"  fedpvr_auto corrects {_names(ordered(chosen & local))}, which the advice keeps "
            "local: control variates there pull clients toward a consensus their updates do "
            "not share"
        )
    return "\n".join(lines)
