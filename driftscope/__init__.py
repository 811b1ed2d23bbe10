"""driftscope: see where in a neural network federated learning drifts.

Data flow: :mod:`~driftscope.data` -> :mod:`~driftscope.partition` -> :mod:`~driftscope.models` ->
:mod:`~driftscope.algorithms` -> :mod:`~driftscope.simulator` -> :mod:`~driftscope.recorder` ->
:mod:`~driftscope.runfile` -> :mod:`~driftscope.reader` -> :mod:`~driftscope.metrics` ->
:mod:`~driftscope.analysis` -> :mod:`~driftscope.figures`, :mod:`~driftscope.experiments` and
:mod:`~driftscope.cli`.

``import driftscope`` is light: ``train``, ``open_run`` and ``Run`` are imported on first use, so
the command line can parse arguments without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from driftscope.config import RunConfig

if TYPE_CHECKING:
    from driftscope.reader import Run, open_run
    from driftscope.training import resume, train

_LAZY = {
    "Run": "driftscope.reader",
    "open_run": "driftscope.reader",
    "train": "driftscope.training",
    "resume": "driftscope.training",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'driftscope' has no attribute {name!r}")


__all__ = ["Run", "RunConfig", "__version__", "open_run", "resume", "train"]
