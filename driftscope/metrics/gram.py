"""Gram matrices: the one implementation of each, for numpy arrays and torch tensors.

Two jobs, each done here and nowhere else:

* :func:`update_gram`: ``G_ij = <d_i, d_j>`` of client updates (rows), uncentred, accumulated in
  float64 a cache-sized block of columns at a time. Every drift measure follows from it.
* :func:`centred_gram`: ``X_c X_c^T`` of one layer's activations on ``n`` probe inputs, the
  features (columns) centred *before* the product (centring a float32 Gram whose features carry
  a large offset loses nearly all precision). The linear CKA kernel. In float64, or (the
  recorder's default) as float32 block products summed in float64 with a float64 double-centring
  step, within the error bound :func:`gram32_error` derives.

:func:`linear_gram` is :func:`centred_gram` returning numpy (the CKA module's public name).
Both accept a numpy array or a torch tensor and return the same kind; torch is never imported
here (tensors are recognised by their methods), so the reader and the CLI stay torch-free.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "BLOCK_COLUMNS",
    "CHUNK_VALUES",
    "GRAM32_GAMMA",
    "PRECISIONS",
    "as_float64",
    "centred_gram",
    "float64_device",
    "full_float32_matmul",
    "gram32_error",
    "is_tensor",
    "linear_gram",
    "update_gram",
]

FloatArray = NDArray[np.float64]

CHUNK_VALUES = 1 << 18  # float64 values converted per block of columns in update_gram
PRECISIONS = ("float32", "float64")  # centred_gram's arithmetic (record.cka_precision)
BLOCK_COLUMNS = 256  # columns per float32 block product in centred_gram(precision="float32")
UNIT_ROUNDOFF_32 = 2.0**-24
# Higham's gamma_k = k u / (1 - k u) for the float32 path's error bound (gram32_error)
GRAM32_GAMMA = (BLOCK_COLUMNS + 4) * UNIT_ROUNDOFF_32 / (1 - (BLOCK_COLUMNS + 4) * UNIT_ROUNDOFF_32)


def is_tensor(x: Any) -> bool:
    """True for a torch tensor (without importing torch)."""
    return hasattr(x, "detach") and hasattr(x, "cpu") and hasattr(x, "dtype")


def as_float64(x: Any) -> FloatArray:
    """A numpy array, torch tensor (any float dtype, any device) or array-like as float64 numpy."""
    if is_tensor(x):
        x = x.detach().cpu()
        if x.is_floating_point() and x.dtype.itemsize < 4:  # float16 / bfloat16: numpy lacks bf16
            x = x.float()
        x = x.numpy()
    return np.asarray(x, dtype=np.float64)


def update_gram(updates: Any, chunk_values: int = CHUNK_VALUES) -> Any:
    """Gram matrix ``G_ij = <d_i, d_j>`` of client updates, accumulated in float64.

    Converts ``chunk_values`` values (a slice of columns of every row) to float64 at a time
    instead of the whole block: the same sums, about three times faster on a VGG-11 than one
    float64 copy, and no float64 copy of a large layer in memory.

    Args:
        updates: ``(N, P)`` or ``(..., N, P)`` flattened updates, a numpy array or a torch tensor
            of any float dtype.
        chunk_values: values converted per block (at least one column per block).

    Returns:
        ``(..., N, N)`` float64, a torch tensor (on the input's device) for a tensor input, a
        numpy array otherwise.
    """
    if is_tensor(updates):
        if updates.ndim < 2:
            raise ValueError(f"updates must be shaped (..., N, P); got {tuple(updates.shape)}")
        if updates.ndim > 2:
            import torch

            return torch.stack([update_gram(u, chunk_values) for u in updates.detach()])
        import torch

        block = updates.detach()
        s, numel = block.shape
        step = max(1, chunk_values // max(1, s))
        gram = torch.zeros(s, s, dtype=torch.float64, device=block.device)
        for start in range(0, numel, step):
            part = block[:, start : start + step].to(torch.float64)
            gram.addmm_(part, part.T)
        return gram
    u = np.asarray(updates)
    if u.ndim < 2:
        raise ValueError(f"updates must be shaped (..., N, P); got {u.shape}")
    s, numel = u.shape[-2:]
    step = max(1, chunk_values // max(1, s))
    out = np.zeros((*u.shape[:-1], s), dtype=np.float64)
    for start in range(0, numel, step):
        part = u[..., start : start + step].astype(np.float64)
        out += part @ np.swapaxes(part, -1, -2)
    return out


def centred_gram(features: Any, precision: str = "float64") -> Any:
    """``(n, p)`` activations -> ``(n, n)`` linear Gram ``X_c X_c^T`` of column-centred features.

    * ``precision="float64"``: centred and multiplied in float64.
    * ``precision="float32"`` (the recorder's default, ``record.cka_precision``): features centred
      in float32 (float64 inputs are centred in float64 first), multiplied in float32
      :data:`BLOCK_COLUMNS` columns at a time with the block products summed in float64, then
      double-centred in float64 (``H K H``). Centring *before* the product keeps the rounding
      error proportional to the features' spread, not their offset; the final ``H K H`` removes
      the float32 column mean's own rounding exactly (a per-feature offset changes ``K`` only by
      ``a 1^T + 1 a^T + c``, which every HSIC ignores). Error bound against the float64 path:
      :func:`gram32_error`.

    A torch tensor gives a float64 tensor on its device (on the CPU for an MPS tensor, see
    :func:`float64_device`), anything else a float64 numpy array.
    """
    _check_precision(precision)
    if is_tensor(features):
        if features.ndim != 2:
            raise ValueError(f"features must be 2-D (n, p); got shape {tuple(features.shape)}")
        import torch

        if precision == "float32":
            return _gram32_torch(_centre32_torch(features.detach()))
        x = features.detach().to(float64_device(features.device), torch.float64)
        x = x - x.mean(dim=0, keepdim=True)
        return x @ x.T
    if precision == "float32":
        x32 = _centre32_numpy(np.asarray(features))
        if x32.ndim != 2:
            raise ValueError(f"X must be 2-D (n, features); got shape {x32.shape}")
        return _gram32_numpy(x32)
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"X must be 2-D (n, features); got shape {x.shape}")
    x = x - x.mean(axis=0, keepdims=True)
    return x @ x.T


def gram32_error(features: Any) -> tuple[float, float]:
    """Bounds on the float32 path's error: ``(eps, eta)`` with, for ``K32 = centred_gram(features,
    "float32")`` and ``K = centred_gram(features, "float64")`` (exact up to float64 rounding),

        ||K32 - K||_F <= eps = gamma * sum_i s_i        max_ij |K32 - K|_ij <= 4 * eta,
        eta = gamma * max_i s_i,                        gamma = :data:`GRAM32_GAMMA`,

    where ``s_i = sum_k xh_ik^2`` over the centred float32 features ``xh`` the product saw.

    Derivation (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., eq. 3.5): a
    float32 dot product of length ``b`` errs by at most ``gamma_b sum_k |x_k||y_k|``, with
    ``gamma_b = b u / (1 - b u)``, ``u = 2^-24``; the centring subtraction adds a relative ``u`` per
    factor (``gamma_2``), and summing ``p / b`` block results in float64 adds far less than one more
    ``u``: ``gamma_{b+4}`` covers all of it. By Cauchy-Schwarz ``sum_k |xh_ik||xh_jk| <=
    sqrt(s_i s_j)``, so ``|dK_ij| <= gamma sqrt(s_i s_j)``, whose Frobenius norm is at most
    ``gamma sum_i s_i``; the double-centring ``H dK H`` does not increase the Frobenius norm (``H``
    is an orthogonal projection) and moves an entry by at most 4 times the largest one. The exact
    Gram of ``x - m`` for the float32 mean ``m`` equals ``K`` after centring.
    :func:`driftscope.metrics.cka.cka_error_bound` carries the bound to CKA values.

    It is a worst case over all rounding patterns: measured CKA errors are about 1e-9, the bounds
    1e-3 to 1e-2 on VGG-11 (benchmarks/README.md). The float32 forward pass that produced the
    activations already rounds dot products of length ``9 C_in`` (up to 4,608 in VGG-11), so the
    activations, and with them the float64 path's CKA, carry a worst-case error of the same kind
    and at least this size (``gamma_4608`` against ``gamma_260``).
    """
    if is_tensor(features):
        import torch

        xh = _centre32_torch(features.detach())
        s = xh.to(float64_device(xh.device), torch.float64).square().sum(dim=1).cpu().numpy()
    else:
        s = np.square(_centre32_numpy(np.asarray(features)).astype(np.float64)).sum(axis=1)
    return GRAM32_GAMMA * float(s.sum()), GRAM32_GAMMA * float(s.max())


def float64_device(device: Any) -> Any:
    """Where a tensor on ``device`` does its float64 arithmetic: ``device`` itself, except the CPU
    for MPS (Apple GPUs have no float64). Every float64 tensor of the probe-CKA path is made here."""
    import torch

    return torch.device("cpu") if device.type == "mps" else device


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(
            f"unknown CKA precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
        )


def _centre32_torch(x: Any) -> Any:
    """Column-centred float32 features (what the float32 product multiplies)."""
    import torch

    if x.dtype == torch.float64:  # centre in float64 first: rounding then scales with the spread
        return (x - x.mean(dim=0, keepdim=True)).float()
    x = x.float()  # float16 / bfloat16 widen exactly
    return x - x.mean(dim=0, keepdim=True)


def _centre32_numpy(x: NDArray) -> NDArray[np.float32]:
    if x.dtype == np.float64:
        return (x - x.mean(axis=0, keepdims=True)).astype(np.float32)
    x = x.astype(np.float32, copy=False)
    return x - x.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)


def _gram32_torch(xh: Any) -> Any:
    """``H (xh xh^T) H`` of float32 ``xh``: float32 block products summed in float64."""
    import torch

    n, p = xh.shape
    host = float64_device(xh.device)
    with full_float32_matmul():
        blocks = (
            xh[:, start : start + BLOCK_COLUMNS] @ xh[:, start : start + BLOCK_COLUMNS].T
            for start in range(0, p, BLOCK_COLUMNS)
        )
        if host != xh.device:  # no float64 here (MPS): one copy of all block products to the host
            return _double_centre(torch.stack(list(blocks)).to(host, torch.float64).sum(dim=0))
        acc = torch.zeros(n, n, dtype=torch.float64, device=host)
        for block in blocks:
            acc += block.to(torch.float64)
    return _double_centre(acc)


def _gram32_numpy(xh: NDArray[np.float32]) -> FloatArray:
    n, p = xh.shape
    acc = np.zeros((n, n), dtype=np.float64)
    for start in range(0, p, BLOCK_COLUMNS):
        part = xh[:, start : start + BLOCK_COLUMNS]
        acc += part @ part.T
    return _double_centre(acc)


def _double_centre(k: Any) -> Any:
    """``H K H`` of a symmetric ``(n, n)`` float64 matrix (array or tensor), without forming H."""
    row = k.mean(-1, keepdims=True) if isinstance(k, np.ndarray) else k.mean(-1, keepdim=True)
    out = k - row - row.T + row.mean()
    return 0.5 * (out + out.T)


@contextmanager
def full_float32_matmul() -> Iterator[None]:
    """torch float32 matmuls in full IEEE float32 inside the block (no TF32 or bfloat16 passes,
    which ``torch.set_float32_matmul_precision("high"|"medium")`` would allow and which the error
    bound does not cover); the previous setting is restored after."""
    import torch

    previous = torch.get_float32_matmul_precision()
    if previous == "highest":
        yield
        return
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def linear_gram(X: Any) -> FloatArray:
    """Linear CKA kernel of ``X`` (``(n, p)``): :func:`centred_gram` as a float64 numpy array."""
    if is_tensor(X):
        X = as_float64(X)
    return centred_gram(X)
