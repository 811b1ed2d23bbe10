"""Tidy tables over runs: ``drift_table(run)``, ``layer_summary(run)``, ``tidy(runs)``.

The math lives in :mod:`driftscope.metrics`.
"""

from __future__ import annotations

from driftscope.analysis.tables import (
    communication_factor,
    drift_table,
    layer_summary,
    pool_rounds,
    tidy,
)

__all__ = [
    "communication_factor",
    "drift_table",
    "layer_summary",
    "pool_rounds",
    "tidy",
]
