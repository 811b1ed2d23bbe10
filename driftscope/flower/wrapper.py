"""Record per-layer drift in anyone's Flower app: wrap its Message-API strategy.

::

    from flwr.serverapp.strategy import FedAvg
    from driftscope.flower import recording

    strategy = recording(
        FedAvg(fraction_evaluate=0.0),
        out="runs/flower-fedavg.h5",
        dataset="cifar10",
        model="Net",
        describe={"partition": "dirichlet alpha=0.3", "lr": 0.02},
    )
    strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=10,
                   evaluate_fn=central_evaluate)
    # then: driftscope analyze runs/flower-fedavg.h5

Each round the wrapper keeps the global arrays the strategy sends, and for every reply turns the
client's returned arrays into its update ``y_i - x`` (per parameter, float32), and the recorder
writes the Gram matrices (and updates, and with ``model_factory`` + ``probe_inputs`` probe CKA of
the client models) into a driftscope run file. The strategy itself receives exactly the calls and
the replies it would without the wrapper, and its results are returned unchanged.

What the run file holds besides the drift records (docs/flower.md has the whole list): the app
as the caller described it (what it did not name is "unknown"), the strategy's class and public
settings, the app's central ``evaluate_fn`` metrics as ``test_loss``/``test_accuracy`` (NaN
without one) and every metric by name in ``app/central``, the strategy's federated evaluation in
``app/federated``, client i = the node whose train replies carry ``partition-id`` = i (else
ascending node id), client sizes from ``num-examples``, label counts from ``label-counts``, the
head rule (patterns, else the model's ``head_prefixes``, else the last layer).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from logging import WARNING
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.result import Result
from flwr.supercore import log
from torch import nn

from driftscope.config import RecordConfig
from driftscope.engine.events import ClientTrained, Hook, RoundStarted, RunStarted
from driftscope.engine.lifecycle import Lifecycle, round_ended
from driftscope.flower import ENGINE
from driftscope.flower.app_file import AppSeries, head_layout, server_config, write_partition
from driftscope.flower.replies import (
    ACCURACY_KEYS,
    DESCRIBED,
    LABEL_COUNTS_KEY,
    LOSS_KEYS,
    NUM_EXAMPLES_KEYS,
    PARTITION_ID_KEY,
    TRAIN_ACCURACY_KEYS,
    TRAIN_LOSS_KEYS,
    UNKNOWN,
    ClientIds,
    _pick,
    _scalars,
    _weighted_mean,
    check_out,
    reply_metrics,
    strategy_settings,
)
from driftscope.models.buffers import arrays_buffers, load_frozen
from driftscope.models.layout import ModelLayout
from driftscope.runfile import schema

if TYPE_CHECKING:
    from driftscope.runfile.writer import RunWriter


def recording(
    strategy: Strategy,
    out: str | os.PathLike,
    *,
    dataset: str | None = None,
    model: str | None = None,
    partition: str | None = None,
    describe: Mapping[str, Any] | None = None,
    model_factory: Callable[[], nn.Module] | None = None,
    probe_inputs: torch.Tensor | None = None,
    head: Sequence[str] = (),
    record: RecordConfig | None = None,
    overwrite: bool = False,
    hooks: Sequence[Hook] = (),
) -> RecordingStrategy:
    """Wrap ``strategy`` so that its run is recorded into the driftscope run file ``out``.

    ``dataset``, ``model``, ``partition`` and ``describe`` (any other settings to show, e.g.
    ``{"lr": 0.02, "local-epochs": 1}``) describe the app; what is not named is recorded and
    shown as unknown. ``out`` is checked now: an existing file needs ``overwrite=True``; a
    relative path is made absolute against the current directory (and printed).
    ``model_factory`` (a function returning a fresh model with the app's architecture) and
    ``probe_inputs`` (a batch of inputs, e.g. 128 test images) turn on probe CKA. ``head``:
    parameter-name patterns forming the head (default: the model's declared ``head_prefixes``,
    else the last parameterised layer). ``record``: what to store (default: Grams every round,
    updates every 5th, CKA every 10th). ``hooks``: observers of your own (e.g.
    :class:`driftscope.export.LiveLogger`), before the recorder.
    """
    return RecordingStrategy(
        strategy,
        out,
        dataset=dataset,
        model=model,
        partition=partition,
        describe=describe,
        model_factory=model_factory,
        probe_inputs=probe_inputs,
        head=head,
        record=record,
        overwrite=overwrite,
        hooks=hooks,
    )


class RecordingStrategy(Strategy):
    """A strategy that delegates every call to ``inner`` and records what passes through.

    Use :func:`recording` to build one. ``inner`` is available as ``.strategy``.
    """

    def __init__(
        self,
        strategy: Strategy,
        out: str | os.PathLike,
        *,
        dataset: str | None = None,
        model: str | None = None,
        partition: str | None = None,
        describe: Mapping[str, Any] | None = None,
        model_factory: Callable[[], nn.Module] | None = None,
        probe_inputs: torch.Tensor | None = None,
        head: Sequence[str] = (),
        record: RecordConfig | None = None,
        overwrite: bool = False,
        hooks: Sequence[Hook] = (),
    ) -> None:
        if probe_inputs is not None and model_factory is None:
            raise ValueError("probe_inputs need a model_factory to run the client models on")
        self.strategy = strategy
        self.out = check_out(out, overwrite)
        if not Path(out).expanduser().is_absolute():
            print(f"driftscope: recording into {self.out}", file=sys.stderr)
        app: dict[str, Any] = {k: UNKNOWN for k in DESCRIBED}
        for key, value in (describe or {}).items():
            app[str(key)] = value
        for key, value in (("dataset", dataset), ("model", model), ("partition", partition)):
            if value is not None:
                app[key] = value
        try:
            self.app_json = json.dumps(app, sort_keys=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"describe= must hold JSON values (numbers, strings): {err}") from None
        self.app = app
        self.settings = strategy_settings(strategy)
        self.model_factory = model_factory
        self.probe_inputs = probe_inputs
        self.head = tuple(head)
        probe_size = 0 if probe_inputs is None else len(probe_inputs)
        self.record = dataclasses.replace(record or RecordConfig(), probe_size=probe_size)
        self.overwrite = overwrite
        self.num_rounds = 0
        self.life: Lifecycle | None = None  # opened at the first round's replies
        self.user_hooks: list[Hook] = list(hooks)
        self.ids: ClientIds | None = None  # node id -> client, from the first round's replies
        self.layout: ModelLayout | None = None
        self.num_clients = self.clients_per_round = 0
        self.head_rule = ""
        self.central = False  # the app passed evaluate_fn to start
        self._grid: Grid | None = None
        self._x: torch.Tensor | None = None
        self._sent: list[int] = []
        self._round_clients: list[int] = []
        self._pending: dict[str, Any] | None = None
        self.series: AppSeries | None = None
        self._arrays: ArrayRecord | None = None
        self._buffer_like: dict[str, torch.Tensor] = {}  # the probe model's buffers, by name
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
        """The base class's loop (it calls the wrapped methods); closes the run file at the end.

        ``evaluate_fn`` (the app's central evaluation) is wrapped: each round is committed after
        it ran, with its metrics."""
        self.num_rounds = num_rounds
        evaluate_fn = kwargs.get("evaluate_fn")
        if evaluate_fn is not None:
            self.central = True

            def central(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
                metrics = evaluate_fn(server_round, arrays)
                if self._pending is not None and self._pending["round"] == server_round - 1:
                    self._commit(central=metrics)
                return metrics

            kwargs["evaluate_fn"] = central
        error: BaseException | None = None
        try:
            return super().start(grid, initial_arrays, num_rounds, **kwargs)
        except BaseException as err:
            error = err
            raise
        finally:
            if self._pending is not None and self.writer is not None:
                self._commit()
            self.close(error)

    @property
    def writer(self) -> RunWriter | None:
        return self.life.writer if self.life is not None else None

    def close(self, error: BaseException | None = None) -> None:
        """End the recording with the status of ``error`` (None: complete); then a no-op."""
        if self.life is not None:
            self.life.end(error)
            self.life = None

    # ------------------------------------------------------------------ set-up (first round)
    def _open(self, arrays: ArrayRecord, replies: Sequence[Message]) -> None:
        from driftscope.engine.recorder import Recorder
        from driftscope.runfile.writer import RunWriter

        layout, self.head_rule = head_layout(arrays, self.model_factory, self.head)
        print(
            f"driftscope: head = {self.head_rule}: "
            + ", ".join(p.name for p in layout.params if p.group == "head"),
            file=sys.stderr,
        )
        assert self._grid is not None  # set by configure_train
        nodes = list(self._grid.get_node_ids())
        self.ids = ids = ClientIds(replies, nodes)
        s = max(len(self._sent), 1)
        n = max(s, ids.span)
        counts = [reply_metrics(m).get(LABEL_COUNTS_KEY) for m in replies if not m.has_error()]
        k = max((len(c) for c in counts if isinstance(c, list)), default=0)
        self.layout, self.num_clients, self.clients_per_round = layout, n, s
        weighted = isinstance(getattr(self.strategy, "weighted_by_key", None), str)
        cfg = server_config(n, s, self.num_rounds, weighted, self.record)
        histogram = np.zeros((n, k), dtype=np.int64)  # rows filled as the clients report
        writer = RunWriter.create(
            self.out,
            config=cfg,
            layout=layout,
            label_histogram=histogram,
            overwrite=self.overwrite,
            engine=ENGINE,
        )
        try:
            a = writer.file.attrs
            a["flower_strategy"] = type(self.strategy).__name__
            a[schema.APP_ATTR] = self.app_json
            a[schema.APP_STRATEGY_ATTR] = json.dumps(self.settings)
            a[schema.APP_HEAD_RULE_ATTR] = self.head_rule
            a[schema.APP_CLIENT_IDENTITY_ATTR] = ids.rule
            a[schema.APP_TEST_METRICS_ATTR] = (
                "central evaluate_fn" if self.central else "none (no evaluate_fn)"
            )
            probe = self.probe_inputs
            recorder = Recorder(
                writer,
                cfg.record,
                layout,
                clients_per_round=s,
                num_clients=n,
                model_factory=self.model_factory or nn.Module,
                probe_inputs=probe,
                probe_rows=np.arange(len(probe)) if probe is not None else None,
            )
            load_frozen(recorder.model, arrays, {p.name for p in layout.params})  # the app's
            self._buffer_like = dict(recorder.fixed)  # the buffers' names, shapes and dtypes
            writer.declare_failed_clients()
            self.series = AppSeries(writer.file, n)
        except BaseException:
            writer.close("failed", "could not set up the recording")
            raise
        self.life = Lifecycle([*self.user_hooks, recorder], writer=writer)
        self.life.start(
            RunStarted(
                config=cfg,
                layout=layout,
                num_clients=n,
                clients_per_round=s,
                label_histogram=histogram,
                engine=ENGINE,
                app={"app": json.loads(self.app_json), "strategy": self.settings},
            )
        )

    def _flat(self, arrays: ArrayRecord) -> torch.Tensor:
        assert self.layout is not None
        out = torch.empty(self.layout.numel)
        for p in self.layout.params:
            values = np.asarray(arrays[p.name].numpy(), dtype=np.float32).reshape(-1)
            out[p.offset : p.offset + p.numel] = torch.from_numpy(values)
        return out

    # ------------------------------------------------------------------ training round
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._started = time.perf_counter()
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._grid = grid
        if self._pending is not None and self.writer is not None:  # never committed
            self._commit()
        self._sent = [m.metadata.dst_node_id for m in messages]
        self._arrays = arrays
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        result = self.strategy.aggregate_train(server_round, replies)  # first, and untouched
        if self.writer is None and self._sent and self._arrays is not None:
            self._open(self._arrays, replies)
        life = self.life
        if life is None or self.layout is None or self._arrays is None or self.ids is None:
            return result
        assert life.writer is not None
        r = server_round - 1
        x = self._x = self._flat(self._arrays)
        by_node = {m.metadata.src_node_id: m for m in replies}
        rows: dict[int, tuple[int, Message | None]] = {}
        for node in self._sent:
            client = self.ids.client(node, by_node.get(node), self.num_clients)
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
        clients = sorted(rows)[: self.clients_per_round]
        if len(clients) < len(rows):
            log(
                WARNING,
                "driftscope records %d of the %d clients of round %d (the run file was sized at "
                "round 1)",
                len(clients),
                len(rows),
                server_round,
            )
        self._round_clients = clients
        life.round_start(RoundStarted(r, tuple(clients)))
        update = torch.empty_like(x)
        failed: dict[int, str] = {}
        losses: dict[int, float] = {}
        accs: dict[int, float] = {}
        sizes: dict[int, int] = {}
        node_ids = np.zeros(self.num_clients, dtype=np.uint64)
        for client in clients:
            node, reply = rows[client]
            node_ids[client] = node
            y, buffers = None, {}  # a failed client's CKA rows are NaN (RoundEnded.failed)
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
                    buffers = arrays_buffers(record, self._buffer_like)
            if y is None:  # NaN Gram rows; probed as the global model, its CKA rows NaN
                y = x
                update.fill_(math.nan)
                num, loss, acc = 0, math.nan, math.nan
            else:
                assert reply is not None  # y came from it
                torch.sub(y, x, out=update)
                metrics = reply_metrics(reply)
                picked = _pick(metrics, NUM_EXAMPLES_KEYS)
                num = 0 if math.isnan(picked) else int(picked)
                loss, acc = _pick(metrics, TRAIN_LOSS_KEYS), _pick(metrics, TRAIN_ACCURACY_KEYS)
                losses[client], accs[client], sizes[client] = loss, acc, num
                write_partition(life.writer.file, client, num, metrics.get(LABEL_COUNTS_KEY))
            life.client_end(
                ClientTrained(r, client, num, 0, loss, acc, update, y, self.layout, buffers)
            )
        agg_arrays, agg_metrics = result
        new_x = self._flat(agg_arrays) if agg_arrays is not None else x.clone()
        train = {  # a weighted mean of partition ids or sizes means nothing
            k: v
            for k, v in _scalars(agg_metrics).items()
            if k not in (PARTITION_ID_KEY, *NUM_EXAMPLES_KEYS)
        }
        train_loss = _pick(agg_metrics, TRAIN_LOSS_KEYS)
        train_acc = _pick(agg_metrics, TRAIN_ACCURACY_KEYS)
        self._pending = {
            "round": r,
            "new_x": new_x,
            "new_buffers": arrays_buffers(agg_arrays or self._arrays, self._buffer_like),
            "failed": failed,
            "losses": losses,
            "accs": accs,
            "train": train,
            "train_loss": train_loss if agg_metrics else _weighted_mean(losses, sizes),
            "train_accuracy": train_acc if agg_metrics else _weighted_mean(accs, sizes),
            "federated": {},
            "node_ids": node_ids,
            "answered": len(clients) - len(failed),
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
            self._pending["federated"] = _scalars(metrics)
            if not self.central:
                self._commit()
        return metrics

    def _reply_arrays(self, reply: Message) -> ArrayRecord | None:
        records = reply.content.array_records
        key = getattr(self.strategy, "arrayrecord_key", None)
        if isinstance(key, str) and key in records:
            return records[key]
        return next(iter(records.values()), None)

    def _commit(self, central: MetricRecord | None = None) -> None:
        """The round's end: the recorder's Grams (and CKA), the metrics, the commit marker."""
        p, self._pending = self._pending, None
        life = self.life
        assert p is not None and life is not None and life.writer is not None  # _train
        assert self.layout is not None
        central_values = _scalars(central)
        assert self.series is not None
        self.series.append(
            p["node_ids"],
            {
                schema.APP_CENTRAL: central_values,
                schema.APP_FEDERATED: p["federated"],
                schema.APP_TRAIN: p["train"],
            },
            life.writer.start_swmr,
        )
        numel = self.layout.numel
        life.round_end(
            round_ended(
                round=p["round"],
                clients=self._round_clients,
                test=(_pick(central_values, LOSS_KEYS), _pick(central_values, ACCURACY_KEYS)),
                losses=p["losses"],
                accuracies=p["accs"],
                train=(p["train_loss"], p["train_accuracy"]),
                per_client_bytes=(4 * numel, 4 * numel),  # float32 arrays each way
                answered=p["answered"],
                started=self._started,
                global_params=p["new_x"],
                control_norms=MappingProxyType({}),
                failed=p["failed"],
                global_buffers=p["new_buffers"],
            )
        )
