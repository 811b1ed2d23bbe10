"""SCAFFOLD (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML 2020) with option II control variates, on a chosen subset of the parameters.

``ControlVariates`` is the shared machinery: :class:`Scaffold` applies it to every parameter, and
FedPVR (:mod:`driftscope.algorithms.fedpvr`) to the head only. Control variates start at zero and
exist only for the selected entries (M of P), so FedPVR's state and traffic scale with the head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from driftscope.algorithms.base import Algorithm, Selection, register_algorithm
from driftscope.algorithms.client_state import MIB, ClientTable
from driftscope.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from driftscope.algorithms.base import TrainSettings
    from driftscope.models.layout import ModelLayout


class ControlVariates(Algorithm):
    """SCAFFOLD option II on the entries selected by :meth:`variance_reduced_mask`.

    Client control variates ``c_clients`` (N, M) float32 are held in memory (on the training
    device) when N x M x 4 bytes fit in ``train.state_budget_mb``; otherwise in a float32 scratch
    file (a numpy memmap in a temporary directory, deleted with the algorithm) of which only the
    sampled clients' rows are read and written, one client at a time. One round needs the server
    control variate, the correction, the client's row and the S uploaded deltas in memory:
    (S + 3) x M x 4 bytes; a budget below that is a one-line ConfigError. The per-client norms of
    each parameter's control variate (what the recorder stores) are kept up to date per trained
    client, (N, parameters) floats, so reading them never passes over all N x M values.

    With ``full_width`` (fedpvr_auto, whose selection changes over a run) the client table has a
    column for every entry, (N, P), zeros outside the selection, and the budget is checked against
    the largest selection the algorithm may choose (:meth:`largest_selection`); rows are read and
    written through :meth:`client_row` and :meth:`set_client_row`, which take the selected entries.
    """

    corrects_gradient = True
    #: the client table (N, P) holds a column per entry, zeros outside the selection
    full_width: ClassVar[bool] = False

    def __init__(
        self, train: TrainSettings, params: Any, layout: ModelLayout, num_clients: int
    ) -> None:
        import torch

        super().__init__(train, params, layout, num_clients)
        self.selection = Selection(self.variance_reduced_mask())
        m = self.selection.size
        self.c = torch.zeros(m)  # server control variate, (M,)
        self.correction = torch.zeros(m)  # c - c_i of the client being trained
        self.corrects_gradient = m > 0
        budget = train.state_budget_mb * MIB
        most = self.largest_selection()
        per_round = (train.clients_per_round + 3) * most * 4
        if per_round > budget:
            raise ConfigError(
                f"train.state_budget_mb = {train.state_budget_mb:g} MiB cannot hold one round's "
                f"control variates ({train.clients_per_round} sampled clients + 3 vectors x {most} "
                f"values x 4 bytes = {per_round / MIB:.1f} MiB): raise --state-budget-mb to at "
                f"least {per_round / MIB:.1f} or lower --client-fraction"
            )
        width = self.numel if self.full_width else m
        in_memory = num_clients * width * 4 + per_round <= budget
        #: the client control variates c_i, one row per client
        self.table = ClientTable(num_clients, width, in_memory)
        self._segments = self._norm_segments()
        self.table.segments = self._table_segments
        self.table.norms = torch.zeros(num_clients, len(self._segments))  # ||c_i|| per parameter

    @property
    def c_clients(self) -> torch.Tensor:
        """The client control variates (N, M), or (N, P) with ``full_width``."""
        return self.table.rows

    @c_clients.setter
    def c_clients(self, rows: torch.Tensor) -> None:
        self.table.rows = rows

    @property
    def in_memory(self) -> bool:
        """Whether ``c_clients`` is held in memory (else in the scratch file)."""
        return self.table.in_memory

    def to(self, device: Any) -> ControlVariates:
        self.device = device
        self.c = self.c.to(device)
        self.correction = self.correction.to(device)
        self.selection.index = self.selection.index.to(device)
        self.table.to(device)
        return self

    def variance_reduced_mask(self) -> torch.Tensor:
        """Bool (P,): which parameters carry control variates. SCAFFOLD: all of them."""
        import torch

        return torch.ones(self.numel, dtype=torch.bool)

    def largest_selection(self) -> int:
        """The most entries the selection may hold during the run (what one round's budget is
        checked against): the selection's size, as it never changes (fedpvr_auto: every entry)."""
        return self.selection.size

    def _take(self, rows: torch.Tensor) -> torch.Tensor:
        """The selected columns of client-table rows (..., width) -> (..., M)."""
        return self.selection.take(rows) if self.full_width else rows

    def client_row(self, client: int) -> torch.Tensor:
        """c_i (M,) on the training device (a view when in memory and not full width, else a
        copy; read it, write it with :meth:`set_client_row`)."""
        row = self.c_clients[client]
        return self._take(row if self.in_memory else row.to(self.c.device, non_blocking=True))

    def set_client_row(self, client: int, values: torch.Tensor) -> None:
        """c_i = ``values`` (M,) (copied into the scratch file's row when not in memory)."""
        if not self.full_width:
            self.c_clients[client] = values
            return
        row, sel = self.c_clients[client], self.selection
        if sel.slice is not None:
            row[sel.slice] = values
        elif sel.size:
            row[sel.index.to(row.device)] = values.to(row.device)

    def begin_client(self, client: int, x: torch.Tensor) -> None:
        import torch

        torch.sub(self.c, self.client_row(client), out=self.correction)

    def correct_gradient(self, grads: torch.Tensor, params: torch.Tensor, x: torch.Tensor) -> None:
        self.selection.add_(grads, self.correction)  # g[sel] += c - c_i

    def correct_gradients(
        self, clients: Sequence[int], grads: torch.Tensor, params: torch.Tensor, x: torch.Tensor
    ) -> None:
        import torch

        rows = torch.tensor(clients, device=self.c_clients.device)
        correction = self.c - self._take(self.c_clients[rows].to(self.c.device))  # (G, M)
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
        c_i = self.client_row(client)
        if steps == 0:  # no local step taken: nothing learned, control variate unchanged
            return torch.zeros_like(c_i)
        sel = self.selection
        new = aggregate.scaffold_client_control(
            c_i, self.c, sel.take(x), sel.take(y), steps, self.train.lr
        )
        delta = new - c_i
        self.set_client_row(client, new)
        self.table.wrote(client, torch.stack([new[cols].norm() for cols in self._segments]))
        return delta

    def reset_client_cache(self) -> None:
        """After ``selection`` or ``c_clients`` were replaced wholesale (fedpvr_auto switching
        layers, a load): recompute the kept norms and write every row at the next two commits."""
        self._segments = self._norm_segments()
        self.table.set_segments(self._table_segments, keep_changes=False)

    def refresh_norms(self, client: int) -> None:
        """Recompute client ``client``'s kept norms after its row of ``c_clients`` was changed
        from outside (an engine mirroring a control variate that a remote client computed)."""
        import torch

        row = self.client_row(client)
        self.table.wrote(client, torch.stack([row[cols].norm() for cols in self._segments]))

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
        self.release_pages()
        return new_x

    def release_pages(self) -> None:
        """Unmap the scratch file's pages once a round is done (:meth:`ClientTable.release_pages`)."""
        self.table.release_pages()

    def changed_rows(self) -> dict[str, np.ndarray]:
        """Rows of c_clients changed in the last two rounds (all after a load); then a new round
        begins (the writer's slot for the next round held the state of two rounds before)."""
        rows = self.table.changed_rows()
        return {} if rows is None else {"c_clients": rows}  # None: written whole

    def values_per_client(self) -> tuple[int, int]:
        # down: model + server control variate; up: model update + control-variate delta
        return self.numel + self.selection.size, self.numel + self.selection.size

    def _norm_segments(self) -> list[slice]:
        """Column slices of c, one per parameter whose every entry carries a control variate
        (``_table_segments``: the same parameters' columns in the client table)."""
        import torch

        mask = torch.zeros(self.numel, dtype=torch.bool)
        mask[self.selection.index.cpu()] = True
        pos = torch.cumsum(mask.long(), 0) - 1  # position of each flat entry inside c
        self._segment_names = []
        self._table_segments = []
        out = []
        for p in self.layout.params:
            seg = mask[p.offset : p.offset + p.numel]
            if not bool(seg.all()):
                continue
            start = int(pos[p.offset])
            out.append(slice(start, start + p.numel))
            self._segment_names.append(p.name)
            full = slice(p.offset, p.offset + p.numel)
            self._table_segments.append(full if self.full_width else out[-1])
        return out

    def state_norms(self) -> dict[str, torch.Tensor]:
        """Per selected parameter: 'server' -> norm of c, then the (N,) norms of c_i, on the CPU
        (the client norms are kept per trained client, not recomputed over all N x M values)."""
        import torch

        norms = self.table.norms.cpu()
        return {
            name: torch.cat([self.c[cols].norm().reshape(1).cpu(), norms[:, k]])
            for k, (name, cols) in enumerate(zip(self._segment_names, self._segments, strict=True))
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Server control variate ``c`` (M,) and client control variates ``c_clients`` (N, M):
        copies when in memory; the live scratch-file tensor otherwise (copying it would need
        the memory the budget keeps free)."""
        return {"c": self.c.clone(), "c_clients": self.table.snapshot()}

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
        self.c = c.detach().to(self.c.device, self.c.dtype).clone()
        self.table.load(c_clients)  # in bounded blocks; the next commit writes every row


@dataclass(frozen=True)
class ScaffoldParams:
    """SCAFFOLD has no parameters beyond the general training numbers."""


@register_algorithm
class Scaffold(ControlVariates):
    name = "scaffold"
    label = "SCAFFOLD"
    Params = ScaffoldParams

    @classmethod
    def warnings(cls, train: TrainSettings) -> tuple[str, ...]:
        if train.momentum > 0:
            return (
                f"momentum {train.momentum:g} with SCAFFOLD: control variates correct every "
                "gradient and momentum carries the corrections over steps; SCAFFOLD assumes plain "
                "SGD (--momentum 0)",
            )
        return ()
