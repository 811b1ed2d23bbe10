"""FedAvg (McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
Data", AISTATS 2017). Server learning rate and uniform or sample-weighted averaging via the config;
the behaviour is the base class's."""

from __future__ import annotations

from dataclasses import dataclass

from driftscope.algorithms.base import Algorithm, register_algorithm


@dataclass(frozen=True)
class FedAvgParams:
    """FedAvg has no parameters beyond the general training numbers."""


@register_algorithm
class FedAvg(Algorithm):
    name = "fedavg"
    label = "FedAvg"
    Params = FedAvgParams
