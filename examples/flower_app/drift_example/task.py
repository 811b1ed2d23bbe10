"""The app's model and data: a tiny CNN and a seeded synthetic data set (4 classes of noisy 8x8
patterns), split over the SuperNodes by a Dirichlet draw; a held-out test set for the server."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

CLASSES = 4
SEED = 7


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.hidden = nn.Linear(4 * 4 * 4, 16)
        self.out = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.out(torch.relu(self.hidden(x.flatten(1))))


def new_model() -> TinyCNN:
    torch.manual_seed(SEED)
    return TinyCNN()


def _samples(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    patterns = torch.randn(CLASSES, 1, 8, 8, generator=torch.Generator().manual_seed(SEED))
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    return patterns[y] + 0.8 * torch.randn(n, 1, 8, 8, generator=gen), y


def partition(partition_id: int, num_partitions: int, alpha: float) -> tuple[torch.Tensor, ...]:
    """Partition ``partition_id`` of a 400-sample training set split by a Dirichlet(alpha) draw
    over the labels (at least 8 samples each)."""
    x, y = _samples(400, SEED + 1)
    rng = np.random.default_rng(SEED)
    owner = np.empty(len(y), dtype=np.int64)
    for c in range(CLASSES):
        idx = np.flatnonzero(y.numpy() == c)
        shares = rng.dirichlet([alpha] * num_partitions)
        owner[idx] = rng.choice(num_partitions, size=len(idx), p=shares)
    owner[: 8 * num_partitions] = np.arange(8 * num_partitions) % num_partitions
    mine = torch.from_numpy(np.flatnonzero(owner == partition_id))
    return x[mine], y[mine]


def test_set() -> tuple[torch.Tensor, torch.Tensor]:
    return _samples(200, SEED + 2)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y).item()
        accuracy = (logits.argmax(1) == y).float().mean().item()
    return loss, accuracy
