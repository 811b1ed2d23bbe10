"""Record per-layer drift in anyone's Flower app: wrap its Message-API strategy.

::

    from flwr.serverapp.strategy import FedAvg
    from driftscope.flower import recording

    strategy = recording(FedAvg(fraction_evaluate=0.0), out="runs/flower-fedavg.h5")
    strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=10)
    # then: driftscope analyze runs/flower-fedavg.h5

Each round the wrapper keeps the global arrays the strategy sends, and for every reply turns the
client's returned arrays into its update ``y_i - x`` (per parameter, float32), and the recorder
writes the Gram matrices (and updates, and with ``model_factory`` + ``probe_inputs`` probe CKA of
the client models) into a driftscope run file. The strategy itself receives exactly the calls and
the replies it would without the wrapper, and its results are returned unchanged.

What a wrapped run file holds that differs from a driftscope run:

- Clients are numbered by the order in which their node ids first appear (node ids are random,
  the partition id is only known to the nodes); ``/clients/failed`` marks error or missing
  replies, whose Gram rows are NaN.
- Only floating arrays are recorded (integer buffers such as BatchNorm's counters are skipped).
  Without ``model_factory`` the layers are named by the array keys' prefixes (``fc1.weight`` ->
  layer ``fc1``) and the last layer is the head; with it, the model's own layout is used.
- The config describes what the server knows: the number of nodes and rounds; data, partition and
  model fields keep driftscope's defaults and mean nothing here. ``flower_strategy`` (root attr)
  names the wrapped strategy. The test metrics are the federated evaluation's ``loss`` and
  ``accuracy`` when the strategy evaluates, NaN otherwise.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from logging import WARNING
from types import MappingProxyType, SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.result import Result
from flwr.supercore import log
from torch import nn

from driftscope import schema
from driftscope.config import RecordConfig, RunConfig
from driftscope.events import ClientTrained, Hook, RoundEnded, RoundStarted, RunEnded, RunStarted
from driftscope.flower import ENGINE
from driftscope.flower.failures import FailureLog
from driftscope.layout import LayerInfo, ModelLayout, ParamInfo
from driftscope.models import model_layout

if TYPE_CHECKING:
    from driftscope.runfile import RunWriter

LOSS_KEYS = ("loss", "test_loss", "eval_loss", "test-loss")
ACCURACY_KEYS = ("accuracy", "acc", "test_accuracy", "eval_acc", "test-accuracy")
TRAIN_LOSS_KEYS = ("train_loss", "loss", "train-loss")
TRAIN_ACCURACY_KEYS = ("train_accuracy", "accuracy", "acc", "train_acc", "train-accuracy")


def recording(
    strategy: Strategy,
    out: str | os.PathLike,
    *,
    model_factory: Callable[[], nn.Module] | None = None,
    probe_inputs: torch.Tensor | None = None,
    head: Sequence[str] = (),
    record: RecordConfig | None = None,
    overwrite: bool = False,
    hooks: Sequence[Hook] = (),
) -> RecordingStrategy:
    """Wrap ``strategy`` so that its run is recorded into the driftscope run file ``out``.

    ``model_factory`` (a function returning a fresh model with the app's architecture) and
    ``probe_inputs`` (a batch of inputs, e.g. 128 test images) turn on probe CKA. ``head``:
    parameter-name patterns forming the head (default: the last layer, or the model's own head).
    ``record``: what to store (default: Grams every round, updates every 5th, CKA every 10th).
    ``hooks``: observers of your own (e.g. :class:`driftscope.export.LiveLogger`), before the
    recorder.
    """
    return RecordingStrategy(
        strategy,
        out,
        model_factory=model_factory,
        probe_inputs=probe_inputs,
        head=head,
        record=record,
        overwrite=overwrite,
        hooks=hooks,
    )


def layout_from_arrays(arrays: ArrayRecord, head: Sequence[str] = ()) -> ModelLayout:
    """A model layout from named arrays: floating arrays only, layers by the keys' prefixes."""
    items = [(k, a) for k, a in arrays.items() if np.dtype(a.dtype).kind == "f"]
    if not items:
        raise ValueError("the ArrayRecord holds no floating-point arrays to record")
    layer_of = {k: k.rsplit(".", 1)[0] if "." in k else k for k, _ in items}
    layer_names = list(dict.fromkeys(layer_of.values()))
    if head:
        in_head = {k for k, _ in items if any(fnmatch.fnmatchcase(k, p) for p in head)}
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


def _pick(metrics: MetricRecord | None, keys: Sequence[str]) -> float:
    if metrics is None:
        return math.nan
    for key in keys:
        value = metrics.get(key)
        if isinstance(value, int | float):
            return float(value)
    return math.nan


def _finite_mean(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


class RecordingStrategy(Strategy):
    """A strategy that delegates every call to ``inner`` and records what passes through.

    Use :func:`recording` to build one. ``inner`` is available as ``.strategy``.
    """

    def __init__(
        self,
        strategy: Strategy,
        out: str | os.PathLike,
        *,
        model_factory: Callable[[], nn.Module] | None = None,
        probe_inputs: torch.Tensor | None = None,
        head: Sequence[str] = (),
        record: RecordConfig | None = None,
        overwrite: bool = False,
        hooks: Sequence[Hook] = (),
    ) -> None:
        if (probe_inputs is None) != (model_factory is None) and probe_inputs is not None:
            raise ValueError("probe_inputs need a model_factory to run the client models on")
        self.strategy = strategy
        self.out = out
        self.model_factory = model_factory
        self.probe_inputs = probe_inputs
        self.head = tuple(head)
        probe_size = 0 if probe_inputs is None else len(probe_inputs)
        self.record = dataclasses.replace(record or RecordConfig(), probe_size=probe_size)
        self.overwrite = overwrite
        self.num_rounds = 0
        self.writer: RunWriter | None = None
        self.hooks: list[Hook] = []
        self.user_hooks: list[Hook] = list(hooks)
        self.failures: FailureLog | None = None
        self.client_of: dict[int, int] = {}  # node id -> client index
        self._sim: Any = None
        self._x: torch.Tensor | None = None
        self._round_clients: list[int] = []
        self._node_of_slot: list[int] = []
        self._pending: dict[str, Any] | None = None
        self._started = 0.0

    # ------------------------------------------------------------------ delegation
    def __getattr__(self, name: str) -> Any:  # the inner strategy's settings stay reachable
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    def summary(self) -> None:
        self.strategy.summary()

    def start(  # type: ignore[override]  # the inner strategy's keywords, passed on by name
        self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, **kwargs: Any
    ) -> Result:
        """The base class's loop (it calls the wrapped methods); closes the run file at the end."""
        self.num_rounds = num_rounds
        status, message = "complete", ""
        try:
            return super().start(grid, initial_arrays, num_rounds, **kwargs)
        except KeyboardInterrupt:
            status, message = "interrupted", "stopped by the user"
            raise
        except BaseException as err:
            status, message = "failed", f"{type(err).__name__}: {err}"
            raise
        finally:
            if self._pending is not None:
                self._commit(None)
            self.close(status, message)

    def close(self, status: str = "complete", message: str = "") -> None:
        if self.writer is not None:
            ended = RunEnded(status, message)
            for hook in self.hooks:
                hook.on_run_end(ended)
            self.writer.close(status, message)
            self.writer = None

    # ------------------------------------------------------------------ set-up (first round)
    def _layout(self, arrays: ArrayRecord) -> tuple[ModelLayout, nn.Module | None]:
        if self.model_factory is None:
            return layout_from_arrays(arrays, self.head), None
        model = self.model_factory()
        layout = model_layout(model, self.head)
        missing = [p.name for p in layout.params if p.name not in arrays]
        if missing:
            raise ValueError(
                f"the strategy's arrays have no {missing[0]!r}: send the model's state_dict "
                "(ArrayRecord(model.state_dict())) so arrays and model parameters share names"
            )
        return layout, model

    def _open(self, arrays: ArrayRecord, grid: Grid, num_sampled: int) -> None:
        from driftscope.recorder import Recorder
        from driftscope.runfile import RunWriter

        layout, _ = self._layout(arrays)
        nodes = sorted(grid.get_node_ids())
        for node in nodes:
            self.client_of.setdefault(node, len(self.client_of))
        n = max(len(self.client_of), num_sampled, 1)
        cfg = RunConfig().replace(
            {
                "train.clients": n,
                "train.rounds": max(1, self.num_rounds),
                "train.client_fraction": num_sampled / n,
                "record.enabled": True,
                **{
                    f"record.{f.name}": getattr(self.record, f.name)
                    for f in dataclasses.fields(self.record)
                    if f.name != "enabled"
                },
            }
        )
        histogram = np.zeros((n, 1), dtype=np.int64)  # the server cannot know the partition
        self._sim = SimpleNamespace(
            cfg=cfg, layout=layout, num_clients=n, label_histogram=histogram
        )
        writer = RunWriter.create(self.out, self._sim, overwrite=self.overwrite)
        try:
            writer.file.attrs[schema.ENGINE_ATTR] = ENGINE
            writer.file.attrs["flower_strategy"] = type(self.strategy).__name__
            probe = self.probe_inputs
            recorder = Recorder(
                writer,
                cfg.record,
                layout,
                clients_per_round=cfg.train.clients_per_round,
                num_clients=n,
                model_factory=self.model_factory or nn.Module,
                probe_inputs=probe,
                probe_rows=np.arange(len(probe)) if probe is not None else None,
            )
            self.failures = FailureLog(writer.file, n)
            self.hooks = [*self.user_hooks, recorder, self.failures]
            writer.start_swmr()
        except BaseException:
            writer.close("failed", "could not set up the recording")
            raise
        self.writer = writer
        started = RunStarted(
            config=cfg,
            layout=layout,
            num_clients=n,
            clients_per_round=cfg.train.clients_per_round,
            label_histogram=histogram,
            engine=ENGINE,
        )
        for hook in self.hooks:
            hook.on_run_start(started)

    def _flat(self, arrays: ArrayRecord) -> torch.Tensor:
        layout = self._sim.layout
        out = torch.empty(layout.numel)
        for p in layout.params:
            values = np.asarray(arrays[p.name].numpy(), dtype=np.float32).reshape(-1)
            out[p.offset : p.offset + p.numel] = torch.from_numpy(values)
        return out

    # ------------------------------------------------------------------ training round
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._started = time.perf_counter()
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        if self.writer is None and messages:
            self._open(arrays, grid, len(messages))
        if self.writer is None:
            return messages
        if self._pending is not None:  # the previous round was never committed
            self._commit(None)
        s = self._sim.cfg.train.clients_per_round
        nodes = [m.metadata.dst_node_id for m in messages]
        for node in nodes:
            if node not in self.client_of:
                self.client_of[node] = len(self.client_of)
        recorded = [n for n in nodes if self.client_of[n] < self._sim.num_clients][:s]
        if len(recorded) < len(nodes):
            log(
                WARNING,
                "driftscope records %d of the %d clients of round %d (the run file was sized at "
                "round 1)",
                len(recorded),
                len(nodes),
                server_round,
            )
        # rows: the recorded clients in client order, padded with NaN rows if fewer were sampled
        self._node_of_slot = sorted(recorded, key=self.client_of.__getitem__)
        self._round_clients = [self.client_of[n] for n in self._node_of_slot]
        self._x = self._flat(arrays)
        r = server_round - 1
        round_started = RoundStarted(r, tuple(self._round_clients))
        for hook in self.hooks:
            hook.on_round_start(round_started)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        result = self.strategy.aggregate_train(server_round, replies)  # first, and untouched
        if self.writer is None or self._x is None:
            return result
        r = server_round - 1
        by_node = {m.metadata.src_node_id: m for m in replies}
        x = self._x
        update = torch.empty_like(x)
        failed: dict[int, str] = {}
        losses: dict[int, float] = {}
        accs: dict[int, float] = {}
        for node, client in zip(self._node_of_slot, self._round_clients, strict=True):
            reply = by_node.get(node)
            y = None
            if reply is None:
                failed[client] = "no reply within the round's timeout"
            elif reply.has_error():
                failed[client] = str(reply.error.reason)  # flwr: str | None
            else:
                record = self._reply_arrays(reply)
                if record is None:
                    failed[client] = "the reply holds no ArrayRecord"
                else:
                    y = self._flat(record)
            if y is None:  # NaN Gram rows; probed as the global model, CKA rows blanked later
                y = x
                update.fill_(math.nan)
                num, loss, acc = 0, math.nan, math.nan
            else:
                assert reply is not None  # y came from it
                torch.sub(y, x, out=update)
                metrics = next(iter(reply.content.metric_records.values()), None)
                picked = _pick(metrics, ("num-examples", "num_examples"))
                num = 0 if math.isnan(picked) else int(picked)
                loss, acc = _pick(metrics, TRAIN_LOSS_KEYS), _pick(metrics, TRAIN_ACCURACY_KEYS)
                losses[client], accs[client] = loss, acc
            trained = ClientTrained(r, client, num, 0, loss, acc, update, y, self._sim.layout)
            for hook in self.hooks:
                hook.on_client_end(trained)
        agg_arrays, _ = result
        new_x = self._flat(agg_arrays) if agg_arrays is not None else x.clone()
        self._pending = {
            "round": r,
            "new_x": new_x,
            "failed": failed,
            "losses": losses,
            "accs": accs,
            "answered": len(self._round_clients) - len(failed),
        }
        return result

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        metrics = self.strategy.aggregate_evaluate(server_round, replies)
        if self._pending is not None:
            self._commit(metrics)
        return metrics

    def _reply_arrays(self, reply: Message) -> ArrayRecord | None:
        records = reply.content.array_records
        key = getattr(self.strategy, "arrayrecord_key", None)
        if isinstance(key, str) and key in records:
            return records[key]
        return next(iter(records.values()), None)

    def _commit(self, eval_metrics: MetricRecord | None) -> None:
        """The round's end: the recorder's Grams (and CKA), the metrics, the commit marker."""
        p, self._pending = self._pending, None
        assert p is not None and self.failures is not None and self.writer is not None  # _train
        self.failures.failed = p["failed"]
        losses, accs = p["losses"], p["accs"]
        numel = self._sim.layout.numel
        event = RoundEnded(
            round=p["round"],
            clients=tuple(self._round_clients),
            test_loss=_pick(eval_metrics, LOSS_KEYS),
            test_accuracy=_pick(eval_metrics, ACCURACY_KEYS),
            train_loss=_finite_mean(losses.values()),
            train_accuracy=_finite_mean(accs.values()),
            downlink_bytes=4 * numel * len(self._round_clients),
            uplink_bytes=4 * numel * p["answered"],
            seconds=time.perf_counter() - self._started,
            client_train_loss=MappingProxyType(losses),
            client_train_accuracy=MappingProxyType(accs),
            global_params=p["new_x"],
            control_norms=MappingProxyType({}),
        )
        for hook in self.hooks:
            hook.on_round_end(event)
        self.writer.commit(event)
