"""A test double for Flower's Grid: runs a ClientApp in this process, node by node.

Not an engine: it lets the strategy and the ClientApp exchange real Flower Messages (with
serialised arrays) in milliseconds, so the Message logic is tested without starting Ray. Arrays are
serialised (Flower's ``Array`` holds bytes), node ids are random 64-bit numbers, as in Flower, and replies come back in a shuffled order. ``fail``
turns chosen (round, client) replies into Flower error replies or drops them (a timeout).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity


class LocalGrid(Grid):
    def __init__(
        self,
        client_app,
        num_nodes: int,
        *,
        seed: int = 0,
        fail: Callable[[Message, int], str | None] | None = None,
        node_config: Callable[[int], dict] | None = None,
    ) -> None:
        rng = random.Random(seed)
        # Messages take the run and sender from the process's task identity (set by Flower's
        # runtimes); a test process has none.
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
        self.app = client_app
        self.rng = rng
        self.node_ids = [rng.getrandbits(63) for _ in range(num_nodes)]
        self.contexts = {
            node: Context(
                run_id=1,
                node_id=node,
                node_config=(
                    node_config(i)
                    if node_config
                    else {"partition-id": i, "num-partitions": num_nodes}
                ),
                state=RecordDict(),
                run_config={},
            )
            for i, node in enumerate(self.node_ids)
        }
        self.fail = fail
        self.sent: list[Message] = []

    def set_run(self, run) -> None:  # pragma: no cover - unused
        pass

    @property
    def run(self):  # pragma: no cover - unused
        return None

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(
            content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id
        )

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages):  # pragma: no cover - unused
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover - unused
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            context = self.contexts[node]
            verdict = self.fail(msg, context.node_config["partition-id"]) if self.fail else None
            if verdict == "drop":
                continue
            if verdict == "error":
                replies.append(Message(Error(code=0, reason="injected failure"), reply_to=msg))
                continue
            try:
                reply = self.app(msg, context)
            except Exception as err:  # as Flower does: the exception becomes an error reply
                reply = Message(Error(code=0, reason=f"{type(err)}:<'{err}'>"), reply_to=msg)
            replies.append(reply)
        self.rng.shuffle(replies)
        return replies
