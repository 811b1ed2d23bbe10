"""The global LoRA adapters each round started from, stored on the rounds that store updates.

FedEx-LoRA's aggregation residual (:func:`driftscope.metrics.lora.aggregation_residual`) compares
``mean(B_i A_i)`` with ``mean(B_i) mean(A_i)`` for the client adapters ``A_i = A + dA_i``,
``B_i = B + dB_i``. The stored updates give ``dA_i`` and ``dB_i``; the global ``A`` and ``B`` come
from here. Only the LoRA factors (PEFT's ``lora_A`` / ``lora_B`` parameters, both factors of a
module among the stored parameters) are kept: a few values per adapted module, never the model.

As for L-DAWA's norms (:mod:`driftscope.engine.global_weights`), the global value is rebuilt from
the round's first client as ``y - d`` in float64 (``ClientTrained.params`` and ``.update``), off by
at most ``2^-24 |d|`` per entry; a failed client's NaN update entries take ``y`` (which is then
the global model itself).

Datasets (:mod:`driftscope.runfile.schema`): ``records/global_params/<param>`` (upd, numel) float64,
one row per stored-update round, appended before ``records/update_round``. Runs without LoRA
factors, and files written before them, have none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from driftscope.metrics.lora import lora_pairs
from driftscope.runfile import schema
from driftscope.runfile.h5write import append, growable

if TYPE_CHECKING:
    import h5py

    from driftscope.models.layout import ParamInfo


def adapter_params(stored: Sequence[ParamInfo]) -> list[ParamInfo]:
    """The stored parameters that are a LoRA factor whose partner is stored too."""
    pairs = lora_pairs(p.name for p in stored)
    names = {n for pair in pairs for n in (pair.a, pair.b)}
    return [p for p in stored if p.name in names]


class GlobalAdapters:
    """Keeps the round's global LoRA factors (from its first client) and appends them."""

    def __init__(self, file: h5py.File, stored: Sequence[ParamInfo]) -> None:
        self.file = file
        self.params = adapter_params(stored)
        self.values = [np.full(p.numel, np.nan) for p in self.params]
        self._present: bool | None = None

    @property
    def present(self) -> bool:
        """Whether the file holds the datasets (False: no LoRA factors, or an older file)."""
        if self._present is None:
            self._present = bool(self.params) and schema.GLOBAL_PARAMS in self.file
        return self._present

    def declare(self) -> None:
        """Create the datasets (before SWMR, with the recorder's others)."""
        self._present = None
        for p in self.params:
            growable(
                self.file,
                schema.global_params_path(p.name),
                (p.numel,),
                schema.GLOBAL_DTYPE,
                schema.AX_GLOBAL_PARAMS,
            )

    @torch.no_grad()
    def client(self, params: torch.Tensor, update: torch.Tensor) -> None:
        """The round's first client: keep ``w = y - d`` of every LoRA factor."""
        for j, p in enumerate(self.params):
            y = params[p.offset : p.offset + p.numel].detach().to(torch.float64)
            d = update[p.offset : p.offset + p.numel].detach().to(torch.float64)
            self.values[j] = torch.where(torch.isfinite(d), y - d, y).cpu().numpy()

    def append(self, dataset: Callable[[str], h5py.Dataset]) -> None:
        """Append the round's rows (``dataset(path)``: the recorder's cached handles)."""
        for p, value in zip(self.params, self.values, strict=True):
            append(dataset(schema.global_params_path(p.name)), value)
