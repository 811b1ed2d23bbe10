"""FedAvg with FedPVR's local momentum and no control variates: the ablation that separates what
FedPVR's body momentum does from what its head control variates do.

Local SGD uses momentum ``body_momentum`` (0.9, FedPVR's default) on body parameters and the
config's ``momentum`` (0 by default) on head parameters, exactly FedPVR's rule; the server averages
the client models as FedAvg. Its first round equals FedPVR's first round (control variates start
at zero), and with ``body_momentum`` equal to ``momentum`` it is FedAvg (tests hold both).
Communication is FedAvg's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from driftscope.algorithms.base import Algorithm, register_algorithm
from driftscope.algorithms.fedpvr import FedPVRParams, body_head_momentum

if TYPE_CHECKING:
    import torch


@register_algorithm
class FedAvgBodyMomentum(Algorithm):
    name = "fedavg_body_momentum"
    label = "FedAvg + body momentum"
    Params = FedPVRParams  # the same body_momentum setting, checked the same way

    def momentum(self) -> float | torch.Tensor:
        return body_head_momentum(self.layout, self.train.momentum, self.params.body_momentum)
