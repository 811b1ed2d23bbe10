"""FedPVR (Li, Schmidt, Alstrøm, Stich, "On the Effectiveness of Partial Variance Reduction in
Federated Learning With Heterogeneous Data", CVPR 2023): SCAFFOLD's correction on the head only.

As in the reference code, local SGD uses momentum ``body_momentum`` (0.9 there) on body parameters
and the config's ``momentum`` (0 there) on head parameters; set ``body_momentum = None`` to use
``momentum`` everywhere. With an empty head FedPVR is FedAvg; with every parameter in the head and
no momentum it is SCAFFOLD (tests hold both).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from driftscope.algorithms.base import register_algorithm
from driftscope.algorithms.scaffold import ControlVariates
from driftscope.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from driftscope.algorithms.base import TrainSettings
    from driftscope.models.layout import ModelLayout


@dataclass(frozen=True)
class FedPVRParams:
    body_momentum: float | None = field(
        default=0.9,
        metadata={"help": "local SGD momentum on body parameters (none: use --momentum)"},
    )

    def __post_init__(self) -> None:
        m = self.body_momentum
        if m is not None and not (math.isfinite(m) and 0 <= m < 1):
            raise ConfigError(f"body_momentum must be in [0, 1) (got {m}): the paper uses 0.9")


@register_algorithm
class FedPVR(ControlVariates):
    name = "fedpvr"
    label = "FedPVR"
    Params = FedPVRParams

    @classmethod
    def warnings(cls, train: TrainSettings) -> tuple[str, ...]:
        if train.momentum > 0:
            return (
                f"momentum {train.momentum:g} also applies to FedPVR's head, where control variates "
                "correct the gradient; the paper uses momentum 0 on the head (--momentum 0)",
            )
        return ()

    def variance_reduced_mask(self) -> torch.Tensor:
        import torch

        return torch.as_tensor(self.layout.head_mask())  # numpy or torch bool (P,)

    def momentum(self) -> float | torch.Tensor:
        return body_head_momentum(self.layout, self.train.momentum, self.params.body_momentum)


def body_head_momentum(
    layout: ModelLayout, head: float, body: float | None
) -> float | torch.Tensor:
    """Local SGD momentum ``body`` on body parameters and ``head`` on head parameters: a (P,)
    tensor, or the float ``head`` when ``body`` is None or equal to it (FedPVR's rule, shared by
    ``fedavg_body_momentum``)."""
    import torch

    if body is None or body == head:
        return head
    mask = torch.as_tensor(layout.head_mask())
    return torch.where(mask, torch.tensor(head), torch.tensor(body)).float()
