"""The probe set and the layers' activations on it, what probe CKA compares.

:func:`probe_index` draws the probe set's test-set rows from the run's seed; :func:`probe_plan`
decides once, from one forward pass, which layers can be probed and along which batch dimension;
:func:`capture_activations` captures those layers' outputs during forward passes. Activations are
captured with forward hooks that are removed in ``finally``, detached and reduced (or cloned) inside
the hook (an in-place ReLU would otherwise change them), and a layer that runs twice in one forward
pass is an error rather than a silently overwritten capture.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from driftscope.errors import DriftscopeError
from driftscope.seeding import torch_generator

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from driftscope.models.layout import ModelLayout


def first_tensor(output: object) -> torch.Tensor | None:
    """The tensor a module's output is probed on: the output itself, or the first tensor of a
    tuple, list, dict or named output (depth first, in order), or None if it holds none."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            found = first_tensor(item)
            if found is not None:
                return found
    return None


def batch_first(tensor: torch.Tensor, batch_dim: int) -> torch.Tensor:
    """(batch, features): ``tensor`` with its batch dimension ``batch_dim`` first, flattened."""
    if batch_dim:
        tensor = tensor.movedim(batch_dim, 0)
    return tensor.reshape(tensor.shape[0], -1)


@contextmanager
def capture_activations(
    model: nn.Module,
    layer_names: list[str],
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_dims: Mapping[str, int] | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Capture each named module's output, flattened to (batch, features), during forward passes.

    A module that returns a tuple, list, dict or named output (``nn.LSTM``,
    ``nn.MultiheadAttention``) is captured on its first tensor (:func:`first_tensor`), with its
    batch dimension ``batch_dims[name]`` (default 0) moved first. With ``reduce`` the dict holds
    ``reduce(output)`` instead, computed inside the hook, before a following in-place operation
    (``ReLU(inplace=True)``) can change the output; without it the output is cloned for the same
    reason. The dict is cleared by the caller between passes; a module that runs twice in one
    pass raises (:func:`probe_plan` leaves such modules out beforehand).
    """
    captured: dict[str, torch.Tensor] = {}
    handles = []
    dims = batch_dims or {}

    def make_hook(name: str) -> Callable[[nn.Module, tuple, object], None]:
        dim = dims.get(name, 0)

        def hook(module: nn.Module, inputs: tuple, output: object) -> None:
            if name in captured:
                raise DriftscopeError(
                    f"layer '{name}' ran twice in one forward pass, so its activations are "
                    "ambiguous: turn probe CKA off with --probe-size 0 for this model"
                )
            tensor = first_tensor(output)
            if tensor is None:
                raise DriftscopeError(f"layer '{name}' returned no tensor to probe")
            flat = batch_first(tensor.detach(), dim)
            captured[name] = reduce(flat) if reduce is not None else flat.clone()

        return hook

    try:
        for name in layer_names:
            handles.append(model.get_submodule(name).register_forward_hook(make_hook(name)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def probe_plan(
    model: nn.Module, layout: ModelLayout, inputs: torch.Tensor
) -> tuple[dict[str, int], dict[str, str]]:
    """Which layers probe CKA can measure, from one forward pass of ``model`` on ``inputs``:
    ``({layer: batch dimension}, {layer: why it is skipped})``.

    A layer is probed on its module's output (the first tensor of a tuple, list, dict or named
    output) with the batch dimension first: dimension 0 when its size is the probe size n, else
    dimension 1 (sequence-first modules: ``nn.LSTM``, ``nn.MultiheadAttention`` without
    ``batch_first``). Skipped, with the reason: a parameter of the root module (no output of its
    own), a module not called or called more than once per forward pass, an output without a
    tensor or without a dimension of size n. A forward pass that fails skips every layer.
    """
    from driftscope.models.registry import ROOT_KIND

    n = inputs.shape[0]
    dims: dict[str, int] = {}
    skipped: dict[str, str] = {}
    calls: dict[str, list[object]] = {}
    handles = []

    def make_hook(name: str) -> Callable[[nn.Module, tuple, object], None]:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            tensor = first_tensor(output)
            calls[name].append(None if tensor is None else tuple(tensor.shape))

        return hook

    for layer in layout.layers:
        if layer.kind == ROOT_KIND:
            skipped[layer.name] = "a parameter of the root module: no module output of its own"
            continue
        calls[layer.name] = []
        handles.append(model.get_submodule(layer.name).register_forward_hook(make_hook(layer.name)))
    try:
        model(inputs)
    except Exception as err:  # the probe model cannot run on the probe set: skip, do not fail
        reason = f"the probe forward pass failed ({type(err).__name__}: {err})".splitlines()[0]
        return {}, {layer.name: reason for layer in layout.layers}
    finally:
        for handle in handles:
            handle.remove()
    for name, seen in calls.items():
        if len(seen) != 1:
            skipped[name] = (
                "not called in the forward pass"
                if not seen
                else f"called {len(seen)} times per forward pass (activations ambiguous)"
            )
        elif seen[0] is None:
            skipped[name] = "its output holds no tensor"
        else:
            shape = seen[0]
            assert isinstance(shape, tuple)
            if shape and shape[0] == n:
                dims[name] = 0
            elif len(shape) > 1 and shape[1] == n:
                dims[name] = 1
            else:
                skipped[name] = f"its output {list(shape)} has no batch dimension of size {n}"
    return dims, skipped


def probe_index(seed: int, num_test: int, size: int) -> np.ndarray:
    """Test-set rows of the CKA probe set: the first ``size`` of a permutation drawn from the
    (seed, "probe") stream."""
    gen = torch_generator(seed, "probe")
    return torch.randperm(num_test, generator=gen)[: min(size, num_test)].numpy()
