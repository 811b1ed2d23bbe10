"""driftscope: see where in a neural network federated learning drifts.

Data flow: :mod:`~driftscope.data` -> :mod:`~driftscope.partition` -> :mod:`~driftscope.models` ->
:mod:`~driftscope.algorithms` -> :mod:`~driftscope.simulator` -> :mod:`~driftscope.recorder` ->
:mod:`~driftscope.runfile` -> :mod:`~driftscope.reader` -> :mod:`~driftscope.analysis` ->
:mod:`~driftscope.figures` and :mod:`~driftscope.cli`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from driftscope.config import RunConfig
from driftscope.reader import Run, open_run
from driftscope.training import train

__all__ = ["Run", "RunConfig", "__version__", "open_run", "train"]
