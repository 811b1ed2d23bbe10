"""Labels in figures: algorithms, runs and metrics, each from the one place that owns it.

* :func:`algorithm_label`, :func:`run_label`, :func:`run_labels`: from
  :mod:`driftscope.analysis.labels` (the algorithm registry's ``label``).
* :func:`metric_label` and :func:`metric_scale`: from :data:`driftscope.metrics.METRICS`.
"""

from __future__ import annotations

from collections.abc import Sequence

from driftscope.analysis.labels import algorithm_label, algorithm_rank, run_label, run_labels
from driftscope.errors import ConfigError
from driftscope.metrics import METRICS

__all__ = [
    "COMMUNICATION_TITLE",
    "algorithm_label",
    "metric_label",
    "metric_scale",
    "order_labels",
    "run_label",
    "run_labels",
]

# legend title of figures whose entries carry communication_factor, e.g. "FedPVR (2.1x)"
COMMUNICATION_TITLE = "(n.nx): model copies sent per client per round, down + up"


def metric_label(metric: str) -> str:
    """Axis label of a metric: its ``label`` in METRICS (unregistered: the name, spaced)."""
    try:
        return METRICS.get(metric).label
    except ConfigError:
        return metric.replace("_", " ")


def metric_scale(metric: str) -> str:
    """``"log"`` or ``"linear"``: the metric's ``scale`` in METRICS (unregistered: linear)."""
    try:
        return METRICS.get(metric).scale
    except ConfigError:
        return "linear"


def order_labels(labels: Sequence[str], algorithms: Sequence[str]) -> list[str]:
    """Distinct labels, sorted by algorithm (FedAvg, FedProx, SCAFFOLD, FedPVR) then by first
    appearance, so colours follow the same order in every figure."""
    first: dict[str, tuple[int, int]] = {}
    for i, (label, algorithm) in enumerate(zip(labels, algorithms)):
        first.setdefault(label, (algorithm_rank(algorithm), i))
    return sorted(first, key=first.__getitem__)
