"""Shared fixtures: the embedded digits dataset and small, fast runs written to run files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# One torch thread per process: the tests start subprocesses and notebook kernels beside pytest,
# and two multi-threaded torch processes on a 2-core machine slow each other down many times over.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/fakedata.py

from driftscope import RunConfig, train
from driftscope.data import load_dataset

torch.set_num_threads(1)

SMALL = {
    "train.rounds": 3,
    "train.local_epochs": 1,
    "record.probe_size": 64,
    "record.cka_every": 1,
    "record.updates_every": 1,
}


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


def small_config(**overrides) -> RunConfig:
    """The default config shrunk for tests: 3 rounds, 1 local epoch, CKA on 64 probe inputs every round.
    Keyword overrides use double underscores for dots: ``train__algorithm="scaffold"``."""
    values = dict(SMALL)
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return RunConfig().replace(values)


@pytest.fixture(scope="session")
def make_run(tmp_path_factory, digits):
    """make_run(name, **overrides) -> Path of a finished small run (cached per name)."""
    cache: dict[str, Path] = {}

    def factory(name: str = "fedavg", **overrides) -> Path:
        if name not in cache:
            path = tmp_path_factory.mktemp("runs") / f"{name}.h5"
            train(small_config(**overrides), path, dataset=digits)
            cache[name] = path
        return cache[name]

    return factory
