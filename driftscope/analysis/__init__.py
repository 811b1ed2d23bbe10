"""Analysis as pure functions over arrays, and tidy tables over runs.

* :mod:`~driftscope.analysis.cka`: linear, RBF and debiased CKA; pairwise and minibatch forms.
* :mod:`~driftscope.analysis.drift`: per-layer update variance, drift diversity and cosine
  divergence from the N x N Gram matrix of client updates.
* :mod:`~driftscope.analysis.tables`: ``drift_table(run)`` and ``layer_summary(run)``.
"""

from __future__ import annotations

from driftscope.analysis.cka import MinibatchCKA, cka, cka_from_grams, pairwise_cka

__all__ = ["MinibatchCKA", "cka", "cka_from_grams", "drift_table", "layer_summary", "pairwise_cka"]


def __getattr__(name: str):  # tables import the reader; load them lazily
    if name in ("drift_table", "layer_summary"):
        from driftscope.analysis import tables

        return getattr(tables, name)
    raise AttributeError(name)
