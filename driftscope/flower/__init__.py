"""driftscope on Flower (flwr): the same algorithms and recorder on Flower's engines, and drift
recording for anyone's Flower app.

Three ways in:

- ``driftscope run --engine flower --supernodes N``: a driftscope config on Flower's simulation
  engine (:func:`driftscope.flower.simulation.run_simulation`), the same run file as in-process.
- The Flower app ``driftscope.flower.server:app`` + ``driftscope.flower.client:app`` (its
  ``pyproject.toml`` is in ``driftscope/flower/app/``) for ``flwr run`` on the simulation engine
  or on a deployment (SuperLink + SuperNodes).
- :func:`recording`: wrap any Message-API strategy (``FedAvg``, ``FedProx``, ``FedAdam``, ...) so
  that each round's client updates, per-layer Grams and (optionally) probe CKA land in a
  driftscope run file, without changing what the strategy computes.

flwr is an optional dependency: ``pip install 'driftscope[flower]'``. Importing a submodule
without it raises :class:`FlowerMissingError` (one line, naming the extra).
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING, Any

from driftscope.errors import DriftscopeError

if TYPE_CHECKING:
    from driftscope.flower.replies import client_metrics
    from driftscope.flower.strategy import DriftscopeStrategy
    from driftscope.flower.wrapper import RecordingStrategy, recording

ENGINE = "flower"
INSTALL_HINT = "pip install 'driftscope[flower]'"


class FlowerMissingError(DriftscopeError):
    """flwr (or its simulation extra, ray) is not installed."""


class FlowerRunError(DriftscopeError):
    """The Flower federation cannot run this config (missing or duplicate SuperNodes, ...)."""


def require_flwr(simulation: bool = False) -> None:
    """Raise :class:`FlowerMissingError` unless flwr (and ray, for ``simulation``) import."""
    if importlib.util.find_spec("flwr") is None:
        raise FlowerMissingError(
            f"the Flower engine needs flwr, which is not installed: {INSTALL_HINT}"
        )
    if simulation and importlib.util.find_spec("ray") is None:
        raise FlowerMissingError(
            f"Flower's simulation engine needs ray, which is not installed: {INSTALL_HINT}"
        )
    # Flower phones home unless told not to; driftscope never does.
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


def __getattr__(name: str) -> Any:
    if name in ("recording", "RecordingStrategy"):
        from driftscope.flower import wrapper

        return getattr(wrapper, name)
    if name == "client_metrics":
        from driftscope.flower.replies import client_metrics

        return client_metrics
    if name == "DriftscopeStrategy":
        from driftscope.flower.strategy import DriftscopeStrategy

        return DriftscopeStrategy
    raise AttributeError(f"module 'driftscope.flower' has no attribute {name!r}")


__all__ = [
    "ENGINE",
    "DriftscopeStrategy",
    "FlowerMissingError",
    "FlowerRunError",
    "RecordingStrategy",
    "client_metrics",
    "recording",
    "require_flwr",
]
