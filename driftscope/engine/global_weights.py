"""What L-DAWA's per-layer angle needs of the global model, recorded per round, parameter, client.

L-DAWA (Rehman et al., ICCV 2023) weights client k's layer l by ``cos(w_g,l, w_k,l)``, the cosine
between the global model's layer and the client's trained layer. With ``w_k = w_g + d_k``::

    cos(w_g, w_k) = (||w_g||^2 + <w_g, d_k>) / sqrt(||w_g||^2 (||w_g||^2 + 2 <w_g, d_k> + ||d_k||^2))

``||d_k||^2`` is the Gram diagonal (``records/gram``), so two small arrays give the angle exactly:
``||w_g||^2`` (one value per round and parameter) and ``<w_g, d_k>`` (one per client). A layer's
values are the sums of its parameters' (as its Gram is).

``w_g`` is the global model the round's clients started from. Every engine's
:class:`~driftscope.engine.events.ClientTrained` carries ``params = y_k`` and ``update = d_k =
y_k - w_g`` in float32, so ``w_g`` is taken per client as ``y_k - d_k`` in float64: ``d_k`` is the
float32 rounding of ``y_k - w_g``, so that ``w_g`` is off by at most ``2^-24 |d_k|`` per entry, an
error of the update's size, not of the weights'. Its products come from float64 sums of
``<y, y>``, ``<y, d>``, ``<d, d>`` (``<w, d> = <y, d> - <d, d>``, ``||w||^2 = <y, y> - 2 <y, d> +
<d, d>``), one pass over the two float32 vectors. A failed client (NaN update) carries ``params =
w_g`` itself: its ``<w_g, d_k>`` is NaN, like its Gram row. ``||w_g||^2`` comes from the round's
first client.

Datasets (paths in :mod:`driftscope.runfile.schema`): ``records/global/sq_norm/<param>`` (rec,)
and ``records/global/dot/<param>`` (rec, S), float64, appended with the round's other records. A
file written before they existed has neither; a resume of such a file keeps it so (the angle
then reads as not recorded).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from driftscope.engine.global_adapters import GlobalAdapters
from driftscope.metrics.gram import CHUNK_VALUES
from driftscope.runfile import schema
from driftscope.runfile.h5write import append, growable

if TYPE_CHECKING:
    import h5py

    from driftscope.models.layout import ModelLayout, ParamInfo


class GlobalWeights:
    """Accumulates one round's ``||w_g||^2`` and ``<w_g, d_k>`` per parameter; the recorder calls
    :meth:`declare` with its other datasets, :meth:`client` per client, :meth:`append` per round.
    It also keeps the global LoRA factors among the ``stored`` parameters
    (:class:`~driftscope.engine.global_adapters.GlobalAdapters`), appended by
    :meth:`append_adapters` on the rounds that store updates."""

    def __init__(
        self,
        file: h5py.File,
        layout: ModelLayout,
        clients_per_round: int,
        stored: Sequence[ParamInfo] = (),
    ) -> None:
        self.file = file
        self.adapters = GlobalAdapters(file, stored)
        self.layout = layout
        self.s = clients_per_round
        n = len(layout.params)
        self.sq_norm = np.full(n, np.nan)
        self.dot = np.full((clients_per_round, n), np.nan)

    @property
    def present(self) -> bool:
        """Whether the file holds the datasets (False: a file written before them, resumed)."""
        return schema.GLOBAL_WEIGHTS in self.file

    def declare(self) -> None:
        """Create the datasets (before SWMR, with the recorder's others)."""
        for p in self.layout.params:
            growable(
                self.file,
                schema.global_sq_norm_path(p.name),
                (),
                schema.GLOBAL_DTYPE,
                schema.AX_GLOBAL_SQ_NORM,
            )
            growable(
                self.file,
                schema.global_dot_path(p.name),
                (self.s,),
                schema.GLOBAL_DTYPE,
                schema.AX_GLOBAL_DOT,
            )
        self.adapters.declare()

    def start_round(self) -> None:
        self.sq_norm[:] = np.nan
        self.dot[:] = np.nan

    @torch.no_grad()
    def client(self, slot: int, params: torch.Tensor, update: torch.Tensor) -> None:
        """Client row ``slot``: ``<w_g, d_k>`` per parameter (and ``||w_g||^2`` from slot 0)."""
        y = params.detach()
        d = update.detach()
        sums = torch.stack([_products(y, d, p.offset, p.numel) for p in self.layout.params])
        yy, yd, dd = sums.cpu().numpy().T  # float64 <y, y>, <y, d>, <d, d> per parameter
        self.dot[slot] = yd - dd  # <y - d, d>
        if slot == 0:
            # a failed client (NaN update) carries w_g itself as its parameters
            self.sq_norm[:] = np.where(np.isfinite(dd), yy - 2 * yd + dd, yy)  # ||y - d||^2
            self.adapters.client(y, d)

    def append(self, dataset: Callable[[str], h5py.Dataset]) -> None:
        """Append the round's rows (``dataset(path)``: the recorder's cached handles)."""
        for j, p in enumerate(self.layout.params):
            append(dataset(schema.global_sq_norm_path(p.name)), self.sq_norm[j])
            append(dataset(schema.global_dot_path(p.name)), self.dot[:, j])

    def append_adapters(self, dataset: Callable[[str], h5py.Dataset]) -> None:
        """Append the round's global LoRA factors (a round that stores updates), if recorded."""
        if self.adapters.present:
            self.adapters.append(dataset)


def _products(y: torch.Tensor, d: torch.Tensor, offset: int, numel: int) -> torch.Tensor:
    """``[<y, y>, <y, d>, <d, d>]`` over ``[offset, offset + numel)`` in float64, converting
    :data:`~driftscope.metrics.gram.CHUNK_VALUES` values at a time (no float64 copy of a layer;
    products of float32 numbers are exact in float64, the sums round in float64)."""
    gram = torch.zeros(2, 2, dtype=torch.float64, device=y.device)
    step = CHUNK_VALUES // 2
    for start in range(offset, offset + numel, step):
        end = min(start + step, offset + numel)
        rows = torch.stack([y[start:end], d[start:end]]).to(torch.float64)
        gram.addmm_(rows, rows.T)
    return torch.stack([gram[0, 0], gram[0, 1], gram[1, 1]])
