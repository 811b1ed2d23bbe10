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

The run file also holds the app as the caller described it, the strategy's settings, the app's
own metric series, the clients' sizes and label counts as they report them and the head rule
(:mod:`driftscope.flower.app_file`; docs/flower.md has the whole list).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.result import Result
from torch import nn

from driftscope.config import RecordConfig
from driftscope.engine.events import ClientTrained, Hook, RoundStarted
from driftscope.engine.lifecycle import Lifecycle, round_ended
from driftscope.flower.app_file import AppSeries, open_app_recording, write_partition
from driftscope.flower.replies import (
    ACCURACY_KEYS,
    LABEL_COUNTS_KEY,
    LOSS_KEYS,
    NUM_EXAMPLES_KEYS,
    PARTITION_ID_KEY,
    TRAIN_ACCURACY_KEYS,
    TRAIN_LOSS_KEYS,
    ClientIds,
    check_out,
    describe_app,
    flat_arrays,
    pick,
    reply_arrays,
    reply_metrics,
    round_rows,
    scalars,
    strategy_settings,
    weighted_mean,
)
from driftscope.models.buffers import arrays_buffers
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
        self.app, self.app_json = describe_app(
            describe, dataset=dataset, model=model, partition=partition
        )
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
        it ran, with its metrics. A deployment's grid waits for replies with driftscope's
        shorter polls (:func:`~driftscope.flower.polling.faster_deployment_grid`)."""
        from driftscope.flower.polling import faster_deployment_grid

        grid = faster_deployment_grid(grid)
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
        assert self._grid is not None  # set by configure_train
        rec = open_app_recording(
            self.out,
            overwrite=self.overwrite,
            strategy=self.strategy,
            arrays=arrays,
            replies=replies,
            nodes=list(self._grid.get_node_ids()),
            sent=self._sent,
            num_rounds=self.num_rounds,
            record=self.record,
            model_factory=self.model_factory,
            probe_inputs=self.probe_inputs,
            head=self.head,
            app={"app": json.loads(self.app_json), "strategy": self.settings},
            central=self.central,
            hooks=self.user_hooks,
        )
        self.life, self.ids, self.layout, self.head_rule = rec.life, rec.ids, rec.layout, rec.rule
        self.num_clients, self.clients_per_round = rec.num_clients, rec.clients_per_round
        self.series, self._buffer_like = rec.series, rec.buffer_like

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
        x = self._x = flat_arrays(self._arrays, self.layout)
        clients, rows = round_rows(
            self._sent, replies, self.ids, self.num_clients, self.clients_per_round, server_round
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
            # a failed client's CKA rows are NaN (RoundEnded.failed)
            record, why = reply_arrays(reply, getattr(self.strategy, "arrayrecord_key", None))
            y, buffers = None, {}
            if record is None:
                failed[client] = why
            else:
                y = flat_arrays(record, self.layout)
                buffers = arrays_buffers(record, self._buffer_like)
            if y is None:  # NaN Gram rows; probed as the global model, its CKA rows NaN
                y = x
                update.fill_(math.nan)
                num, loss, acc = 0, math.nan, math.nan
            else:
                assert reply is not None  # y came from it
                torch.sub(y, x, out=update)
                metrics = reply_metrics(reply)
                picked = pick(metrics, NUM_EXAMPLES_KEYS)
                num = 0 if math.isnan(picked) else int(picked)
                loss, acc = pick(metrics, TRAIN_LOSS_KEYS), pick(metrics, TRAIN_ACCURACY_KEYS)
                losses[client], accs[client], sizes[client] = loss, acc, num
                write_partition(life.writer.file, client, num, metrics.get(LABEL_COUNTS_KEY))
            life.client_end(
                ClientTrained(r, client, num, 0, loss, acc, update, y, self.layout, buffers)
            )
        agg_arrays, agg_metrics = result
        new_x = flat_arrays(agg_arrays, self.layout) if agg_arrays is not None else x.clone()
        train = {  # a weighted mean of partition ids or sizes means nothing
            k: v
            for k, v in scalars(agg_metrics).items()
            if k not in (PARTITION_ID_KEY, *NUM_EXAMPLES_KEYS)
        }
        train_loss = pick(agg_metrics, TRAIN_LOSS_KEYS)
        train_acc = pick(agg_metrics, TRAIN_ACCURACY_KEYS)
        self._pending = {
            "round": r,
            "new_x": new_x,
            "new_buffers": arrays_buffers(agg_arrays or self._arrays, self._buffer_like),
            "failed": failed,
            "losses": losses,
            "accs": accs,
            "train": train,
            "train_loss": train_loss if agg_metrics else weighted_mean(losses, sizes),
            "train_accuracy": train_acc if agg_metrics else weighted_mean(accs, sizes),
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
            self._pending["federated"] = scalars(metrics)
            if not self.central:
                self._commit()
        return metrics

    def _commit(self, central: MetricRecord | None = None) -> None:
        """The round's end: the recorder's Grams (and CKA), the metrics, the commit marker."""
        p, self._pending = self._pending, None
        life = self.life
        assert p is not None and life is not None and life.writer is not None  # _train
        assert self.layout is not None
        central_values = scalars(central)
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
                test=(pick(central_values, LOSS_KEYS), pick(central_values, ACCURACY_KEYS)),
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
