"""LoRA adapters across clients: which parameters pair up, and FedEx-LoRA's aggregation residual.

A LoRA-adapted module adds ``B A`` (``A`` r x k, ``B`` m x r, scaled by a constant) to a frozen
weight. Hugging Face PEFT names the factors ``<module>.lora_A.<adapter>.weight`` and
``<module>.lora_B.<adapter>.weight``: two layers of driftscope's layout, so every per-layer
measure (relative variance, mean pairwise cosine of the updates, ...) already comes out for A
and for B separately (FedSA-LoRA's asymmetry). :func:`lora_pairs` finds the pairs.

**Aggregation residual** (FedEx-LoRA, Singhal et al., ACL 2025; FFA-LoRA, Sun et al., ICLR 2024):
averaging the factors separately is not averaging the products. With client factors
``A_i = A + dA_i``, ``B_i = B + dB_i`` (``A``, ``B``: the global adapter the round started from;
``dA_i``, ``dB_i``: the client's update) and aggregation weights ``p_i``::

    residual = ||mean(B_i A_i) - mean(B_i) mean(A_i)||_F / ||mean(B_i A_i)||_F

(means weighted by ``p``). It is 0 when every client sends the same adapter, and its numerator
equals ``||sum_i p_i (dB_i - mean dB)(dA_i - mean dA)||_F``: the covariance of the clients' B and A
updates, independent of the global adapter; the denominator needs the global adapter (the run
file stores it on the rounds that store updates: ``records/global_params``).

numpy only; float64 results ``(...)`` over leading axes (rounds); ``nan`` where the mean product is
0 or a client's row is NaN (a failed client).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftscope.metrics.gram import as_float64
from driftscope.models.lora_names import FACTOR

__all__ = ["LoraPair", "aggregation_residual", "lora_pairs"]

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class LoraPair:
    """One adapted module: ``module`` (e.g. ``blocks.0.attn.q``), PEFT's ``adapter`` name, and
    the names (parameters or layers, as given) of its A and B factors."""

    module: str
    adapter: str
    a: str
    b: str


def lora_pairs(names: Iterable[str]) -> list[LoraPair]:
    """The LoRA (A, B) pairs among ``names`` (parameter or layer names), in order of their A
    factor; a factor without its partner is left out."""
    found: dict[tuple[str, str, str], dict[str, str]] = {}
    for name in names:
        m = FACTOR.match(name)
        if m is None:
            continue
        key = (m["module"], m["adapter"], m["rest"] or "")
        found.setdefault(key, {})[m["factor"]] = name
    return [
        LoraPair(module, adapter, f["A"], f["B"])
        for (module, adapter, _), f in found.items()
        if "A" in f and "B" in f
    ]


def aggregation_residual(
    dA: Any, dB: Any, A: Any, B: Any, weights: Any | None = None
) -> FloatArray:
    """FedEx-LoRA's relative residual ``||mean(B_i A_i) - mean(B_i) mean(A_i)||_F /
    ||mean(B_i A_i)||_F`` per round.

    ``dA`` (..., S, r, k) and ``dB`` (..., S, m, r): the clients' updates of the factors; ``A``
    (..., r, k) and ``B`` (..., m, r): the global factors the round started from; ``weights``
    ``None`` (uniform) or (..., S) aggregation weights (normalised here). Returns ``(...)``.
    """
    da, db, a, b = (as_float64(v) for v in (dA, dB, A, B))
    if da.ndim < 3 or db.ndim < 3 or da.shape[-3] != db.shape[-3]:
        raise ValueError(
            f"dA, dB must be (..., S, r, k), (..., S, m, r); got {da.shape}, {db.shape}"
        )
    s = da.shape[-3]
    if weights is None:
        p = np.full(da.shape[:-2], 1.0 / s)
    else:
        p = np.broadcast_to(as_float64(weights), da.shape[:-2])
        p = p / p.sum(axis=-1, keepdims=True)
    a_i = a[..., None, :, :] + da  # (..., S, r, k)
    b_i = b[..., None, :, :] + db  # (..., S, m, r)
    mean_product = np.einsum("...s,...smr,...srk->...mk", p, b_i, a_i)
    mean_a = np.einsum("...s,...srk->...rk", p, a_i)
    mean_b = np.einsum("...s,...smr->...mr", p, b_i)
    diff = mean_product - mean_b @ mean_a
    num = np.linalg.norm(diff, axis=(-2, -1))
    den = np.linalg.norm(mean_product, axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)
