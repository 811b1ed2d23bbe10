"""The run file's static part, written once when the run is created: root attributes (format,
config, environment, engine, writer), the status, the model layout, the partition, the CRC-32s of
the static datasets, and the empty growable metric tables the rounds append to.

Paths, labels and dtypes are :mod:`driftscope.runfile.schema`'s.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import time
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from driftscope.config import RunConfig
from driftscope.models.layout import ModelLayout
from driftscope.runfile import schema
from driftscope.runfile.h5write import _labelled, environment, growable

__all__ = ["write_static"]

STR = h5py.string_dtype()


def write_static(
    f: h5py.File,
    config: RunConfig | Mapping[str, Any],
    layout: ModelLayout,
    hist: np.ndarray,
    engine: str,
    device: str | None = None,
) -> None:
    """Write the static part of a new run file ``f`` (``hist``: the label histogram, clients x
    classes; ``device``: the training device, stored in the environment)."""
    env = environment()
    if device is not None:  # the training device, e.g. "cuda:0 (NVIDIA H100 80GB HBM3)"
        env["device"] = device
    config_json = config.to_json() if isinstance(config, RunConfig) else json.dumps(config)
    a = f.attrs
    a[schema.ATTR_FORMAT] = schema.FORMAT
    a[schema.ATTR_SCHEMA_VERSION] = schema.SCHEMA_VERSION
    a[schema.ATTR_DRIFTSCOPE_VERSION] = env["driftscope"]
    a[schema.ATTR_CONFIG] = config_json
    a[schema.ATTR_ENVIRONMENT] = json.dumps(env, sort_keys=True)
    a[schema.ATTR_CREATED] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    a[schema.ATTR_ENGINE] = engine
    a[schema.WRITER_HOST] = platform.node()
    a[schema.WRITER_PID] = os.getpid()
    a[schema.WRITER_STARTED] = time.time()
    f.create_dataset(schema.STATUS, data=np.bytes_(schema.RUNNING), dtype=schema.STATUS_DTYPE)
    f.create_dataset(schema.STATUS_MESSAGE, data=np.bytes_(""), dtype=schema.MESSAGE_DTYPE)

    m = f.create_group(schema.MODEL)
    lab = ("param",)
    rows = layout.params
    for field, values, dtype in (
        ("name", [p.name for p in rows], STR),
        ("layer", [p.layer for p in rows], STR),
        ("group", [p.group for p in rows], STR),
        ("shape", [json.dumps(list(p.shape)) for p in rows], STR),
        ("offset", [p.offset for p in rows], np.int64),
        ("numel", [p.numel for p in rows], np.int64),
    ):
        _labelled(f, schema.param_field(field), np.array(values, dtype=dtype), lab)
    for field in ("name", "label", "kind", "group"):
        values = [getattr(layer, field) for layer in layout.layers]
        _labelled(f, schema.layer_field(field), np.array(values, dtype=STR), ("layer",))
    numels = np.array([layer.numel for layer in layout.layers], dtype=np.int64)
    _labelled(f, schema.layer_field("numel"), numels, ("layer",))
    m.attrs[schema.MODEL_NUMEL] = layout.numel
    m.attrs[schema.MODEL_HEAD_NUMEL] = layout.head_numel

    f.create_group(schema.PARTITION)
    _labelled(f, schema.LABEL_HISTOGRAM, hist, ("client", "class"))
    _labelled(f, schema.CLIENT_SIZE, hist.sum(axis=1), ("client",))
    sums = {schema.ATTR_CONFIG: schema.static_crc32(config_json)}
    for name in (
        schema.LABEL_HISTOGRAM,
        schema.CLIENT_SIZE,
        *(schema.layer_field(field) for field in schema.LAYER_FIELDS),
        *(schema.param_field(field) for field in schema.PARAM_FIELDS),
    ):
        sums[name] = schema.static_crc32(f[name][()])
    a[schema.STATIC_CRC] = json.dumps(sums, sort_keys=True)

    g = f.create_group(schema.METRICS)
    growable(g, "round", (), np.int64, schema.AX_ROUND)
    for name in schema.METRIC_NAMES:
        growable(g, name, (), schema.metric_dtype(name), schema.AX_ROUND)
    c = f.create_group(schema.CLIENTS)
    n = int(hist.shape[0])
    for name in schema.CLIENT_METRICS:
        growable(c, name, (n,), np.float64, schema.AX_ROUND_CLIENT, fill=np.nan)
    f.create_group(schema.RECORDS)
