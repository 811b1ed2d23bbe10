"""A user's own objects in a run: how the run file names them.

``train(cfg, out, model=factory, dataset=data, split=parts)`` uses objects nobody registered; the
run file names what was used, never the config's defaults: :func:`model_name` for the model,
the dataset's own ``name``, and the partition ``custom`` (:func:`recorded_config`). Torch-free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from driftscope.config import Partition, RunConfig
from driftscope.registry import names_unchecked


def model_name(factory: Callable[[], Any], model: Any) -> str:
    """How a run file names a user's own model: the factory's or the model's ``name`` attribute
    (a string), else the model's class name."""
    for owner in (factory, model):
        name = getattr(owner, "name", None)
        if isinstance(name, str) and name:
            return name
    return type(model).__name__


def recorded_config(
    cfg: RunConfig,
    *,
    dataset: str | None = None,
    model: str | None = None,
    partition: Partition | None = None,
) -> RunConfig:
    """``cfg`` as a run file records it when the user's own objects were used: the dataset's and
    model's own names and the ``custom`` partition in place of the config's (None: unchanged).
    Such names are not checked against the registries."""
    data, mdl = cfg.data, cfg.model
    if dataset is None and model is None and partition is None:
        return cfg
    with names_unchecked():
        if dataset is not None or partition is not None:
            data = dataclasses.replace(
                data,
                dataset=data.dataset if dataset is None else dataset,
                partition=data.partition if partition is None else partition,
            )
        if model is not None:
            mdl = dataclasses.replace(mdl, name=model)
        return dataclasses.replace(cfg, data=data, model=mdl)
