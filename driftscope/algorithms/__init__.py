"""Federated algorithms, one small class each over :class:`~driftscope.algorithms.base.Algorithm`.

``ALGORITHMS`` is the registry the config and CLI use.
"""

from __future__ import annotations

from driftscope.algorithms.base import Algorithm
from driftscope.algorithms.fedavg import FedAvg
from driftscope.algorithms.fedprox import FedProx
from driftscope.algorithms.fedpvr import FedPVR
from driftscope.algorithms.scaffold import Scaffold

ALGORITHMS: dict[str, type[Algorithm]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "scaffold": Scaffold,
    "fedpvr": FedPVR,
}

__all__ = ["ALGORITHMS", "Algorithm", "FedAvg", "FedPVR", "FedProx", "Scaffold"]
