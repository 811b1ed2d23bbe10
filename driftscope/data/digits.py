"""The embedded default: scikit-learn's handwritten digits (1,797 real 8x8 images, 10 classes).

It ships inside scikit-learn, so it needs no download. The train/test split is fixed (seed 0,
20% test, stratified) and does not depend on the run's seed, so every run is scored on the same
360 test images.
"""

from __future__ import annotations

import numpy as np
import torch

from driftscope.data import Dataset

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def load_digits() -> Dataset:
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]  # (1797, 1, 8, 8) in [0, 1]
    labels = bunch.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=labels
    )
    mean = float(train_x.mean())
    std = float(train_x.std())
    return Dataset(
        name="digits",
        train_x=torch.from_numpy(np.ascontiguousarray(train_x)),
        train_y=torch.from_numpy(train_y),
        test_x=torch.from_numpy(np.ascontiguousarray(test_x)),
        test_y=torch.from_numpy(test_y),
        num_classes=10,
        mean=(mean,),
        std=(std,),
        augment=False,
    )
