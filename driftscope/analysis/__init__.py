"""Tidy tables over runs: ``drift_table(run)``, ``layer_summary(run)``, ``tidy(runs)``.

The math lives in :mod:`driftscope.metrics`; ``cka``, ``pairwise_cka``, ``drift`` and ``cka_module``
are re-exported here for older imports.
"""

from __future__ import annotations

from driftscope.analysis.tables import (
    communication_factor,
    drift_table,
    layer_summary,
    pool_rounds,
    tidy,
)
from driftscope.metrics import cka as cka_module
from driftscope.metrics import drift
from driftscope.metrics.cka import MinibatchCKA, cka, cka_from_grams, pairwise_cka

__all__ = [
    "MinibatchCKA",
    "cka",
    "cka_from_grams",
    "cka_module",
    "communication_factor",
    "drift",
    "drift_table",
    "layer_summary",
    "pairwise_cka",
    "pool_rounds",
    "tidy",
]
