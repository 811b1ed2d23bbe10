"""What a recorded Flower app says and how the recording reads it: the documented metric keys of
a train reply (``num-examples``, ``partition-id``, ``label-counts``; :func:`client_metrics` builds
them in a ClientApp), the metric names read as loss and accuracy, the check of ``out``, the
strategy's settings, and the layout of a model known only by its arrays. Used by
:mod:`driftscope.flower.wrapper`.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from collections.abc import Mapping, Sequence
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Message
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from driftscope.errors import RunFileError
from driftscope.models.layout import LayerInfo, ModelLayout, ParamInfo

LOSS_KEYS = ("loss", "test_loss", "eval_loss", "test-loss")
ACCURACY_KEYS = ("accuracy", "acc", "test_accuracy", "eval_acc", "test-accuracy")
TRAIN_LOSS_KEYS = ("train_loss", "loss", "train-loss")
TRAIN_ACCURACY_KEYS = ("train_accuracy", "accuracy", "acc", "train_acc", "train-accuracy")
NUM_EXAMPLES_KEYS = ("num-examples", "num_examples")
PARTITION_ID_KEY = "partition-id"  # in a train reply's metrics: the node's partition id
LABEL_COUNTS_KEY = "label-counts"  # in a train reply's metrics: samples per class (list of int)
UNKNOWN = "unknown"
DESCRIBED = ("dataset", "model", "partition")  # always in the app description, "unknown" if unnamed


def client_metrics(
    context: Any, num_examples: int, labels: Any = None, num_classes: int | None = None
) -> dict[str, Any]:
    """What a ClientApp adds to its train reply's metrics for a recorded run: ``num-examples``,
    the node's ``partition-id`` (from its node config, when it has one) and, given the labels of
    its training data, ``label-counts`` (samples per class, ``num_classes`` long)."""
    out: dict[str, Any] = {"num-examples": int(num_examples)}
    node_config = getattr(context, "node_config", {}) or {}
    if PARTITION_ID_KEY in node_config:
        out[PARTITION_ID_KEY] = int(node_config[PARTITION_ID_KEY])
    if labels is not None:
        values = np.asarray(labels, dtype=np.int64).reshape(-1)
        k = int(num_classes) if num_classes is not None else int(values.max(initial=-1)) + 1
        out[LABEL_COUNTS_KEY] = [int(c) for c in np.bincount(values, minlength=k)[:k]]
    return out


def describe_app(
    describe: Mapping[str, Any] | None, **named: str | None
) -> tuple[dict[str, Any], str]:
    """The app's description and its JSON: ``describe``'s settings, then the ``named`` ones
    given (dataset, model, partition); each of :data:`DESCRIBED` not given is "unknown"."""
    app: dict[str, Any] = {k: UNKNOWN for k in DESCRIBED}
    for key, value in (describe or {}).items():
        app[str(key)] = value
    for key, value in named.items():
        if value is not None:
            app[key] = value
    try:
        return app, json.dumps(app, sort_keys=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"describe= must hold JSON values (numbers, strings): {err}") from None


def check_out(path: str | os.PathLike, overwrite: bool) -> Path:
    """``path`` made absolute against the current directory, checked as ``recording`` takes it:
    a one-line :class:`RunFileError` in the API's words for an existing or unwritable file."""
    from driftscope.runfile.outputs import check_output

    resolved = Path(path).expanduser()
    if not resolved.is_absolute():
        resolved = Path.cwd() / resolved
    if resolved.exists() and not resolved.is_dir() and not overwrite:
        raise RunFileError(
            f"{resolved} already exists: pass another out= or overwrite=True to recording()"
        )
    return check_output(resolved, overwrite=True, what="out=")


def strategy_settings(strategy: Strategy) -> dict[str, Any]:
    """The strategy's class and public settings: numbers, strings and flags as they are, functions
    by their qualified name (state such as FedAdam's moments is left out)."""
    settings: dict[str, Any] = {"class": type(strategy).__name__}
    for key, value in sorted(vars(strategy).items()):
        if key.startswith("_"):
            continue
        if isinstance(value, bool | int | float | str):
            settings[key] = value
        elif callable(value):
            settings[key] = (
                f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', '?')}"
            )
    return settings


def layout_from_arrays(arrays: ArrayRecord, head: Sequence[str] = ()) -> ModelLayout:
    """A model layout from named arrays: floating arrays only, layers by the keys' prefixes."""
    items = [(k, a) for k, a in arrays.items() if np.dtype(a.dtype).kind == "f"]
    if not items:
        raise ValueError("the ArrayRecord holds no floating-point arrays to record")
    layer_of = {k: k.rsplit(".", 1)[0] if "." in k else k for k, _ in items}
    layer_names = list(dict.fromkeys(layer_of.values()))
    if head:
        in_head = {k for k, _ in items if any(fnmatch.fnmatchcase(k, p) for p in head)}
        if not in_head:
            names = ", ".join(k for k, _ in items[:6]) + (", ..." if len(items) > 6 else "")
            raise ValueError(f"head={list(head)} matches no array; the arrays are {names}")
    else:
        in_head = {k for k, _ in items if layer_of[k] == layer_names[-1]}
    params, offset = [], 0
    for k, a in items:
        shape = tuple(int(s) for s in a.shape)
        params.append(ParamInfo(k, layer_of[k], "head" if k in in_head else "body", shape, offset))
        offset += params[-1].numel
    layers = []
    counters: dict[str, int] = {}
    for name in layer_names:
        members = [p for p in params if p.layer == name]
        ndim = max(len(p.shape) for p in members)
        kind, short = {4: ("Conv2d", "conv"), 3: ("Conv1d", "conv"), 2: ("Linear", "fc")}.get(
            ndim, ("Layer", "layer")
        )
        counters[short] = counters.get(short, 0) + 1
        groups = {p.group for p in members}
        group = groups.pop() if len(groups) == 1 else "mixed"
        layers.append(
            LayerInfo(
                name,
                f"{short}{counters[short]}",
                kind,
                group,
                tuple(p.name for p in members),
                sum(p.numel for p in members),
            )
        )
    return ModelLayout(tuple(params), tuple(layers))


def pick(metrics: Mapping[str, Any] | None, keys: Sequence[str]) -> float:
    if metrics is None:
        return math.nan
    for key in keys:
        value = metrics.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return math.nan


def scalars(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """The numeric (not list) entries of a MetricRecord, by name ('/' made '_' for HDF5)."""
    if metrics is None:
        return {}
    return {
        str(k).replace("/", "_"): float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def weighted_mean(values: Mapping[int, float], weights: Mapping[int, int]) -> float:
    pairs = [(v, weights.get(c, 0)) for c, v in values.items() if math.isfinite(v)]
    total = sum(w for _, w in pairs)
    if not pairs:
        return math.nan
    if total <= 0:
        return float(np.mean([v for v, _ in pairs]))
    return float(sum(v * w for v, w in pairs) / total)


def reply_metrics(reply: Message) -> Mapping[str, Any]:
    """A reply's (first) MetricRecord; {} for an error reply or none."""
    if reply.has_error():
        return {}
    return next(iter(reply.content.metric_records.values()), None) or {}


class ClientIds:
    """Which client a SuperNode answers for. Decided at the first round: if every reply carries
    ``partition-id``, client i is the node that says i (a node that restarts under a new id
    keeps its client); otherwise clients are numbered by ascending node id (random per run)."""

    def __init__(self, first_replies: Sequence[Message], nodes: Sequence[int]) -> None:
        pids = [pick(reply_metrics(m), (PARTITION_ID_KEY,)) for m in first_replies]
        pids = [p for p, m in zip(pids, first_replies, strict=True) if not m.has_error()]
        self.by_partition = bool(pids) and all(math.isfinite(p) for p in pids)
        self.client_of: dict[int, int] = {}  # node id -> client
        if not self.by_partition:
            for node in sorted(nodes):
                self.client_of.setdefault(node, len(self.client_of))
        self.span = max(
            len(nodes), len(self.client_of), *(int(p) + 1 for p in pids if math.isfinite(p)), 0
        )

    @property
    def rule(self) -> str:
        return "partition-id" if self.by_partition else "node id order (random per run)"

    def client(self, node: int, reply: Message | None, num_clients: int) -> int | None:
        """The client ``node`` answers for (None: not known, or outside the file's clients)."""
        if self.by_partition and reply is not None:
            pid = pick(reply_metrics(reply), (PARTITION_ID_KEY,))
            if math.isfinite(pid):
                self.client_of[node] = int(pid)
        elif not self.by_partition and node not in self.client_of:
            self.client_of[node] = len(self.client_of)
        client = self.client_of.get(node)
        return client if client is not None and 0 <= client < num_clients else None


def flat_arrays(arrays: ArrayRecord, layout: ModelLayout) -> torch.Tensor:
    """The parameters of ``layout`` in ``arrays`` as one float32 vector, in layout order."""
    out = torch.empty(layout.numel)
    for p in layout.params:
        values = np.asarray(arrays[p.name].numpy(), dtype=np.float32).reshape(-1)
        out[p.offset : p.offset + p.numel] = torch.from_numpy(values)
    return out


def reply_arrays(reply: Message | None, key: object = None) -> tuple[ArrayRecord | None, str]:
    """A train reply's arrays (the record named ``key``, the strategy's ``arrayrecord_key``, else
    the first), or None and why the client counts as failed."""
    if reply is None:
        return None, "no reply within the round's timeout"
    if reply.has_error():
        return None, str(reply.error.reason)  # flwr: str | None
    records = reply.content.array_records
    if isinstance(key, str) and key in records:
        return records[key], ""
    record = next(iter(records.values()), None)
    return record, "" if record is not None else "the reply holds no ArrayRecord"


def round_rows(
    sent: Sequence[int],
    replies: Sequence[Message],
    ids: ClientIds,
    num_clients: int,
    clients_per_round: int,
    server_round: int,
) -> tuple[list[int], dict[int, tuple[int, Message | None]]]:
    """The round's recorded clients (ascending, at most ``clients_per_round``: the run file was
    sized at round 1) and, per client, its node and reply (None: no reply). A node without a
    client id, or a second node for one client, is left out with a warning."""
    by_node = {m.metadata.src_node_id: m for m in replies}
    rows: dict[int, tuple[int, Message | None]] = {}
    for node in sent:
        client = ids.client(node, by_node.get(node), num_clients)
        if client is None or client in rows:
            log(
                WARNING,
                "driftscope: round %d: node %d is left out of the recording (%s)",
                server_round,
                node,
                "no partition-id reported"
                if client is None
                else f"a second node for client {client}",
            )
            continue
        rows[client] = (node, by_node.get(node))
    clients = sorted(rows)[:clients_per_round]
    if len(clients) < len(rows):
        log(
            WARNING,
            "driftscope records %d of the %d clients of round %d (the run file was sized at "
            "round 1)",
            len(clients),
            len(rows),
            server_round,
        )
    return clients, rows
