"""FedProx (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020): FedAvg with a
proximal term (mu / 2) ||y - x||^2 added to each client's local objective."""

from __future__ import annotations

import torch

from driftscope.algorithms.base import Algorithm


class FedProx(Algorithm):
    name = "fedprox"
    corrects_gradient = True

    def correct_gradient(self, grads: torch.Tensor, params: torch.Tensor, x: torch.Tensor) -> None:
        # grads += mu * (y - x), without allocating a temporary (P,) vector twice
        grads.add_(params, alpha=self.cfg.mu).sub_(x, alpha=self.cfg.mu)
