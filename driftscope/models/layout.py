"""Parameter and layer layout of a model: torch-free, shared by the writer, the reader and algorithms.

A :class:`ModelLayout` lists a model's parameter tensors in order (each a slot
``[offset, offset + numel)`` of the flat parameter vector) and its parameterised layers, each
marked head or body. :func:`driftscope.models.registry.model_layout` builds one from a torch model; the
reader rebuilds the same object from a run file without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported where it is used: models.py (and the CLI) stay light
    import numpy as np


@dataclass(frozen=True)
class ParamInfo:
    """One parameter tensor: its slot ``[offset, offset + numel)`` in the flat parameter vector."""

    name: str
    layer: str
    group: str  # "head" or "body"
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class LayerInfo:
    """A module that owns parameters. ``label`` is a short display name (conv1, fc2, ...)."""

    name: str
    label: str
    kind: str
    group: str  # "head", "body" or "mixed"
    params: tuple[str, ...]
    numel: int


@dataclass(frozen=True)
class ModelLayout:
    """Parameters and layers of a model in order, split into head and body."""

    params: tuple[ParamInfo, ...]
    layers: tuple[LayerInfo, ...]

    @property
    def numel(self) -> int:
        return sum(p.numel for p in self.params)

    @property
    def head_numel(self) -> int:
        return sum(p.numel for p in self.params if p.group == "head")

    @property
    def head_share(self) -> float:
        return self.head_numel / self.numel if self.numel else float("nan")

    def head_mask(self) -> np.ndarray:
        """Bool (numel,) over the flat parameter vector, True on head entries (numpy; callers that
        need a tensor use ``torch.from_numpy``)."""
        import numpy as np

        mask = np.zeros(self.numel, dtype=bool)
        for p in self.params:
            if p.group == "head":
                mask[p.offset : p.offset + p.numel] = True
        return mask

    @cached_property
    def _by_param(self) -> dict[str, ParamInfo]:
        return {p.name: p for p in self.params}

    @cached_property
    def _by_layer(self) -> dict[str, LayerInfo]:
        out = {layer.label: layer for layer in self.layers}
        out.update({layer.name: layer for layer in self.layers})
        return out

    def param(self, name: str) -> ParamInfo:
        """A parameter by name (``classifier.4.weight``); KeyError if there is none."""
        return self._by_param[name]

    def layer(self, name: str) -> LayerInfo:
        """A layer by module name (``classifier.4``) or label (``fc3``); KeyError if there is none."""
        return self._by_layer[name]
