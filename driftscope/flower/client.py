"""driftscope's Flower ``ClientApp``: one client's local training, the same code as in-process.

A node is client ``i`` when its node config says ``partition-id = i``. It rebuilds the run from
the config the server sends (dataset, the seeded partition, the model), so client ``i`` holds the
same data as client ``i`` of the in-process simulator, and trains with the one local-training
function every engine uses. Its control variate (SCAFFOLD, FedPVR) lives in ``Context.state`` for
the whole run and never leaves the node; only its change is sent.

``app`` is the ClientApp (``driftscope.flower.client:app`` in the app's pyproject).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from driftscope.config import RunConfig
from driftscope.errors import DriftscopeError
from driftscope.flower import wire
from driftscope.flower.stopping import quiet_actor_exit

quiet_actor_exit()  # a Ray actor process imports this module to run the ClientApp


@dataclass
class LocalResult:
    """What one client's local training returns to the server."""

    params: torch.Tensor  # y (P,)
    buffers: dict[str, torch.Tensor]  # the model's buffers after training (empty: none)
    delta: torch.Tensor | None  # c_i+ - c_i, or None
    control: torch.Tensor | None  # c_i+ (kept on the node)
    num_samples: int
    steps: int
    train_loss: float
    train_accuracy: float


class ClientRuntime:
    """What a process needs to train any client of one run: the data, the model, the algorithm
    (the run's :class:`~driftscope.engine.setup.RunSetup`, as in-process, so the partition and the
    model match it exactly).

    Built once per process and config (loading and partitioning the data is the slow part) and
    reused for every message of the run.
    """

    def __init__(self, cfg: RunConfig) -> None:
        from driftscope.engine.setup import RunSetup

        self.cfg = cfg
        # which run a control variate in Context.state belongs to (a node may serve several)
        self.fingerprint = hashlib.sha256(cfg.to_json().encode()).hexdigest()[:16]
        self.setup = RunSetup(cfg)
        self.layout = self.setup.layout
        self.algorithm: Any = self.setup.algorithm  # SCAFFOLD's c, c_clients, selection: duck-typed

    @property
    def has_control(self) -> bool:
        return hasattr(self.algorithm, "c") and self.algorithm.selection.size > 0

    def control_size(self) -> int:
        return self.algorithm.selection.size if self.has_control else 0

    def train(
        self,
        round: int,
        client: int,
        x: torch.Tensor,
        c: torch.Tensor | None,
        c_i: torch.Tensor | None,
        buffers: dict[str, torch.Tensor] | None = None,
    ) -> LocalResult:
        """Train ``client`` from global ``x`` and ``buffers`` with server control ``c`` and its
        own ``c_i``."""
        from driftscope.engine.local import local_train
        from driftscope.models.buffers import clone_buffers, load_buffers, read_buffers

        algo, setup = self.algorithm, self.setup
        x = x.to(setup.device)  # the wire's tensors are on the CPU; training is on setup.device
        if self.has_control:
            assert c is not None  # the server sends c when has_control
            algo.c = c.to(algo.c.device).clone()
            algo.set_client_row(client, c_i)
        if buffers:
            load_buffers(setup.model, buffers)
        result = local_train(
            setup.flat,
            setup.client_x[client],
            setup.client_y[client],
            algo,
            x,
            self.cfg.train,
            seed=self.cfg.seed,
            round=round,
            client=client,
            augmentation=setup.augmentation,
        )
        return LocalResult(
            params=result.params.cpu().clone(),
            buffers={
                k: v.cpu()
                for k, v in clone_buffers(read_buffers(setup.model, setup.buffer_names)).items()
            },
            delta=None if result.extra is None else result.extra.cpu().clone(),
            control=algo.client_row(client).cpu().clone() if self.has_control else None,
            num_samples=result.num_samples,
            steps=result.steps,
            train_loss=result.train_loss,
            train_accuracy=result.train_accuracy,
        )


_RUNTIME: dict[str, ClientRuntime] = {}


def runtime_for(config_json: str) -> ClientRuntime:
    """The process's runtime for this run config (one kept: a node serves one run at a time)."""
    runtime = _RUNTIME.get(config_json)
    if runtime is None:
        from driftscope.plugins import load_plugins

        load_plugins()  # $DRIFTSCOPE_PLUGINS and entry points: the server's own registrations
        cfg = RunConfig.from_dict(json.loads(config_json), source="the server's run config")
        _RUNTIME.clear()
        runtime = _RUNTIME[config_json] = ClientRuntime(cfg)
    return runtime


def partition_id(context: Context) -> int:
    """The stable client id the operator gave this node (``--node-config partition-id=i``)."""
    if wire.PARTITION_ID not in context.node_config:
        raise DriftscopeError(
            "this SuperNode has no partition-id: start it with "
            "--node-config 'partition-id=I num-partitions=N'"
        )
    return int(context.node_config[wire.PARTITION_ID])


app = ClientApp()


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Answer the server's first question: which client is this node?"""
    metrics = MetricRecord({wire.PARTITION_ID: partition_id(context)})
    return Message(RecordDict({wire.METRICS: metrics}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of local training for this node's client."""
    config = msg.content[wire.CONFIG]
    assert isinstance(config, ConfigRecord)
    client = partition_id(context)
    if int(config[wire.CLIENT]) != client:
        raise DriftscopeError(
            f"the server addressed client {int(config[wire.CLIENT])} but this node is partition "
            f"{client}: give every SuperNode a distinct partition-id"
        )
    rt = runtime_for(str(config[wire.RUN_CONFIG]))
    round = int(config[wire.ROUND])
    x = wire.record_model(msg.content[wire.ARRAYS], rt.layout)
    c = c_i = None
    if rt.has_control:
        c = wire.record_vector(msg.content[wire.CONTROL], wire.SERVER_CONTROL)
        saved = context.state.get(wire.STATE_CONTROL)
        run = context.state.get(wire.STATE_RUN)
        same_run = isinstance(run, ConfigRecord) and run.get(wire.STATE_RUN) == rt.fingerprint
        c_i = (
            wire.record_vector(saved, wire.STATE_CI)
            if same_run and isinstance(saved, ArrayRecord)
            else torch.zeros(rt.control_size())  # control variates start at zero
        )
    buffers = (
        wire.record_buffers(msg.content[wire.BUFFERS], rt.setup.initial_buffers)
        if rt.setup.buffer_names
        else None
    )
    result = rt.train(round, client, x, c, c_i, buffers)
    content = RecordDict(
        {
            wire.ARRAYS: wire.model_record(result.params),
            wire.METRICS: MetricRecord(
                {
                    wire.PARTITION_ID: client,
                    wire.ROUND: round,
                    wire.NUM_EXAMPLES: result.num_samples,
                    wire.STEPS: result.steps,
                    wire.TRAIN_LOSS: result.train_loss,
                    wire.TRAIN_ACCURACY: result.train_accuracy,
                }
            ),
        }
    )
    if result.buffers:
        content[wire.BUFFERS] = wire.buffers_record(result.buffers)
    if result.delta is not None:
        content[wire.CONTROL] = wire.vector_record(wire.CONTROL_DELTA, result.delta)
    if result.control is not None:
        context.state[wire.STATE_CONTROL] = wire.vector_record(wire.STATE_CI, result.control)
        context.state[wire.STATE_RUN] = ConfigRecord({wire.STATE_RUN: rt.fingerprint})
    return Message(content, reply_to=msg)
