"""The network architectures behind :data:`driftscope.models.registry.MODELS` (this module imports torch).

* :class:`SmallCNN`: 4 conv layers (16, 32, pool, 64, 64, pool, global average) and a 3-layer
  linear head (64, 64, classes), like VGG-11 in miniature; fits 8x8, 28x28 and 32x32 images.
  Built by :func:`small_cnn_layers`, which also builds its 1-D twin (:mod:`driftscope.models.nets_1d`).
* :class:`VGG11`: the FedPVR paper's VGG-11 without BatchNorm for 32x32 inputs.
* :class:`MLP`: two hidden layers of 200.

Each declares its head (the classifier) by module prefixes in ``head_prefixes``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def he_init(model: nn.Module) -> nn.Module:
    """Kaiming-normal weights (fan-in, ReLU) and zero biases for every conv (1-D or 2-D) and
    linear layer, in module order.

    torch's default init scales ReLU networks without BatchNorm down layer by layer; on the small
    models it leaves FedAvg on a plateau at chance for tens of rounds.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def vgg_init(model: nn.Module) -> nn.Module:
    """The FedPVR reference code's VGG initialisation (``fed_model/vgg.py``, lyn1874/fedpvr).

    Every conv weight ~ N(0, 2 / (k_h * k_w * C_out)) (He, fan-out); conv biases and linear layers
    keep PyTorch's defaults (the reference zeroes biases only of BatchNorm layers, which this
    VGG-11 has none of).
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            k_h, k_w = module.kernel_size
            std = math.sqrt(2.0 / (k_h * k_w * module.out_channels))
            with torch.no_grad():
                module.weight.normal_(0.0, std)
    return model


def small_cnn_layers(
    in_channels: int, num_classes: int, width: int, kernel: int, dims: int
) -> tuple[nn.Sequential, nn.Sequential]:
    """SmallCNN's ``features`` and ``classifier`` in ``dims`` = 2 (images) or 1 (signals)
    dimensions: conv body (w, 2w, M, 4w, 4w, M, global average pool; ``kernel``, same padding)
    and a 3-layer linear head (4w, 4w, classes). Modules are created in this order, so with
    :func:`he_init` after it a fixed seed gives the same parameters whatever builds them."""
    conv = {1: nn.Conv1d, 2: nn.Conv2d}[dims]
    pool = {1: nn.MaxPool1d, 2: nn.MaxPool2d}[dims]
    gap = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}[dims]
    w, p = width, kernel // 2
    features = nn.Sequential(
        conv(in_channels, w, kernel, padding=p),
        nn.ReLU(),
        conv(w, 2 * w, kernel, padding=p),
        nn.ReLU(),
        pool(2),
        conv(2 * w, 4 * w, kernel, padding=p),
        nn.ReLU(),
        conv(4 * w, 4 * w, kernel, padding=p),
        nn.ReLU(),
        pool(2),
        gap(1),
        nn.Flatten(),
    )
    classifier = nn.Sequential(
        nn.Linear(4 * w, 4 * w),
        nn.ReLU(),
        nn.Linear(4 * w, 4 * w),
        nn.ReLU(),
        nn.Linear(4 * w, num_classes),
    )
    return features, classifier


class SmallCNN(nn.Module):
    """Conv body (16, 32, M, 64, 64, M, global average pool; 3x3) and a 3-layer linear head
    (:func:`small_cnn_layers` in 2-D). Initialised with :func:`he_init`.
    """

    head_prefixes = ("classifier",)

    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.features, self.classifier = small_cnn_layers(
            in_channels, num_classes, width, kernel=3, dims=2
        )
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


VGG11_CONFIG: tuple[int | str, ...] = (
    64,
    "M",
    128,
    "M",
    256,
    256,
    "M",
    512,
    512,
    "M",
    512,
    512,
    "M",
)


class VGG11(nn.Module):
    """VGG-11 without BatchNorm for 32x32 inputs, as in the FedPVR reference code.

    features: 8 conv layers (3x3, padding 1, bias, ReLU) with 5 max-pools -> (B, 512, 1, 1);
    classifier: Dropout, Linear(512, 512), ReLU, Dropout, Linear(512, 512), ReLU, Linear(512, K).
    Initialised with :func:`vgg_init`, as the reference code does.
    """

    head_prefixes = ("classifier",)

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in VGG11_CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
                channels = int(item)
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, num_classes),
        )
        vgg_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """Flatten, Linear(in, 200), ReLU, Linear(200, 200), ReLU, Linear(200, K); head = output layer."""

    head_prefixes = ("classifier",)

    def __init__(self, in_features: int, num_classes: int, hidden: int = 200) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(hidden, num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
