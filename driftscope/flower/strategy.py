"""driftscope's Flower strategy: the in-process simulator's round, with Flower moving the messages.

:class:`DriftscopeStrategy` is a Message-API :class:`flwr.serverapp.strategy.Strategy`. Per round
it samples clients with driftscope's seed stream (the same clients as in-process for the same seed
and round), sends each sampled client one message (global model, server control variate, round),
and aggregates the replies through the algorithm's own server step, in client order, so the global
model equals the in-process one. It is assembled by the same
:class:`~driftscope.engine.setup.RunSetup` and runs the same
:class:`~driftscope.engine.lifecycle.Lifecycle` as the in-process engine, so the unchanged recorder
writes the same run file, committed round by round; the file says ``engine = "flower"``.
Resuming a Flower run (``--resume``) is not supported: no resume state is written.

Faults: a client whose reply is an error (its ClientApp raised) or that did not answer within the
timeout is left out of the round's average (the others' weights are renormalised) and marked in
``/clients/failed``; its Gram rows are NaN. A client that diverged stops the run as in-process.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from logging import INFO
from types import MappingProxyType
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.result import Result
from flwr.supercore import log

from driftscope.algorithms.aggregate import client_weights
from driftscope.config import RunConfig
from driftscope.data import Dataset
from driftscope.engine.events import ClientTrained, Hook, RoundStarted, RunStarted
from driftscope.engine.lifecycle import Lifecycle, open_recording, round_ended
from driftscope.engine.setup import RunSetup
from driftscope.errors import ConfigError, DivergenceError
from driftscope.flower import ENGINE, FlowerRunError, wire
from driftscope.flower.nodes import map_nodes, sort_replies
from driftscope.models.buffers import BufferAverage, buffer_bytes, clone_buffers
from driftscope.runfile.writer import RunWriter

NODE_WAIT_S = 120.0  # how long to wait for every SuperNode to connect
#: algorithms whose client-side state the wire protocol cannot carry: fedpvr_auto's choice of
#: layers is made on the server and changes during the run
NOT_ON_FLOWER = ("fedpvr_auto",)


class DriftscopeStrategy(Strategy):
    """A driftscope run on Flower: seeded sampling, per-client messages, the algorithm's server step.

    ``out``: the run file to write (None: no file, ``hooks`` only). ``dataset`` reuses a loaded
    dataset on the server (the server evaluates the global model and draws the probe set).
    ``timeout``: seconds to wait for a round's replies. Call :meth:`start` with a grid; the
    initial arrays and the number of rounds come from the config.
    """

    def __init__(
        self,
        cfg: RunConfig,
        out: str | os.PathLike[str] | None = None,
        *,
        dataset: Dataset | None = None,
        overwrite: bool = False,
        hooks: Sequence[Hook] = (),
        node_wait_s: float = NODE_WAIT_S,
    ) -> None:
        from driftscope.algorithms import warn_settings

        if cfg.train.algorithm in NOT_ON_FLOWER:
            raise ConfigError(
                f"{cfg.train.algorithm} is not available on the Flower engine (its clients would "
                "not learn which layers carry control variates): use --engine inprocess"
            )
        if cfg.model.buffers == "local":
            raise ConfigError(
                "model.buffers 'local' is not available on the Flower engine (the nodes would "
                "have to keep their buffers between rounds): use --engine inprocess"
            )
        warn_settings(cfg.train, stacklevel=2)  # as driftscope.train does
        self.cfg = cfg
        # The server's copy of the run: layout, algorithm state, test set, the initial model.
        self.setup = RunSetup(cfg, dataset)
        self.layout = self.setup.layout
        self.algorithm: Any = self.setup.algorithm  # SCAFFOLD's c, c_clients, selection: duck-typed
        self.num_clients = cfg.train.clients
        self.x = self.setup.initial_params.clone()
        self.global_buffers = clone_buffers(self.setup.initial_buffers)  # averaged every round
        self.node_wait_s = node_wait_s
        if out is None:
            self.life = Lifecycle(hooks)
        else:
            self.life, _, _ = open_recording(
                self.setup, out, engine=ENGINE, hooks=hooks, overwrite=overwrite, failures=True
            )
        self._node_of: dict[int, int] = {}  # client -> node id
        self._client_of: dict[int, int] = {}  # node id -> client
        self._clients: list[int] = []
        self._round_start = 0.0
        self.failed_rounds: dict[int, dict[int, str]] = {}

    @property
    def writer(self) -> RunWriter | None:
        return self.life.writer

    @property
    def status(self) -> str:
        """How :meth:`start` ended: "complete", "diverged", "interrupted", "failed" ("": not yet)."""
        return self.life.ended.status if self.life.ended is not None else ""

    @property
    def message(self) -> str:
        return self.life.ended.message if self.life.ended is not None else ""

    def initial_arrays(self) -> ArrayRecord:
        """The seeded initial global model, as Flower arrays."""
        return wire.flat_to_arrays(self.x, self.layout)

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord | None = None,
        num_rounds: int | None = None,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Run ``cfg.train.rounds`` rounds on ``grid``; the run file is closed with the outcome."""
        rounds = self.cfg.train.rounds if num_rounds is None else num_rounds
        if initial_arrays is not None:
            self.x = wire.arrays_to_flat(initial_arrays, self.layout)
        started = RunStarted(
            config=self.cfg,
            layout=self.layout,
            num_clients=self.num_clients,
            clients_per_round=self.cfg.train.clients_per_round,
            label_histogram=self.setup.label_histogram,
            engine=ENGINE,
        )
        with self.life.running(started):
            return super().start(
                grid,
                self.initial_arrays(),
                num_rounds=rounds,
                timeout=timeout,
                train_config=train_config,
                evaluate_config=evaluate_config,
                evaluate_fn=evaluate_fn,
            )
        raise AssertionError("unreachable")  # mypy: running() re-raises every error

    def summary(self) -> None:
        t = self.cfg.train
        log(
            INFO,
            "\t├──> driftscope %s: %d clients, %d per round",
            t.algorithm,
            t.clients,
            t.clients_per_round,
        )
        log(
            INFO,
            "\t└──> seed %d, recording %s",
            self.cfg.seed,
            "on" if self.cfg.record.enabled else "off",
        )

    # ------------------------------------------------------------------ training round
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._round_start = time.perf_counter()
        if not self._node_of:  # client i is the node with partition-id i: asked once
            self._node_of, self._client_of = map_nodes(
                grid, self.num_clients, self.node_wait_s, timeout=3600
            )
        r = server_round - 1  # driftscope counts rounds from 0, Flower from 1
        clients = self.setup.sample_clients(r)
        self._clients = clients
        self.life.round_start(RoundStarted(r, tuple(clients)))
        global_arrays = wire.model_record(self.x)
        control = None
        if hasattr(self.algorithm, "c") and self.algorithm.selection.size > 0:
            control = wire.vector_record(wire.SERVER_CONTROL, self.algorithm.c)
        run_config = self.cfg.to_json()
        messages = []
        for client in clients:
            content = RecordDict(
                {
                    wire.ARRAYS: global_arrays,
                    wire.CONFIG: ConfigRecord(
                        {wire.RUN_CONFIG: run_config, wire.ROUND: r, wire.CLIENT: client}
                    ),
                }
            )
            if control is not None:
                content[wire.CONTROL] = control
            if self.setup.buffer_names:
                content[wire.BUFFERS] = wire.buffers_record(self.global_buffers)
            messages.append(
                Message(content, dst_node_id=self._node_of[client], message_type=MessageType.TRAIN)
            )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        r = server_round - 1
        clients = self._clients
        answers, failed = sort_replies(replies, clients, self._client_of, r)
        self.failed_rounds[r] = failed

        answered = [c for c in clients if c in answers]
        if clients and not answered:  # nothing to aggregate: the round failed, and so the run
            client, reason = min(failed.items()) if failed else (clients[0], "no reply")
            raise FlowerRunError(
                f"every client failed in round {r} (client {client}: {_last_line(reason)}); if "
                "the model, dataset or algorithm is your own, every node must import its plugin "
                "(driftscope --plugin MODULE, or DRIFTSCOPE_PLUGINS)"
            )
        x = self.x
        sizes = torch.tensor([self.setup.client_size(c) for c in answered])
        weights = client_weights(sizes, self.cfg.train.weighting).tolist() if answered else []
        mean_update = torch.zeros_like(x)
        update = torch.empty_like(x)
        extras: list[torch.Tensor | None] = []
        losses: dict[int, float] = {}
        accs: dict[int, float] = {}
        weight_of = dict(zip(answered, weights, strict=True))
        buffer_mean = BufferAverage(self.global_buffers)
        for client in clients:  # in the simulator's order, so the sums round the same way
            if client in answers:
                content = answers[client].content
                y = wire.record_model(content[wire.ARRAYS], self.layout)
                torch.sub(y, x, out=update)
                mean_update.add_(update, alpha=weight_of[client])
                delta = None
                if wire.CONTROL in content:
                    delta = wire.record_vector(content[wire.CONTROL], wire.CONTROL_DELTA)
                    c_i = self.algorithm.client_row(client) + delta  # mirror c_i for its norm
                    self.algorithm.set_client_row(client, c_i)
                    self.algorithm.refresh_norms(client)
                extras.append(delta)
                buffers: dict[str, torch.Tensor] = {}
                if self.setup.buffer_names:
                    buffers = wire.record_buffers(content[wire.BUFFERS], self.global_buffers)
                    buffer_mean.add(buffers, weight_of[client])
                m = content[wire.METRICS]
                trained = ClientTrained(
                    round=r,
                    client=client,
                    num_samples=int(m[wire.NUM_EXAMPLES]),
                    steps=int(m[wire.STEPS]),
                    train_loss=float(m[wire.TRAIN_LOSS]),
                    train_accuracy=float(m[wire.TRAIN_ACCURACY]),
                    update=update,
                    params=y,
                    layout=self.layout,
                    buffers=MappingProxyType(buffers),
                )
                losses[client], accs[client] = trained.train_loss, trained.train_accuracy
            else:  # keep the recorder's rows aligned with the sampled clients: NaN, not stale
                update.fill_(math.nan)  # the recorder probes x in its place, then blanks it
                trained = ClientTrained(
                    r,
                    client,
                    self.setup.client_size(client),
                    0,
                    math.nan,
                    math.nan,
                    update,
                    x,
                    self.layout,
                    MappingProxyType(self.global_buffers),
                )
            self.life.client_end(trained)

        if answered:
            new_x = self.algorithm.server_update(x, mean_update, extras)
        else:
            new_x = x.clone()
        if not bool(torch.isfinite(new_x).all()):
            raise DivergenceError(f"the global model became non-finite at round {r}: lower --lr")
        self.x = new_x
        if answered and self.setup.buffer_names:  # the global buffers, for evaluation and probing
            self.global_buffers = buffer_mean.result()
        down, up = self.algorithm.bytes_per_client()
        carried = buffer_bytes(self.global_buffers)  # buffers travel both ways
        nan = (math.nan, math.nan)
        event = round_ended(
            round=r,
            clients=clients,
            test=self.setup.evaluate(new_x, self.global_buffers)
            if self.setup.evaluates(r)
            else nan,
            losses=losses,
            accuracies=accs,
            per_client_bytes=(down + carried, up + carried),
            answered=len(answered),
            started=self._round_start,
            global_params=new_x,
            control_norms=MappingProxyType(self.algorithm.state_norms()),
            failed=failed,
            global_buffers=self.global_buffers,
        )
        self.life.round_end(event)  # every hook, then the commit (/metrics/round last)
        metrics = MetricRecord(
            {
                "train-loss": event.train_loss,
                "test-loss": event.test_loss,
                "test-accuracy": event.test_accuracy,
                "clients-failed": len(failed),
            }
        )
        return wire.flat_to_arrays(new_x, self.layout), metrics

    # ------------------------------------------------------------------ evaluation: on the server
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []  # the server evaluates the global model on the test set, as in-process

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return None


def _last_line(reason: str) -> str:
    """A client's error in one line: the last non-empty line of what Flower reports (a
    traceback ends with the exception)."""
    lines = [line.strip() for line in str(reason).splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"
