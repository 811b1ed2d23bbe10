"""One seed fixes everything: independent, named random streams derived from the run's seed.

Each consumer asks for its own stream by a key path, e.g. ``numpy_rng(seed, "partition")`` or
``torch_generator(seed, "batches", round, client)``, so adding a consumer never shifts another's
numbers, and a client's batches do not depend on which other clients were sampled.
"""

from __future__ import annotations

import zlib
from typing import SupportsIndex, SupportsInt

import numpy as np
import torch

Key = str | SupportsInt | SupportsIndex  # a stream name, or anything int() takes (round, client)


def _entropy(seed: int, keys: tuple[Key, ...]) -> list[int]:
    words = [int(seed)]
    for key in keys:
        words.append(zlib.crc32(key.encode()) if isinstance(key, str) else int(key))
    return words


def derive_seed(seed: int, *keys: Key) -> int:
    """A 63-bit integer seed for the stream named by ``keys``."""
    state = np.random.SeedSequence(_entropy(seed, keys)).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def numpy_rng(seed: int, *keys: Key) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(_entropy(seed, keys)))


def torch_generator(seed: int, *keys: Key) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(derive_seed(seed, *keys))
    return gen
