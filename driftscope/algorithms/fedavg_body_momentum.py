"""FedAvg with FedPVR's local momentum and no control variates: the ablation that separates what
FedPVR's body momentum does from what its head control variates do.

Local SGD uses momentum ``body_momentum`` (0.9, FedPVR's default) on body parameters and the
config's ``momentum`` (0 by default) on head parameters, exactly FedPVR's rule; the server averages
the client models as FedAvg. Its first round equals FedPVR's first round (control variates start
at zero), and with ``body_momentum`` equal to ``momentum`` it is FedAvg (tests hold both).
Communication is FedAvg's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from driftscope.algorithms.base import Algorithm, register_algorithm
from driftscope.algorithms.fedpvr import body_head_momentum
from driftscope.errors import ConfigError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class FedAvgBodyMomentumParams:
    body_momentum: float | None = field(
        default=0.9,
        metadata={"help": "local SGD momentum on body parameters (none: use --momentum)"},
    )

    def __post_init__(self) -> None:
        m = self.body_momentum
        if m is not None and not (math.isfinite(m) and 0 <= m < 1):
            raise ConfigError(f"body_momentum must be in [0, 1) (got {m}): FedPVR uses 0.9")


@register_algorithm
class FedAvgBodyMomentum(Algorithm):
    name = "fedavg_body_momentum"
    label = "FedAvg + body momentum"
    Params = FedAvgBodyMomentumParams

    def momentum(self) -> float | torch.Tensor:
        return body_head_momentum(self.layout, self.train.momentum, self.params.body_momentum)
