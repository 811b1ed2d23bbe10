"""The recorder's probe CKA of one layer: the three kinds of CKA between every pair of probed
models from their Gram matrices, with models that have no defined value marked NaN.

A model has no CKA when it did not train (a failed client, probed as the global model), when its
probe features are not finite (a network whose activations overflow in evaluation mode, e.g.
BatchNorm after training batches of one or two samples), or, for the RBF kind only, when all its
probe inputs map to one point (the bandwidth, a median of squared distances, is zero). Every other
pair's value is the one :func:`~driftscope.metrics.cka.pairwise_cka` gives: a pair's CKA depends
on its two Grams only, so the undefined models do not change it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from driftscope.metrics.cka import pairwise_cka
from driftscope.metrics.rbf import rbf_from_linear_gram

__all__ = ["KINDS", "probe_cka", "warn_not_finite"]

KINDS = ("linear", "rbf", "debiased")


def probe_cka(grams: Any, undefined: Sequence[int] = ()) -> tuple[dict[str, np.ndarray], list[int]]:
    """CKA of every pair of the ``M`` models whose centred linear Grams are ``grams`` (M, n, n).

    Returns ``({kind: (M, M) float64}, not_finite)``: the models in ``undefined`` and those whose
    Gram is not finite (``not_finite``, sorted) have NaN rows and columns in every kind; a model
    with a zero RBF bandwidth has them in the RBF kind.
    """
    k = np.asarray(grams)
    not_finite = [int(m) for m in np.flatnonzero(~np.isfinite(k).all(axis=(-2, -1)))]
    if not_finite:
        k = k.copy()
        k[not_finite] = np.eye(k.shape[-1])  # any finite Gram: these rows are replaced by NaN
    try:
        rbf_grams = rbf_from_linear_gram(k)
        flat: list[int] = []
    except ValueError:  # a zero bandwidth: find the models one by one
        rbf_grams, flat = _rbf_each(k)
    values = {
        "linear": pairwise_cka(k, centred=True),
        "rbf": pairwise_cka(rbf_grams),
        "debiased": pairwise_cka(k, debiased=True),
    }
    for kind, v in values.items():
        drop = [*undefined, *not_finite, *(flat if kind == "rbf" else [])]
        v[drop, :] = np.nan
        v[:, drop] = np.nan
    return values, not_finite


def _rbf_each(k: np.ndarray) -> tuple[np.ndarray, list[int]]:
    out = np.empty(k.shape, dtype=np.float64)
    flat = []
    for m in range(len(k)):
        try:
            out[m] = rbf_from_linear_gram(k[m])
        except ValueError:
            out[m] = np.eye(k.shape[-1])
            flat.append(m)
    return out, flat


def warn_not_finite(layer: str) -> None:
    """Warn that some probed models' features are not finite in ``layer``; the text names only
    the layer, so Python's warning filter shows it once per layer, not every round."""
    warnings.warn(
        f"probe CKA of layer {layer!r}: some models' probe features are not finite; their CKA "
        "is stored as NaN. Activations that overflow in evaluation mode, e.g. BatchNorm after "
        "training batches of one or two samples: drop short batches (--drop-last) or use larger "
        "ones, or turn probe CKA off (--probe-size 0)",
        RuntimeWarning,
        stacklevel=2,
    )
