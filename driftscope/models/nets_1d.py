"""Networks for 1-D signals (MNIST-1D): ``cnn1d``, a small 1-D CNN with a declared 3-layer head.

``CNN1D`` is :class:`~driftscope.models.nets.SmallCNN` in one dimension (the same builder,
:func:`~driftscope.models.nets.small_cnn_layers`, with ``dims=1``), so a run on MNIST-1D differs
from the digits default in the data, not in the shape of the network: a conv body (16, 32, M, 64,
64, M, global average pool; kernel 5, padding 2) and a linear head (64, 64, classes) declared by
``head_prefixes = ("classifier",)``. 33,536 body and 8,970 head parameters for one input channel
and 10 classes (head share 21.1%).

Datasets hand signals over in the image layout ``(B, C, 1, L)`` (height 1; see
:mod:`driftscope.data.mnist1d`); the model accepts that or ``(B, C, L)``.
"""

from __future__ import annotations

import torch
from torch import nn

from driftscope.errors import ConfigError
from driftscope.models.nets import he_init, small_cnn_layers


class CNN1D(nn.Module):
    """Conv1d body (16, 32, M, 64, 64, M, global average pool; kernel 5) and a 3-layer linear
    head (:func:`~driftscope.models.nets.small_cnn_layers` in 1-D)."""

    head_prefixes = ("classifier",)

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, kernel: int = 5):
        super().__init__()
        self.features, self.classifier = small_cnn_layers(
            in_channels, num_classes, width, kernel=kernel, dims=1
        )
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, 1, L) or (B, C, L) -> logits (B, num_classes)."""
        if x.ndim == 4:
            x = x.flatten(2)  # (B, C, 1, L) -> (B, C, L)
        return self.classifier(self.features(x))


def build_cnn1d(input_shape: tuple[int, ...], num_classes: int) -> CNN1D:
    """``cnn1d`` for a dataset whose inputs are ``(C, 1, L)`` signals with ``L >= 4``."""
    if len(input_shape) != 3 or input_shape[1] != 1 or input_shape[2] < 4:
        raise ConfigError(
            f"cnn1d needs 1-D signals shaped (channels, 1, length >= 4) but the dataset gives "
            f"{tuple(input_shape)}: use it with --dataset mnist1d, or pick small_cnn for images"
        )
    return CNN1D(int(input_shape[0]), num_classes)
