"""Module buffers (BatchNorm running statistics) as federated state.

A model's persistent buffers (those in its ``state_dict``: ``running_mean``, ``running_var``,
``num_batches_tracked``) travel with its parameters. Every client starts a round from the global
buffers (``model.buffers = "average"``) or from its own (``"local"``, FedBN: a client that has not
trained yet starts from the global ones), and after the round the server sets the global buffers
to the clients' weighted average with the parameters' aggregation weights, as FedAvg of a
``state_dict`` does. Evaluation, the recorder's probe of the global model and resume use the
global buffers; in ``"local"`` mode these are the average of the round's participants' buffers
(what a FedAvg server would hold), while each client trains with its own.

Arithmetic: floating buffers are summed in float64 and stored in their own dtype. Integer buffers
(``num_batches_tracked``: the step count that BatchNorm with ``momentum=None`` uses for its
cumulative average) are averaged the same way and rounded to the nearest integer, so the global
count is the starting count plus the clients' weighted mean number of local steps.
Non-persistent buffers (``register_buffer(..., persistent=False)``: constants such as attention
masks) are not federated state: they stay as the model builds them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

Buffers = dict[str, torch.Tensor]


def buffer_names(model: nn.Module) -> list[str]:
    """The persistent buffers of ``model`` (those in its ``state_dict``), in model order."""
    keys = set(model.state_dict(keep_vars=True))
    return [name for name, _ in model.named_buffers() if name in keys]


def read_buffers(model: nn.Module, names: Sequence[str]) -> Buffers:
    """The model's buffers by name: the live tensors (copy what you keep)."""
    return {name: model.get_buffer(name) for name in names}


@torch.no_grad()
def load_buffers(model: nn.Module, buffers: Mapping[str, torch.Tensor]) -> None:
    """Copy ``buffers`` into the model's own buffer tensors (in place)."""
    for name, value in buffers.items():
        model.get_buffer(name).copy_(value)


def clone_buffers(buffers: Mapping[str, torch.Tensor]) -> Buffers:
    return {name: value.detach().clone() for name, value in buffers.items()}


class BufferAverage:
    """The weighted average of clients' buffers, accumulated one client at a time (float64)."""

    def __init__(self, like: Mapping[str, torch.Tensor]) -> None:
        self.like = like
        self.sums = {
            name: torch.zeros(v.shape, dtype=torch.float64, device=v.device)
            for name, v in like.items()
        }
        self.total = 0.0

    @torch.no_grad()
    def add(self, buffers: Mapping[str, torch.Tensor], weight: float) -> None:
        for name, acc in self.sums.items():
            acc.add_(buffers[name].to(acc.device, torch.float64), alpha=weight)
        self.total += weight

    @torch.no_grad()
    def result(self) -> Buffers:
        """The average (weights normalised by their sum), each buffer in its own dtype; integer
        buffers rounded to the nearest integer."""
        out: Buffers = {}
        for name, acc in self.sums.items():
            mean = acc / self.total if self.total else acc
            dtype = self.like[name].dtype
            if not dtype.is_floating_point:
                mean = torch.round(mean)
            out[name] = mean.to(dtype)
        return out


def arrays_buffers(arrays: Mapping[str, Any] | None, like: Mapping[str, torch.Tensor]) -> Buffers:
    """The buffers of ``like`` that ``arrays`` (name -> array with ``.numpy()``, such as a Flower
    ``ArrayRecord`` of a ``state_dict``) carry, in ``like``'s shapes and dtypes (a 0-d counter
    may arrive as shape (1,)); buffers it does not carry are left out."""
    if arrays is None:
        return {}
    out: Buffers = {}
    for name, ref in like.items():
        if name in arrays:
            values = torch.from_numpy(np.array(arrays[name].numpy()))
            if values.numel() != ref.numel():
                raise ValueError(f"buffer {name!r} has {values.numel()} values, not {ref.numel()}")
            out[name] = values.reshape(ref.shape).to(ref.dtype)
    return out


@torch.no_grad()
def load_frozen(model: nn.Module | None, arrays: Mapping[str, Any], trained: set[str]) -> None:
    """Copy into ``model`` (None: nothing) the parameters that are not ``trained`` (frozen ones)
    from ``arrays`` (name -> array with ``.numpy()``), where they are present."""
    for name, tensor in model.named_parameters() if model is not None else ():
        if name not in trained and name in arrays:
            values = torch.from_numpy(np.array(arrays[name].numpy()))
            tensor.copy_(values.reshape(tensor.shape))


def buffer_bytes(buffers: Mapping[str, torch.Tensor]) -> int:
    """Bytes of one copy of the buffers on the wire."""
    return sum(v.numel() * v.element_size() for v in buffers.values())
