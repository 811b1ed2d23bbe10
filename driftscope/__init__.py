"""driftscope: see where in a neural network federated learning drifts.

Data flow: :mod:`~driftscope.data` -> :mod:`~driftscope.data.partition` -> :mod:`~driftscope.models.registry` ->
:mod:`~driftscope.algorithms` -> :mod:`~driftscope.engine.inprocess` -> :mod:`~driftscope.engine.recorder` ->
:mod:`~driftscope.runfile.writer` -> :mod:`~driftscope.runfile.reader` -> :mod:`~driftscope.metrics` ->
:mod:`~driftscope.analysis` -> :mod:`~driftscope.figures`, :mod:`~driftscope.experiments.compare` and
:mod:`~driftscope.cli`.

``import driftscope`` is light: ``train``, ``open_run`` and ``Run`` are imported on first use, so
the command line can parse arguments without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from driftscope.config import RunConfig

if TYPE_CHECKING:
    from driftscope.engine.training import resume, train
    from driftscope.runfile.reader import Run, open_run

_LAZY = {
    "Run": "driftscope.runfile.reader",
    "open_run": "driftscope.runfile.reader",
    "train": "driftscope.engine.training",
    "resume": "driftscope.engine.training",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'driftscope' has no attribute {name!r}")


__all__ = ["Run", "RunConfig", "__version__", "open_run", "resume", "train"]
