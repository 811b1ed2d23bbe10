"""FedProx (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020): FedAvg with a
proximal term (mu / 2) ||y - x||^2 added to each client's local objective."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from driftscope.algorithms.base import Algorithm, register_algorithm
from driftscope.errors import ConfigError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class FedProxParams:
    mu: float = field(default=0.01, metadata={"help": "FedProx proximal weight"})

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mu) and self.mu >= 0):
            raise ConfigError(f"mu must be >= 0 and finite (got {self.mu}): try --mu 0.01")


@register_algorithm
class FedProx(Algorithm):
    name = "fedprox"
    label = "FedProx"
    Params = FedProxParams
    corrects_gradient = True

    def correct_gradient(self, grads: torch.Tensor, params: torch.Tensor, x: torch.Tensor) -> None:
        # grads += mu * (y - x), without allocating a temporary (P,) vector twice
        mu = self.params.mu
        grads.add_(params, alpha=mu).sub_(x, alpha=mu)

    def correct_gradients(
        self, clients: Sequence[int], grads: torch.Tensor, params: torch.Tensor, x: torch.Tensor
    ) -> None:
        self.correct_gradient(grads, params, x)  # (G, P) rows; x (P,) broadcasts
