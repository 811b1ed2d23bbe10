"""Federated algorithms, one small file each over :class:`~driftscope.algorithms.base.Algorithm`.

``ALGORITHMS`` is the registry the config and CLI read; each module below registers its class with
:func:`register_algorithm` on import. An algorithm of your own registers the same way, from any
module imported before the run is configured (see ``tests/test_algorithms.py`` for an example).
No module here imports torch at import time.
"""

from __future__ import annotations

from driftscope.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    NoParams,
    build_algorithm,
    register_algorithm,
    warn_settings,
)
from driftscope.algorithms.fedavg import FedAvg
from driftscope.algorithms.fedprox import FedProx
from driftscope.algorithms.fedpvr import FedPVR
from driftscope.algorithms.fedpvr_auto import FedPVRAuto
from driftscope.algorithms.scaffold import Scaffold

# isort: split
# registered after the algorithms above, so that the registry lists them first
from driftscope.algorithms.fedavg_body_momentum import FedAvgBodyMomentum

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "FedAvg",
    "FedAvgBodyMomentum",
    "FedPVR",
    "FedPVRAuto",
    "FedProx",
    "NoParams",
    "Scaffold",
    "build_algorithm",
    "register_algorithm",
    "warn_settings",
]
