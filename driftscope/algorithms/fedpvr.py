"""FedPVR (Li, Schmidt, Alstrøm, Stich, "On the Effectiveness of Partial Variance Reduction in
Federated Learning With Heterogeneous Data", CVPR 2023): SCAFFOLD's correction on the head only.

As in the reference code, local SGD uses momentum ``body_momentum`` (0.9 there) on body parameters
and the config's ``momentum`` (0 there) on head parameters; set ``body_momentum = None`` to use
``momentum`` everywhere. With an empty head FedPVR is FedAvg; with every parameter in the head and
no momentum it is SCAFFOLD (tests hold both).
"""

from __future__ import annotations

import torch

from driftscope.algorithms.scaffold import ControlVariates


class FedPVR(ControlVariates):
    name = "fedpvr"

    def variance_reduced_mask(self) -> torch.Tensor:
        return self.layout.head_mask()

    def momentum(self) -> float | torch.Tensor:
        body = self.cfg.body_momentum
        if body is None or body == self.cfg.momentum:
            return self.cfg.momentum
        head = self.layout.head_mask()
        return torch.where(head, torch.tensor(self.cfg.momentum), torch.tensor(body)).float()
