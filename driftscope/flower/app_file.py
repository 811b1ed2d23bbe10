"""The recorded app's part of a run file (``driftscope.flower.recording``): the head rule, the
config of what the server knows, the app's attrs, the clients' sizes and label counts as they
report them, the node id of each row and the app's own metric series."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from logging import WARNING
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from flwr.app import ArrayRecord, Message
from flwr.supercore import log
from torch import nn

from driftscope.config import RecordConfig, RunConfig
from driftscope.engine.events import Hook, RunStarted
from driftscope.engine.lifecycle import Lifecycle
from driftscope.flower import ENGINE
from driftscope.flower.replies import (
    LABEL_COUNTS_KEY,
    ClientIds,
    layout_from_arrays,
    reply_metrics,
)
from driftscope.models.buffers import load_frozen
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


@dataclasses.dataclass
class AppRecording:
    """A recorded app's run, opened at the first round's replies."""

    life: Lifecycle  # the writer and the hooks (the caller's, then the recorder)
    ids: ClientIds  # node id -> client
    layout: ModelLayout
    rule: str  # the head rule
    num_clients: int
    clients_per_round: int
    series: AppSeries
    buffer_like: dict[str, torch.Tensor]  # the probe model's buffers: names, shapes, dtypes


def open_app_recording(
    out: Path,
    *,
    overwrite: bool,
    strategy: object,
    arrays: ArrayRecord,
    replies: Sequence[Message],
    nodes: Sequence[int],
    sent: Sequence[int],
    num_rounds: int,
    record: RecordConfig,
    model_factory: Callable[[], nn.Module] | None,
    probe_inputs: torch.Tensor | None,
    head: Sequence[str],
    app: dict[str, Any],
    central: bool,
    hooks: Sequence[Hook],
) -> AppRecording:
    """The run file of a recorded app, created at the first round's replies (``sent``: the nodes
    the round was sent to; ``nodes``: the grid's): the head rule (printed), client identities,
    clients = max(sent, identities' span), the label classes the replies report; the writer with
    the app's attrs (``app``: its description and the strategy's settings), the recorder (its
    probe model built by ``model_factory``, the app's frozen parameters loaded from ``arrays``),
    the failed-clients table and the app's series; the run started. A failure closes the file as
    failed."""
    from driftscope.engine.recorder import Recorder
    from driftscope.runfile.writer import RunWriter

    layout, rule = head_layout(arrays, model_factory, head)
    heads = ", ".join(p.name for p in layout.params if p.group == "head")
    print(f"driftscope: head = {rule}: {heads}", file=sys.stderr)
    ids = ClientIds(replies, nodes)
    s = max(len(sent), 1)
    n = max(s, ids.span)
    counts = [reply_metrics(m).get(LABEL_COUNTS_KEY) for m in replies if not m.has_error()]
    k = max((len(c) for c in counts if isinstance(c, list)), default=0)
    weighted = isinstance(getattr(strategy, "weighted_by_key", None), str)
    cfg = server_config(n, s, num_rounds, weighted, record)
    histogram = np.zeros((n, k), dtype=np.int64)  # rows filled as the clients report
    writer = RunWriter.create(
        out,
        config=cfg,
        layout=layout,
        label_histogram=histogram,
        overwrite=overwrite,
        engine=ENGINE,
    )
    try:
        a = writer.file.attrs
        a["flower_strategy"] = type(strategy).__name__
        a[schema.APP_ATTR] = json.dumps(app["app"], sort_keys=False)
        a[schema.APP_STRATEGY_ATTR] = json.dumps(app["strategy"])
        a[schema.APP_HEAD_RULE_ATTR] = rule
        a[schema.APP_CLIENT_IDENTITY_ATTR] = ids.rule
        a[schema.APP_TEST_METRICS_ATTR] = (
            "central evaluate_fn" if central else "none (no evaluate_fn)"
        )
        recorder = Recorder(
            writer,
            cfg.record,
            layout,
            clients_per_round=s,
            num_clients=n,
            model_factory=model_factory or nn.Module,
            probe_inputs=probe_inputs,
            probe_rows=np.arange(len(probe_inputs)) if probe_inputs is not None else None,
        )
        load_frozen(recorder.model, arrays, {p.name for p in layout.params})  # the app's
        writer.declare_failed_clients()
        series = AppSeries(writer.file, n)
    except BaseException:
        writer.close("failed", "could not set up the recording")
        raise
    life = Lifecycle([*hooks, recorder], writer=writer)
    life.start(
        RunStarted(
            config=cfg,
            layout=layout,
            num_clients=n,
            clients_per_round=s,
            label_histogram=histogram,
            engine=ENGINE,
            app=app,
        )
    )
    return AppRecording(life, ids, layout, rule, n, s, series, dict(recorder.fixed))
