"""The global model kept every ``record.global_every`` rounds, so any kept round can be rebuilt.

:class:`GlobalModel` appends, after each kept round (:func:`driftscope.runfile.schema.keeps_global`:
every k rounds and the last), the new global model's trained parameters as trained (float32, flat
in the layout's order: ``records/global_model/params`` (kept, P)) and its module buffers in their
own dtypes (``records/global_model/buffers/<name>``), then the round (``records/global_model/round``,
last). The frozen parameters, which never change, are written once when the datasets are declared
(``records/global_model/frozen/<name>``). Together they are the model's whole ``state_dict``:
:meth:`driftscope.runfile.reader.Run.global_model` reads it back. Only arrays, no pickle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch

from driftscope.engine.events import Hook, RoundEnded
from driftscope.runfile import schema
from driftscope.runfile.h5write import append, growable

if TYPE_CHECKING:
    from driftscope.models.layout import ModelLayout
    from driftscope.runfile.writer import RunWriter


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


class GlobalModel(Hook):
    """Keeps the global parameters and buffers of every kept round in the run file."""

    def __init__(
        self,
        writer: RunWriter,
        layout: ModelLayout,
        *,
        every: int,
        rounds: int,
        buffers: Mapping[str, torch.Tensor],
        frozen: Mapping[str, torch.Tensor],
    ) -> None:
        self.file = writer.file
        self.layout = layout
        self.every = every
        self.rounds = rounds
        self.buffers = dict(buffers)  # name -> an initial value (shape and dtype)
        self.frozen = dict(frozen)

    def declare(self) -> None:
        """Create the datasets and write the frozen parameters (a new run, before SWMR)."""
        f = self.file
        group = f.require_group(schema.GLOBAL_MODEL)
        growable(group, "round", (), np.int64, schema.AX_GLOBAL_MODEL_ROUND)
        growable(group, "params", (self.layout.numel,), np.float32, schema.AX_GLOBAL_MODEL_PARAMS)
        buffers = group.require_group("buffers")
        for name, value in self.buffers.items():
            array = _array(value)
            labels = ("kept", *(f"dim{i}" for i in range(array.ndim)))
            growable(buffers, name, array.shape, array.dtype, labels)
        frozen = group.require_group("frozen")
        for name, value in self.frozen.items():
            frozen.create_dataset(name, data=_array(value))

    def on_round_end(self, event: RoundEnded) -> None:
        if not schema.keeps_global(event.round, self.every, self.rounds):
            return
        f = self.file
        append(f[schema.GLOBAL_MODEL_PARAMS], _array(event.global_params.to(torch.float32)))
        for name in self.buffers:
            append(f[schema.global_model_buffer_path(name)], _array(event.global_buffers[name]))
        append(f[schema.GLOBAL_MODEL_ROUND], event.round)
