"""Pure math over arrays, and the registry of per-layer metrics.

* :mod:`~driftscope.metrics.gram`: the Gram matrices (client updates; centred activations).
* :mod:`~driftscope.metrics.drift`: per-layer update variance, drift diversity and cosine
  divergence from the ``N x N`` Gram matrix of client updates.
* :mod:`~driftscope.metrics.cka`: linear, RBF and debiased CKA; pairwise and minibatch forms.
* :mod:`~driftscope.metrics.registry`: :data:`METRICS`, the :class:`Metric` records that tables,
  figures and reports read.
* :mod:`~driftscope.metrics.attribution`: which labels drive a layer's drift (label alignment with a
  Mantel test; per-class update variance of the output layer). Imported on use (it needs scipy).

numpy only at import time (torch tensors are accepted, torch is never imported here), and nothing
of driftscope above this package: the recorder imports it.
"""

from __future__ import annotations

from driftscope.metrics import cka, drift, gram
from driftscope.metrics.registry import (
    METRICS,
    Metric,
    gram_metrics,
    headline_metrics,
    register_metric,
)

__all__ = [
    "METRICS",
    "Metric",
    "cka",
    "drift",
    "gram",
    "gram_metrics",
    "headline_metrics",
    "register_metric",
]
