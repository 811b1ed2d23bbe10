"""FedAvg (McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
Data", AISTATS 2017). Server learning rate and uniform or sample-weighted averaging via the config;
the behaviour is the base class's."""

from __future__ import annotations

from driftscope.algorithms.base import Algorithm


class FedAvg(Algorithm):
    name = "fedavg"
