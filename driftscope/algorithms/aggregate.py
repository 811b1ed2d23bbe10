"""The arithmetic of federated averaging and SCAFFOLD-style control variates, as pure functions.

Vectors are flat float32 parameter vectors (P,) or stacks (N, P); nothing here keeps state.
Notation follows ``docs/science.md``: x global model, y client model after local training,
c server control variate, c_i client control variate, K local steps, eta local learning rate.
"""

from __future__ import annotations

import torch


def weighted_mean(vectors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_i v_i for vectors (N, P) and weights (N,) summing to 1."""
    return weights.to(vectors.dtype) @ vectors


def client_weights(num_samples: torch.Tensor, weighting: str) -> torch.Tensor:
    """Aggregation weights (N,): uniform 1/N (the FedPVR paper's) or proportional to samples."""
    if weighting == "uniform":
        return torch.full((len(num_samples),), 1.0 / len(num_samples), dtype=torch.float64)
    if weighting == "samples":
        n = num_samples.to(torch.float64)
        return n / n.sum()
    raise ValueError(f"unknown weighting {weighting!r}")


def server_step(x: torch.Tensor, mean_update: torch.Tensor, server_lr: float) -> torch.Tensor:
    """x + server_lr * (mean of client updates); server_lr = 1 is plain model averaging."""
    return x + server_lr * mean_update


def scaffold_client_control(
    c_i: torch.Tensor, c: torch.Tensor, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float
) -> torch.Tensor:
    """SCAFFOLD option II: c_i+ = c_i - c + (x - y) / (K * eta)."""
    return c_i - c + (x - y) / (steps * lr)


def scaffold_server_control(
    c: torch.Tensor, delta_c: torch.Tensor, num_participants: int, num_clients: int
) -> torch.Tensor:
    """c <- c + (|S| / N) * mean_i delta c_i, for delta_c stacked (|S|, M)."""
    return c + (num_participants / num_clients) * delta_c.mean(dim=0)


def prox_gradient(y: torch.Tensor, x: torch.Tensor, mu: float) -> torch.Tensor:
    """Gradient of the FedProx term (mu / 2) ||y - x||^2: mu (y - x)."""
    return mu * (y - x)
