"""Clients and SuperNodes on the Flower engine: client i is the SuperNode whose node config says
``partition-id=i``.

:func:`map_nodes` asks every node for its partition id once, at the first round;
:func:`sort_replies` files a round's replies under the sampled clients they answer for, setting
aside errors, impostors and silence as failures (a client that diverged stops the run).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from logging import WARNING

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from driftscope.errors import DivergenceError
from driftscope.flower import FlowerRunError, wire


def map_nodes(
    grid: Grid, num_clients: int, node_wait_s: float, timeout: float
) -> tuple[dict[int, int], dict[int, int]]:
    """``(node_of, client_of)``: client -> node id and node id -> client, from each node's
    partition id. Waits up to ``node_wait_s`` for ``num_clients`` nodes; a missing or repeated
    partition id is a one-line :class:`FlowerRunError`."""
    node_of: dict[int, int] = {}
    client_of: dict[int, int] = {}
    deadline = time.monotonic() + node_wait_s
    while len(nodes := list(grid.get_node_ids())) < num_clients:
        if time.monotonic() > deadline:
            raise FlowerRunError(
                f"only {len(nodes)} of {num_clients} SuperNodes connected after "
                f"{node_wait_s:.0f} s: start one SuperNode per client "
                "(--node-config 'partition-id=I num-partitions=N')"
            )
        time.sleep(0.5)
    asks = [
        Message(
            RecordDict({wire.CONFIG: ConfigRecord({})}),
            dst_node_id=n,
            message_type=MessageType.QUERY,
        )
        for n in nodes
    ]
    for reply in grid.send_and_receive(asks, timeout=min(timeout, node_wait_s)):
        if reply.has_error():
            log(
                WARNING,
                "node %d did not say its partition id: %s",
                reply.metadata.src_node_id,
                reply.error.reason,
            )
            continue
        pid = int(reply.content[wire.METRICS][wire.PARTITION_ID])
        node = reply.metadata.src_node_id
        if pid in node_of and node_of[pid] != node:
            raise FlowerRunError(
                f"two SuperNodes say partition-id={pid}: give each node a distinct partition-id"
            )
        node_of[pid] = node
        client_of[node] = pid
    missing = [c for c in range(num_clients) if c not in node_of]
    if missing:
        raise FlowerRunError(
            f"no SuperNode holds partition-id {missing[0]} (of 0..{num_clients - 1}): "
            f"start one SuperNode per client with --node-config 'partition-id=I num-partitions={num_clients}'"
        )
    return node_of, client_of


def sort_replies(
    replies: Iterable[Message], clients: Sequence[int], client_of: dict[int, int], round: int
) -> tuple[dict[int, Message], dict[int, str]]:
    """``(answers, failed)`` of round ``round``: the reply of each sampled client that answered,
    and why each other sampled client failed (its error, a reply naming another partition, or no
    reply within the round's timeout), each logged. Replies from nodes of clients not sampled are
    ignored; a client that diverged raises :class:`DivergenceError`."""
    answers: dict[int, Message] = {}
    failed: dict[int, str] = {}
    for reply in replies:
        client = client_of.get(reply.metadata.src_node_id)
        if client is None or client not in clients:
            continue
        if reply.has_error():
            reason = str(reply.error.reason)  # flwr: str | None
            if "DivergenceError" in reason:
                raise DivergenceError(
                    f"training diverged at round {round}, client {client}: lower --lr or --local-epochs"
                )
            failed[client] = reason
            continue
        echoed = int(reply.content[wire.METRICS][wire.PARTITION_ID])
        if echoed != client:
            failed[client] = f"reply from node of client {client} says partition-id {echoed}"
            continue
        answers[client] = reply
    for client in clients:
        if client not in answers and client not in failed:
            failed[client] = "no reply within the round's timeout"
    for client, reason in failed.items():
        log(WARNING, "round %d: client %d failed and is left out: %s", round, client, reason)
    return answers, failed
