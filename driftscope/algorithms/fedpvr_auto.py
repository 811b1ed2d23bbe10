"""FedPVR with a drift-chosen head: the layers that carry control variates are chosen from the
per-layer drift measured on the clients' updates, instead of fixed by hand.

Schedule. The first ``warmup_rounds`` rounds are plain FedAvg (no control variates; local SGD with
``body_momentum`` on every layer, as FedPVR's body). During them the algorithm measures, in float64
from the ``x`` and ``y`` it sees in :meth:`end_client`, each layer's cross-client update variance
per round, ``V_l = mean_i ||d_i,l - m_l||^2`` with ``d_i = y_i - x`` and ``m`` the unweighted mean
over the round's participants (``update_variance`` of :mod:`driftscope.metrics.drift` with uniform
weights; the tests hold the two equal), summed over the rounds of the window. At the end of the window it chooses the layers:

    layer_order "top" (default): the smallest set of layers taken from the top of the network down (the
        output layer first) whose summed variance holds ``variance_share`` of the total variance
        over all layers, i.e. the head depth k = min{k : sum of the top k layers' V >= share * V};
    layer_order "variance": the smallest set of layers, taken in decreasing order of variance, that
        holds the same share (any layers, not necessarily adjacent).

``variance_share = 0`` chooses no layer (FedAvg from then on), ``variance_share = 1`` every layer
(SCAFFOLD, with momentum 0 on every layer). Variances are absolute (sums of squares), so the share
is additive over layers and a large layer counts with its size.

From round ``warmup_rounds`` on, the chosen layers carry SCAFFOLD option-II control variates (the
:class:`~driftscope.algorithms.scaffold.ControlVariates` machinery on that selection) and use the
config's ``momentum`` (0 by default), the others ``body_momentum``. With ``rechoose_every = R > 0``
the choice is made again every R rounds from the variance of the last R rounds (measured on the
corrected training, so a corrected layer's variance is lower than it was under FedAvg: a layer may
leave the set once corrected). When the choice changes, control variates of layers that stay chosen
are kept, those of newly chosen layers start at zero (as SCAFFOLD's do in its first round), those
of dropped layers are discarded.

Communication is accounted per round for the selection used in that round: a warm-up round costs
FedAvg's (P values each way), a corrected round P + M (M chosen values) each way. The choice made at
the end of a round applies from the next round, so the round's accounting, its control-variate
norms and its record describe the selection it trained with.

Client state. The client control variates are kept at full width, (N, P) float32 with zeros
outside the chosen layers (``full_width`` of :class:`~driftscope.algorithms.scaffold.ControlVariates`),
in memory while N x P x 4 bytes fit in ``train.state_budget_mb``, else in a scratch file (a numpy
memmap, of which only the sampled clients' rows are read and written); a change of choice zeroes
the columns of dropped layers. That table is also the resume state, so resuming and committing need
no second copy. The budget must hold one round with every layer chosen, (S + 3) x P x 4 bytes,
as any layer may be chosen; a smaller one is a one-line ConfigError before training.

Per round, :meth:`round_record` gives ``chosen_layers`` (L,) uint8 (1 = the layer carried control
variates in that round) and ``layer_variance`` (L,) float64 (the round's measured V_l), which the
run writer stores under ``algorithm/``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from driftscope.algorithms.base import Selection, register_algorithm
from driftscope.algorithms.scaffold import ControlVariates
from driftscope.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from driftscope.algorithms.base import TrainSettings
    from driftscope.models.layout import ModelLayout

ORDERS = ("top", "variance")


def choose_layers(variance: np.ndarray, share: float, order: str = "top") -> np.ndarray:
    """Bool (L,): the layers to correct, from per-layer variances ``variance`` (L,) in model order
    (input first). See the module docstring for the rule; ``share >= 1`` chooses every layer."""
    import numpy as np

    v = np.asarray(variance, dtype=np.float64)
    n = len(v)
    chosen = np.zeros(n, dtype=bool)
    if share <= 0 or n == 0:
        return chosen
    if share >= 1:
        chosen[:] = True
        return chosen
    if order == "top":
        ranked = np.arange(n)[::-1]
    elif order == "variance":
        ranked = np.argsort(-v, kind="stable")
    else:
        raise ValueError(f"unknown order {order!r}: choose one of {', '.join(ORDERS)}")
    cum = np.cumsum(v[ranked])
    total = cum[-1]
    if not total > 0:  # no measured disagreement: nothing to correct
        return chosen
    k = int(np.searchsorted(cum, share * total, side="left")) + 1
    chosen[ranked[: min(k, n)]] = True
    return chosen


@dataclass(frozen=True)
class FedPVRAutoParams:
    warmup_rounds: int = field(
        default=5,
        metadata={"help": "FedAvg rounds that measure per-layer drift before the first choice"},
    )
    variance_share: float = field(
        default=0.5,
        metadata={"help": "share of the total update variance the chosen layers must hold"},
    )
    layer_order: str = field(
        default="top",
        metadata={
            "help": "which layers count first: top (output down) or variance (largest first)",
            "choices": ORDERS,
        },
    )
    rechoose_every: int = field(
        default=0,
        metadata={"help": "choose again every R rounds from the last R rounds' drift (0: never)"},
    )
    body_momentum: float | None = field(
        default=0.9,
        metadata={
            "help": "local SGD momentum on layers without control variates (none: --momentum)"
        },
    )

    def __post_init__(self) -> None:
        if not (isinstance(self.warmup_rounds, int) and self.warmup_rounds >= 1):
            raise ConfigError(
                f"warmup_rounds must be an integer >= 1 (got {self.warmup_rounds}): the choice "
                "needs at least one round of measured drift"
            )
        s = self.variance_share
        if not (math.isfinite(s) and 0 <= s <= 1):
            raise ConfigError(f"variance_share must be in [0, 1] (got {s}): e.g. 0.5")
        if self.layer_order not in ORDERS:
            raise ConfigError(
                f"layer_order must be one of {', '.join(ORDERS)} (got {self.layer_order!r})"
            )
        if not (isinstance(self.rechoose_every, int) and self.rechoose_every >= 0):
            raise ConfigError(
                f"rechoose_every must be an integer >= 0 (got {self.rechoose_every}): 0 = never"
            )
        m = self.body_momentum
        if m is not None and not (math.isfinite(m) and 0 <= m < 1):
            raise ConfigError(f"body_momentum must be in [0, 1) (got {m}): FedPVR uses 0.9")


@register_algorithm
class FedPVRAuto(ControlVariates):
    name = "fedpvr_auto"
    label = "FedPVR (auto head)"
    Params = FedPVRAutoParams
    full_width = True

    def __init__(
        self, train: TrainSettings, params: Any, layout: ModelLayout, num_clients: int
    ) -> None:
        import numpy as np
        import torch

        n_layers = len(layout.layers)
        self.chosen = np.zeros(n_layers, dtype=bool)  # the selection in use
        self._pending: np.ndarray | None = None  # chosen at a round's end, used from the next
        # each layer's slices of the flat vector (needed by variance_reduced_mask in super())
        index = {layer.name: i for i, layer in enumerate(layout.layers)}
        self._layer_slices: list[list[slice]] = [[] for _ in range(n_layers)]
        for p in layout.params:
            self._layer_slices[index[p.layer]].append(slice(p.offset, p.offset + p.numel))
        self._numel = layout.numel
        super().__init__(train, params, layout, num_clients)
        self.round = 0  # rounds completed
        self.window = np.zeros(n_layers)  # summed V_l since the last choice
        self.last_variance = np.zeros(n_layers)  # V_l of the round just ended
        self._sum = torch.zeros(self.numel, dtype=torch.float64)
        self._sumsq = np.zeros(n_layers)
        self._count = 0
        self._momentum_cache: float | torch.Tensor | None = None

    def largest_selection(self) -> int:
        """Any layer may be chosen, so one round may need every entry (none with share 0)."""
        return self.numel if self.params.variance_share > 0 else 0

    def to(self, device: Any) -> FedPVRAuto:
        import torch

        super().to(device)
        if torch.device(device).type != "mps":  # mps has no float64: the sums stay on the CPU
            self._sum = self._sum.to(device)
        return self

    @classmethod
    def warnings(cls, train: TrainSettings) -> tuple[str, ...]:
        if train.momentum > 0:
            return (
                f"momentum {train.momentum:g} also applies to the chosen layers, where control "
                "variates correct the gradient; FedPVR uses momentum 0 there (--momentum 0)",
            )
        return ()

    # ---------------------------------------------------------------- selection
    def layer_mask(self, chosen: np.ndarray) -> torch.Tensor:
        """Bool (P,): the flat entries of the layers ``chosen`` (L,)."""
        import numpy as np
        import torch

        mask = torch.zeros(self._numel, dtype=torch.bool)
        for i in np.flatnonzero(chosen):
            for s in self._layer_slices[i]:
                mask[s] = True
        return mask

    def variance_reduced_mask(self) -> torch.Tensor:
        return self.layer_mask(self.chosen)

    def _apply(self, chosen: np.ndarray) -> None:
        """Switch to ``chosen``: keep the control variates of layers that stay, zero for new ones
        (their columns of the client table are zero already), zero the dropped layers' columns."""
        import numpy as np
        import torch

        if np.array_equal(chosen, self.chosen):
            return
        old_mask, new_mask = self.layer_mask(self.chosen), self.layer_mask(chosen)
        device = self.c.device
        sel = Selection(new_mask)
        sel.index = sel.index.to(device)
        c = torch.zeros(sel.size, device=device)
        keep = old_mask & new_mask
        if bool(keep.any()):
            old_pos = (torch.cumsum(old_mask.long(), 0) - 1)[keep]
            new_pos = (torch.cumsum(new_mask.long(), 0) - 1)[keep]
            c[new_pos.to(device)] = self.c[old_pos.to(device)]
        for i in np.flatnonzero(self.chosen & ~chosen):
            for s in self._layer_slices[i]:
                self.table.zero_columns(s)
        self.chosen = chosen.copy()
        self.selection = sel
        self.c = c
        self.correction = torch.zeros(sel.size, device=device)
        self.corrects_gradient = sel.size > 0
        self._momentum_cache = None
        self.momentum_version += 1
        self.reset_client_cache()  # kept norms and changed rows follow the new selection

    def _chooses_after(self, round: int) -> bool:
        """Whether the choice is made at the end of ``round`` (0-based)."""
        w, r = self.params.warmup_rounds, self.params.rechoose_every
        done = round + 1
        return done == w or (r > 0 and done > w and (done - w) % r == 0)

    # ---------------------------------------------------------------- local training
    def momentum(self) -> float | torch.Tensor:
        import torch

        body = self.params.body_momentum
        if body is None or body == self.train.momentum:
            return self.train.momentum
        if self._momentum_cache is None:
            head = self.layer_mask(self.chosen)
            self._momentum_cache = torch.where(
                head, torch.tensor(self.train.momentum), torch.tensor(body)
            ).float()
        return self._momentum_cache

    def begin_client(self, client: int, x: torch.Tensor) -> None:
        if self._pending is not None:
            self._apply(self._pending)
            self._pending = None
        super().begin_client(client, x)

    def end_client(
        self, client: int, x: torch.Tensor, y: torch.Tensor, steps: int
    ) -> torch.Tensor | None:
        import torch

        dev = self._sum.device  # the training device (the CPU on mps)
        u = y.to(dev, torch.float64) - x.to(dev, torch.float64)
        self._sum.add_(u)
        for i, slices in enumerate(self._layer_slices):
            self._sumsq[i] += sum(float(torch.dot(u[s], u[s])) for s in slices)
        self._count += 1
        return super().end_client(client, x, y, steps)

    # ---------------------------------------------------------------- server
    def server_update(
        self, x: torch.Tensor, mean_update: torch.Tensor, extras: list[torch.Tensor | None]
    ) -> torch.Tensor:
        import numpy as np
        import torch

        new_x = super().server_update(x, mean_update, extras)
        n = max(self._count, 1)
        mean = self._sum / n
        mean_sq = np.array(
            [sum(float(torch.dot(mean[s], mean[s])) for s in sl) for sl in self._layer_slices]
        )
        variance = np.maximum(self._sumsq / n - mean_sq, 0.0) if self._count else mean_sq * 0
        self.last_variance = variance
        self.window += variance
        self._sum.zero_()
        self._sumsq[:] = 0
        self._count = 0
        if self._chooses_after(self.round):
            p = self.params
            self._pending = choose_layers(self.window, p.variance_share, p.layer_order)
            self.window = np.zeros_like(self.window)
        self.round += 1
        return new_x

    # ---------------------------------------------------------------- records
    def round_record(self) -> dict[str, np.ndarray]:
        """This round's ``chosen_layers`` (L,) uint8 and measured ``layer_variance`` (L,) f64."""
        import numpy as np

        return {
            "chosen_layers": self.chosen.astype(np.uint8),
            "layer_variance": self.last_variance.astype(np.float64),
        }

    def state_norms(self) -> dict[str, torch.Tensor]:
        """Every parameter's ||c|| then ||c_i|| (zeros for parameters without control variates,
        so the recorder sees the same names in every round)."""
        import torch

        out = super().state_norms()
        zeros = torch.zeros(1 + self.num_clients)
        return {p.name: out.get(p.name, zeros) for p in self.layout.params}

    # ---------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Fixed shapes whatever the selection: ``c`` (P,) and ``c_clients`` (N, P) with zeros
        outside the chosen layers (the client table itself: a copy when in memory, the live
        scratch-file tensor otherwise), ``chosen`` and ``pending`` (L,) (pending all -1: none),
        ``window`` (L,) f64 and ``round`` (1,)."""
        import numpy as np
        import torch

        c = torch.zeros(self.numel, device=self.c.device)
        c[self.selection.index] = self.c
        c_clients = super().state_dict()["c_clients"]
        pending = (
            np.full(len(self.chosen), -1) if self._pending is None else self._pending.astype(int)
        )
        return {
            "c": c,
            "c_clients": c_clients,
            "chosen": torch.as_tensor(self.chosen.astype(np.int64)),
            "pending": torch.as_tensor(pending.astype(np.int64)),
            "window": torch.as_tensor(self.window.copy()),
            "round": torch.tensor([self.round], dtype=torch.int64),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        import numpy as np
        import torch

        keys = {"c", "c_clients", "chosen", "pending", "window", "round"}
        if set(state) != keys:
            raise ValueError(f"{self.name} state needs {', '.join(sorted(keys))}")
        c, c_clients = torch.as_tensor(state["c"]), state["c_clients"]  # the table: sliced later
        if tuple(c.shape) != (self.numel,) or tuple(c_clients.shape) != (
            self.num_clients,
            self.numel,
        ):
            raise ValueError(f"{self.name} state shapes do not match the model and clients")
        chosen = np.asarray(state["chosen"]).astype(bool)
        self._apply(chosen)
        mask = self.layer_mask(chosen)
        super().load_state_dict({"c": c[mask], "c_clients": c_clients})  # the table in blocks
        pending = np.asarray(state["pending"])
        self._pending = None if (pending < 0).all() else pending.astype(bool)
        self.window = np.asarray(state["window"], dtype=np.float64).copy()
        self.round = int(np.asarray(state["round"]).reshape(-1)[0])
