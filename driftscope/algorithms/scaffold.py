"""SCAFFOLD (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML 2020) with option II control variates, on a chosen subset of the parameters.

``ControlVariates`` is the shared machinery: :class:`Scaffold` applies it to every parameter, and
FedPVR (:mod:`driftscope.algorithms.fedpvr`) to the head only. Control variates start at zero and
exist only for the selected entries (M of P), so FedPVR's state and traffic scale with the head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from driftscope.algorithms.base import Algorithm, Selection, register_algorithm

if TYPE_CHECKING:
    import torch

    from driftscope.config import TrainConfig
    from driftscope.models import ModelLayout


class ControlVariates(Algorithm):
    """SCAFFOLD option II on the entries selected by :meth:`variance_reduced_mask`."""

    corrects_gradient = True

    def __init__(
        self, train: TrainConfig, params: Any, layout: ModelLayout, num_clients: int
    ) -> None:
        import torch

        super().__init__(train, params, layout, num_clients)
        self.selection = Selection(self.variance_reduced_mask())
        m = self.selection.size
        self.c = torch.zeros(m)  # server control variate, (M,)
        self.c_clients = torch.zeros(num_clients, m)  # client control variates, (N, M)
        self._correction = torch.zeros(m)
        self.corrects_gradient = m > 0

    def variance_reduced_mask(self) -> torch.Tensor:
        """Bool (P,): which parameters carry control variates. SCAFFOLD: all of them."""
        import torch

        return torch.ones(self.numel, dtype=torch.bool)

    def begin_client(self, client: int, x: torch.Tensor) -> None:
        import torch

        torch.sub(self.c, self.c_clients[client], out=self._correction)

    def correct_gradient(self, grads: torch.Tensor, params: torch.Tensor, x: torch.Tensor) -> None:
        self.selection.add_(grads, self._correction)  # g[sel] += c - c_i

    def correct_gradients(
        self, clients: Sequence[int], grads: torch.Tensor, params: torch.Tensor, x: torch.Tensor
    ) -> None:
        import torch

        rows = torch.tensor(clients, device=self.c_clients.device)
        correction = self.c - self.c_clients[rows]  # (G, M)
        sel = self.selection
        if sel.slice is not None:
            grads[:, sel.slice].add_(correction)
        elif sel.size:
            grads.index_add_(1, sel.index, correction)

    def end_client(
        self, client: int, x: torch.Tensor, y: torch.Tensor, steps: int
    ) -> torch.Tensor | None:
        import torch

        from driftscope.algorithms import aggregate

        if self.selection.size == 0:
            return None
        c_i = self.c_clients[client]
        if steps == 0:  # no local step taken: nothing learned, control variate unchanged
            return torch.zeros_like(c_i)
        sel = self.selection
        new = aggregate.scaffold_client_control(
            c_i, self.c, sel.take(x), sel.take(y), steps, self.train.lr
        )
        delta = new - c_i
        self.c_clients[client] = new
        return delta

    def server_update(
        self, x: torch.Tensor, mean_update: torch.Tensor, extras: list[torch.Tensor | None]
    ) -> torch.Tensor:
        import torch

        from driftscope.algorithms import aggregate

        new_x = super().server_update(x, mean_update, extras)
        deltas = [d for d in extras if d is not None]
        if deltas:
            self.c = aggregate.scaffold_server_control(
                self.c, torch.stack(deltas), len(deltas), self.num_clients
            )
        return new_x

    def values_per_client(self) -> tuple[int, int]:
        # down: model + server control variate; up: model update + control-variate delta
        return self.numel + self.selection.size, self.numel + self.selection.size

    def state_norms(self) -> dict[str, torch.Tensor]:
        """Per selected parameter: 'server' -> norm of c (scalar), 'clients' -> (N,) norms of c_i."""
        import torch

        out: dict[str, torch.Tensor] = {}
        mask = torch.zeros(self.numel, dtype=torch.bool)
        mask[self.selection.index] = True
        pos = torch.cumsum(mask.long(), 0) - 1  # position of each flat entry inside c
        for p in self.layout.params:
            seg = mask[p.offset : p.offset + p.numel]
            if not bool(seg.all()):
                continue
            start = int(pos[p.offset])
            cols = slice(start, start + p.numel)
            out[p.name] = torch.cat(
                [self.c[cols].norm().reshape(1), self.c_clients[:, cols].norm(dim=1)]
            )
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Server control variate ``c`` (M,) and client control variates ``c_clients`` (N, M)."""
        return {"c": self.c.clone(), "c_clients": self.c_clients.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != {"c", "c_clients"}:
            raise ValueError(f"{self.name} state needs c and c_clients, got {', '.join(state)}")
        c, c_clients = state["c"], state["c_clients"]
        if tuple(c.shape) != tuple(self.c.shape) or tuple(c_clients.shape) != tuple(
            self.c_clients.shape
        ):
            raise ValueError(
                f"{self.name} state shapes {tuple(c.shape)}, {tuple(c_clients.shape)} do not match "
                f"{tuple(self.c.shape)}, {tuple(self.c_clients.shape)}"
            )
        self.c = c.detach().to(self.c.dtype).clone()
        self.c_clients = c_clients.detach().to(self.c_clients.dtype).clone()


@dataclass(frozen=True)
class ScaffoldParams:
    """SCAFFOLD has no parameters beyond the general training numbers."""


@register_algorithm
class Scaffold(ControlVariates):
    name = "scaffold"
    label = "SCAFFOLD"
    Params = ScaffoldParams

    @classmethod
    def warnings(cls, train: TrainConfig) -> tuple[str, ...]:
        if train.momentum > 0:
            return (
                f"momentum {train.momentum:g} with SCAFFOLD: control variates correct every "
                "gradient and momentum carries the corrections over steps; SCAFFOLD assumes plain "
                "SGD (--momentum 0)",
            )
        return ()
