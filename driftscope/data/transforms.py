"""Per-batch normalisation and augmentation on tensors (no PIL, no DataLoader).

``augment_batch`` reproduces torchvision's ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip``
independently per sample, drawing from an explicit ``torch.Generator`` so that batches repeat
exactly for a given seed. Padding is applied to the un-normalised image with zeros, as torchvision
does before ``Normalize``.
"""

from __future__ import annotations

import torch


def channel_stats(
    values: tuple[float, ...] | None, ndim: int, device: torch.device | None = None
) -> torch.Tensor | None:
    """Per-channel statistics (mean or std) shaped to broadcast over a batch of ``ndim``
    dimensions (B, C, ...): (1, C, 1, ...); None stays None (no normalisation)."""
    if values is None:
        return None
    return torch.tensor(values, device=device).view(1, -1, *([1] * (ndim - 2)))


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """x: (B, C, H, W) in [0, 1]; mean, std: (1, C, 1, 1). Returns a new tensor."""
    return (x - mean) / std


def augment_batch(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop back to (H, W) from a zero-padded image, then a random horizontal flip.

    x: (B, C, H, W). Each sample gets its own offsets and flip, drawn from ``generator``.
    """
    b, c, h, w = x.shape
    dev = x.device  # the draws come from ``generator`` (CPU) and move to x's device
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        top = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
        left = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
        rows = (top[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # (B, 1, H, 1)
        cols = (left[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # (B, 1, 1, W)
        batch_idx = torch.arange(b, device=dev)[:, None, None, None]
        chan_idx = torch.arange(c, device=dev)[None, :, None, None]
        x = padded[batch_idx, chan_idx, rows, cols]
    flip = (torch.rand(b, generator=generator) < 0.5).to(dev)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)
