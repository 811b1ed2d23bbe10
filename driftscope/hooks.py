"""The simulator's hook interface: what a recorder (or any observer) sees of training.

A hook subclasses :class:`Hook` and overrides any of its methods; the simulator calls them in this
order::

    on_run_start(sim)
    for each round r:  on_round_start(sim, r, clients)
                       on_client_end(sim, r, result)        # once per sampled client
                       on_round_end(sim, r, summary)
    on_run_end(sim)

During ``on_client_end`` the simulator's working model (``sim.model``) still holds that client's
trained parameters and ``result.update`` is a view of a reused buffer: copy what you keep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from driftscope.simulator import Simulator


@dataclass
class ClientResult:
    """One client's local training in one round. ``update`` (P,) = y - x, valid during the hook."""

    round: int
    client: int
    num_samples: int
    steps: int
    train_loss: float
    train_accuracy: float
    update: torch.Tensor


@dataclass
class RoundSummary:
    """What a round produced. Test metrics are NaN in rounds that were not evaluated."""

    round: int
    clients: list[int]
    test_loss: float
    test_accuracy: float
    train_loss: float
    train_accuracy: float
    downlink_bytes: int
    uplink_bytes: int
    seconds: float
    client_train_loss: dict[int, float] = field(default_factory=dict)
    client_train_accuracy: dict[int, float] = field(default_factory=dict)


class Hook:
    """Base class: every method is a no-op."""

    def on_run_start(self, sim: Simulator) -> None:
        pass

    def on_round_start(self, sim: Simulator, round: int, clients: list[int]) -> None:
        pass

    def on_client_end(self, sim: Simulator, round: int, result: ClientResult) -> None:
        pass

    def on_round_end(self, sim: Simulator, round: int, summary: RoundSummary) -> None:
        pass

    def on_run_end(self, sim: Simulator) -> None:
        pass
