"""The recorded app's part of a run file (``driftscope.flower.recording``): the head rule, the
config of what the server knows, the app's attrs, the clients' sizes and label counts as they
report them, the node id of each row and the app's own metric series."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from logging import WARNING
from typing import Any

import h5py
import numpy as np
from flwr.app import ArrayRecord
from flwr.supercore import log
from torch import nn

from driftscope.config import RecordConfig, RunConfig
from driftscope.flower.replies import layout_from_arrays
from driftscope.models.layout import ModelLayout
from driftscope.models.registry import model_layout
from driftscope.runfile import schema
from driftscope.runfile.h5write import append, growable


def head_layout(
    arrays: ArrayRecord, model_factory: Callable[[], nn.Module] | None, head: Sequence[str]
) -> tuple[ModelLayout, str]:
    """The layout and the rule that chose its head: the ``head`` patterns, else the model's
    declared ``head_prefixes``, else the last parameterised layer (with or without a model)."""
    patterns = f"the head patterns {list(head)}"
    if model_factory is None:
        return layout_from_arrays(arrays, head), patterns if head else "the last layer"
    model = model_factory()
    if head:
        layout, rule = model_layout(model, head), patterns
    elif tuple(getattr(model, "head_prefixes", ())):
        layout, rule = model_layout(model), "the model's head_prefixes"
    else:
        layout, rule = model_layout(model, head_last_k=1), "the last layer"
    missing = [p.name for p in layout.params if p.name not in arrays]
    if missing:
        raise ValueError(
            f"the strategy's arrays have no {missing[0]!r}: send the model's state_dict "
            "(ArrayRecord(model.state_dict())) so arrays and model parameters share names"
        )
    return layout, rule


def server_config(
    clients: int, per_round: int, rounds: int, weighted: bool, record: RecordConfig
) -> RunConfig:
    """What the server knows, as a config (its data and model fields are not the app's: the
    views show the app's own description instead)."""
    return RunConfig().replace(
        {
            "train.clients": clients,
            "train.rounds": max(1, rounds),
            "train.client_fraction": per_round / clients,
            # Flower's FedAvg family averages weighted by the replies' num-examples
            "train.weighting": "samples" if weighted else "uniform",
            "record.enabled": True,
            **{
                f"record.{f.name}": getattr(record, f.name)
                for f in dataclasses.fields(record)
                if f.name != "enabled"
            },
        }
    )


def partition_reported_later(f: h5py.File) -> None:
    """Take the partition out of the static parts' checksums: a recorded app's clients report
    their sizes and label counts round by round, so those datasets change after creation."""
    sums = json.loads(f.attrs[schema.STATIC_CRC])
    for name in (schema.CLIENT_SIZE, schema.LABEL_HISTOGRAM):
        sums.pop(name, None)
    f.attrs[schema.STATIC_CRC] = json.dumps(sums, sort_keys=True)


def write_partition(f: h5py.File, client: int, num: int, counts: Any) -> None:
    """A client's size (its ``num-examples``) and label counts, as it reports them."""
    f[schema.CLIENT_SIZE][client] = num
    hist = f[schema.LABEL_HISTOGRAM]
    if hist.shape[1] and isinstance(counts, list) and len(counts) == hist.shape[1]:
        hist[client, :] = np.asarray(counts, dtype=np.int64)


class AppSeries:
    """``app/node_id`` (round, client) and the app's metric series ``app/central``,
    ``app/federated``, ``app/train`` (one (round,) float64 per name). The series are created at
    the first round's end, before SWMR starts (:meth:`append` starts it); a name first seen later
    is left out, with a warning. Made right after the file, before SWMR: it takes the partition
    out of the static checksums (the clients report it round by round)."""

    GROUPS = (schema.APP_CENTRAL, schema.APP_FEDERATED, schema.APP_TRAIN)

    def __init__(self, f: h5py.File, num_clients: int) -> None:
        self.file = f
        partition_reported_later(f)
        g = f.require_group(schema.APP_GROUP)
        growable(g, "node_id", (num_clients,), np.uint64, schema.AX_ROUND_CLIENT, fill=0)
        self.names: dict[str, list[str]] | None = None
        self.warned: set[str] = set()

    def append(
        self, node_ids: np.ndarray, values: Mapping[str, Mapping[str, float]], start_swmr: Any
    ) -> None:
        f = self.file
        if self.names is None:
            self.names = {}
            for group in self.GROUPS:
                g = f.require_group(group)
                for name in values.get(group, {}):
                    growable(g, name, (), np.float64, schema.AX_ROUND, fill=np.nan)
                self.names[group] = list(values.get(group, {}))
            start_swmr()
        append(f[schema.APP_NODE_ID], node_ids)
        for group, names in self.names.items():
            series = values.get(group, {})
            for name in sorted(set(series) - set(names) - self.warned):
                self.warned.add(name)
                log(
                    WARNING,
                    "driftscope: %s/%s first appeared after round 1: not recorded",
                    group,
                    name,
                )
            for name in names:
                append(f[f"{group}/{name}"], series.get(name, math.nan))
