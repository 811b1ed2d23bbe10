"""What driftscope's server and client apps send each other, as Flower records.

A training message (server -> client ``i``), one per sampled client::

    "arrays"   ArrayRecord   "x": the global model as one flat float32 array (layout order)
    "control"  ArrayRecord   "c": the server control variate (SCAFFOLD: every entry; FedPVR: the
                             head entries only); absent for FedAvg and FedProx
    "buffers"  ArrayRecord   the global module buffers (BatchNorm statistics), one array per
                             buffer in its own dtype; absent when the model has none
    "config"   ConfigRecord  "run-config": the RunConfig as JSON, "round" (0-based), "client": i

The reply (client -> server)::

    "arrays"   ArrayRecord   "x": the client's model y after local training, one flat array
    "buffers"  ArrayRecord   the client's buffers after local training (when the model has any)
    "control"  ArrayRecord   "delta": c_i+ - c_i (control-variate algorithms only)
    "metrics"  MetricRecord  "partition-id" (echoed: the stable client id), "round",
                             "num-examples", "steps", "train-loss", "train-accuracy"

A query message ("query" type, sent once before the first round) asks each node for its
``partition-id`` so the server can address client ``i`` from then on: Flower's node ids are
random and change every run, the partition id is what the operator gave the node.

float32 arrays cross the wire bit-exactly (Flower serialises them with ``numpy.save``). The model
travels as one array, not one per parameter: a deployment sends each array of a message as its
own objects, one request each, so a model of many small arrays costs many round trips per hop
(benchmarks/README.md, Flower). The arrays a :class:`~driftscope.flower.strategy.DriftscopeStrategy`
hands to Flower (its initial arrays, the result) stay one per parameter, named as the model's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

if TYPE_CHECKING:
    from driftscope.models.layout import ModelLayout

ARRAYS = "arrays"
CONTROL = "control"
BUFFERS = "buffers"
CONFIG = "config"
METRICS = "metrics"
MODEL = "x"
SERVER_CONTROL = "c"
CONTROL_DELTA = "delta"
RUN_CONFIG = "run-config"
ROUND = "round"
CLIENT = "client"
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
NUM_EXAMPLES = "num-examples"
STEPS = "steps"
TRAIN_LOSS = "train-loss"
TRAIN_ACCURACY = "train-accuracy"
STATE_CONTROL = "driftscope-control"  # Context.state key of a client's control variate
STATE_CI = "c_i"
STATE_RUN = "driftscope-run"  # Context.state: the fingerprint of the run that c_i belongs to


def flat_to_arrays(flat: torch.Tensor, layout: ModelLayout) -> ArrayRecord:
    """A flat (P,) parameter vector as one named array per parameter."""
    values = flat.detach().numpy()
    record = ArrayRecord()
    for p in layout.params:
        piece = values[p.offset : p.offset + p.numel].reshape(p.shape)
        record[p.name] = Array(np.ascontiguousarray(piece))
    return record


def arrays_to_flat(record: ArrayRecord, layout: ModelLayout) -> torch.Tensor:
    """The inverse of :func:`flat_to_arrays`: a float32 (P,) vector in layout order."""
    out = torch.empty(layout.numel)
    for p in layout.params:
        if p.name not in record:
            raise KeyError(f"parameter {p.name!r} missing from the ArrayRecord")
        values = np.asarray(record[p.name].numpy(), dtype=np.float32).reshape(-1)
        if values.size != p.numel:
            raise ValueError(f"parameter {p.name!r} has {values.size} values, expected {p.numel}")
        out[p.offset : p.offset + p.numel] = torch.from_numpy(values)
    return out


def model_record(flat: torch.Tensor) -> ArrayRecord:
    """A training message's model: the flat (P,) vector as the one array :data:`MODEL`."""
    return vector_record(MODEL, flat)


def record_model(record: ArrayRecord, layout: ModelLayout) -> torch.Tensor:
    """The inverse of :func:`model_record`, checked against ``layout``: a float32 (P,) vector."""
    if MODEL not in record:
        raise KeyError(f"the model array {MODEL!r} is missing from the ArrayRecord")
    flat = record_vector(record, MODEL)
    if flat.numel() != layout.numel:
        raise ValueError(f"the model has {flat.numel()} values, expected {layout.numel}")
    return flat


def buffers_record(buffers: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """Module buffers by name, each array in its own dtype (integer counters included)."""
    record = ArrayRecord()
    for name, value in buffers.items():
        record[name] = Array(np.ascontiguousarray(value.detach().cpu().numpy()))
    return record


def record_buffers(
    record: ArrayRecord, like: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The inverse of :func:`buffers_record`: every buffer of ``like`` (the model's), in its shape
    and dtype (a 0-d counter arrives as shape (1,))."""
    from driftscope.models.buffers import arrays_buffers

    missing = [name for name in like if name not in record]
    if missing:
        raise KeyError(f"buffer {missing[0]!r} missing from the ArrayRecord")
    return arrays_buffers(record, like)


def vector_record(key: str, vector: torch.Tensor) -> ArrayRecord:
    """One flat vector (a control variate or its delta) as a one-array record."""
    return ArrayRecord({key: Array(np.ascontiguousarray(vector.detach().numpy()))})


def record_vector(record: ArrayRecord, key: str) -> torch.Tensor:
    return torch.from_numpy(np.array(record[key].numpy(), dtype=np.float32).reshape(-1))
