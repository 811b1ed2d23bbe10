"""What an engine tells its hooks: small read-only events, one per step of a run.

An engine (the in-process :class:`~driftscope.engine.inprocess.Simulator`, the Flower strategy, the
Flower recording wrapper) calls every hook's methods in this order (through one
:class:`~driftscope.engine.lifecycle.Lifecycle`)::

    on_run_start(RunStarted)
    for each round r:  on_round_start(RoundStarted)
                       on_client_end(ClientTrained)      # once per participating client
                       on_round_end(RoundEnded)
    on_run_end(RunEnded)

Hooks see nothing else of the engine, so a hook (the recorder) cannot tell which engine produced the
events. Tensors in an event are views of the engine's buffers, valid only during the call: read
them, copy what you keep, never write to them. Committing a round to the run file is a separate
step of the trainer, after every hook's ``on_round_end``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from driftscope.config import RunConfig
    from driftscope.models.layout import LayerInfo, ModelLayout, ParamInfo


@dataclass(frozen=True)
class RunStarted:
    """A run starts (or resumes: then ``start_round`` > 0 and earlier rounds are already written)."""

    config: RunConfig
    layout: ModelLayout
    num_clients: int
    clients_per_round: int
    label_histogram: np.ndarray  # (clients, classes)
    engine: str  # "inprocess", "flower"
    start_round: int = 0
    # a recorded Flower app: {"app": its description, "strategy": its strategy's settings}, what
    # views show instead of the config's data, model and training fields (None: driftscope's run)
    app: dict | None = None


@dataclass(frozen=True)
class RoundStarted:
    round: int
    clients: tuple[int, ...]  # sorted; the row order of every per-client record of the round


@dataclass(frozen=True)
class ClientTrained:
    """One client's local training in one round.

    ``update`` (P,) = y - x and ``params`` (P,) = y (the client's trained model, for probing) are
    flat float32 vectors in :class:`~driftscope.models.layout.ModelLayout` order.
    """

    round: int
    client: int
    num_samples: int
    steps: int
    train_loss: float
    train_accuracy: float
    update: torch.Tensor
    params: torch.Tensor
    layout: ModelLayout = field(repr=False)
    # the client's module buffers after training (BatchNorm statistics), by name; empty if none
    buffers: Mapping[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def layer_update(self, key: str | ParamInfo | LayerInfo) -> torch.Tensor:
        """The update of one parameter or layer (weight and bias together), as a flat view."""
        return self.update[_span(self.layout, key)]

    def layer_params(self, key: str | ParamInfo | LayerInfo) -> torch.Tensor:
        """The client's parameters of one parameter or layer, as a flat view."""
        return self.params[_span(self.layout, key)]


@dataclass(frozen=True)
class RoundEnded:
    """What a round produced. Test metrics are NaN in rounds that were not evaluated.

    ``global_params`` (P,) is the new global model; ``control_norms`` maps a parameter name to the
    (1 + clients,) norms of the server's and every client's control variate (SCAFFOLD, FedPVR;
    empty otherwise), computed when first read. ``failed`` maps a sampled client whose reply was
    an error or never came (Flower) to the reason: it is left out of the average, its
    ``ClientTrained`` carried a NaN update, and the run file marks it in ``/clients/failed``.
    """

    round: int
    clients: tuple[int, ...]
    test_loss: float
    test_accuracy: float
    train_loss: float
    train_accuracy: float
    downlink_bytes: int
    uplink_bytes: int
    seconds: float
    client_train_loss: Mapping[int, float]
    client_train_accuracy: Mapping[int, float]
    global_params: torch.Tensor
    control_norms: Mapping[str, torch.Tensor]
    # the new global module buffers, by name (driftscope.models.buffers); empty if the model has none
    global_buffers: Mapping[str, torch.Tensor] = field(default_factory=dict, repr=False)
    failed: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class RunEnded:
    """The run stopped: status complete | diverged | interrupted | failed, and why."""

    status: str
    message: str = ""


class Hook:
    """Base class of an observer of training: every method is a no-op."""

    def on_run_start(self, event: RunStarted) -> None:
        pass

    def on_round_start(self, event: RoundStarted) -> None:
        pass

    def on_client_end(self, event: ClientTrained) -> None:
        pass

    def on_round_end(self, event: RoundEnded) -> None:
        pass

    def on_run_end(self, event: RunEnded) -> None:
        pass


def _span(layout: ModelLayout, key: Any) -> slice:
    """The flat slice of a parameter or a layer (its parameters are contiguous, in model order)."""
    if isinstance(key, str):
        found: list[ParamInfo] | list[LayerInfo] = [p for p in layout.params if p.name == key] or [
            layer for layer in layout.layers if layer.name == key
        ]
        if not found:
            raise KeyError(f"no parameter or layer named {key!r}")
        key = found[0]
    if hasattr(key, "offset"):  # ParamInfo
        return slice(key.offset, key.offset + key.numel)
    params = [layout.param(name) for name in key.params]  # LayerInfo
    return slice(params[0].offset, params[-1].offset + params[-1].numel)


@dataclass(frozen=True)
class StateRows:
    """Some rows of a per-client state table (N, ...): ``values[k]`` is row ``rows[k]`` (rows
    sorted, unique). An engine hands these to the run-file writer instead of the whole table."""

    rows: np.ndarray
    values: np.ndarray
