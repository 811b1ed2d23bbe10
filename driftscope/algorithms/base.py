"""The base class every federated algorithm fills in.

The simulator drives one round as::

    x = global parameters (flat)
    for each sampled client i:
        algorithm.begin_client(i, x)
        K local SGD steps on the client's batches; after each backward pass
            algorithm.correct_gradient(grads, params, x)      # only if corrects_gradient
        extra = algorithm.end_client(i, x, y, K)              # e.g. a control-variate delta
    x <- algorithm.server_update(x, weighted mean of (y_i - x), [extra_i])

A variant overrides one or two of these steps. The arithmetic lives in
:mod:`driftscope.algorithms.aggregate` as pure functions.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from driftscope.algorithms import aggregate
from driftscope.config import TrainConfig
from driftscope.models import ModelLayout

BYTES_PER_VALUE = 4  # float32 on the wire


class Algorithm:
    """FedAvg (McMahan et al., AISTATS 2017): local SGD, then the (weighted) mean of client models.

    Subclasses override the hooks below; the defaults are FedAvg's.
    """

    name: ClassVar[str] = "fedavg"
    corrects_gradient: ClassVar[bool] = False

    def __init__(self, cfg: TrainConfig, layout: ModelLayout, num_clients: int) -> None:
        self.cfg = cfg
        self.layout = layout
        self.num_clients = num_clients
        self.numel = layout.numel

    # ---------------------------------------------------------------- local training
    def momentum(self) -> float | torch.Tensor:
        """Momentum of the local SGD: a float, or a (P,) tensor for per-parameter momentum."""
        return self.cfg.momentum

    def begin_client(self, client: int, x: torch.Tensor) -> None:
        """Called before client ``client`` trains from global parameters ``x`` (P,)."""

    def correct_gradient(self, grads: torch.Tensor, params: torch.Tensor, x: torch.Tensor) -> None:
        """Modify the flat gradient (P,) in place before the SGD step."""

    def end_client(
        self, client: int, x: torch.Tensor, y: torch.Tensor, steps: int
    ) -> torch.Tensor | None:
        """Called after local training ended at ``y`` after ``steps`` steps; may return extra
        state to upload (e.g. a control-variate delta)."""
        return None

    # ---------------------------------------------------------------- server
    def server_update(
        self, x: torch.Tensor, mean_update: torch.Tensor, extras: list[torch.Tensor | None]
    ) -> torch.Tensor:
        """New global parameters from the weighted mean update."""
        return aggregate.server_step(x, mean_update, self.cfg.server_lr)

    # ---------------------------------------------------------------- accounting
    def values_per_client(self) -> tuple[int, int]:
        """(values sent down, values sent up) per participating client per round."""
        return self.numel, self.numel

    def bytes_per_client(self) -> tuple[int, int]:
        down, up = self.values_per_client()
        return down * BYTES_PER_VALUE, up * BYTES_PER_VALUE

    def state_norms(self) -> dict[str, torch.Tensor]:
        """Per-parameter norms of internal state (control variates), for the recorder."""
        return {}


class Selection:
    """A subset of the flat parameter vector: a slice view when contiguous, an index otherwise."""

    def __init__(self, mask: torch.Tensor) -> None:
        idx = mask.nonzero().flatten()
        self.size = int(idx.numel())
        self.index = idx
        self.slice: slice | None = None
        if self.size and int(idx[-1] - idx[0]) + 1 == self.size:
            self.slice = slice(int(idx[0]), int(idx[-1]) + 1)

    def take(self, v: torch.Tensor) -> torch.Tensor:
        """The selected entries of v (P,) -> (M,) (a view when contiguous)."""
        return v[..., self.slice] if self.slice is not None else v[..., self.index]

    def add_(self, v: torch.Tensor, values: torch.Tensor) -> None:
        """v[selected] += values, in place."""
        if self.slice is not None:
            v[self.slice].add_(values)
        elif self.size:
            v.index_add_(0, self.index, values)
