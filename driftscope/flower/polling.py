"""A Grid that waits for replies with a short poll.

Flower 1.42's deployment Grid (``flwr.serverapp.grid.grid.Grid.send_and_receive``, used by
``flwr.superlink.grid.http_grid``) pulls the replies and then sleeps 3 s before pulling again, so
every round of a deployment ends on a multiple of 3 s after its messages were sent.
:class:`PollingGrid` delegates everything to the ServerApp's grid and waits for replies with the
same push-then-pull loop, polling soon after the push and then less often, up to every
``poll_s`` seconds. driftscope's own ServerApp uses it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

DEFAULT_POLL_S = 0.25
#: a reply's object that the SuperLink is still receiving is asked for again after this many
#: seconds, doubling up to :data:`OBJECT_RETRY_CAP_S` (Flower's default: 1 s, doubling up to 10 s)
OBJECT_RETRY_S = 0.02
OBJECT_RETRY_CAP_S = 0.1
#: retries per object: about as long in all as Flower's 500 retries at up to 10 s
OBJECT_RETRIES = 50_000


#: the first wait of a :class:`Backoff`; each further wait is :data:`BACKOFF` times longer
FIRST_POLL_S = 0.02
BACKOFF = 1.5


class Backoff:
    """Waits between polls that start short after something happened and grow by
    :data:`BACKOFF` up to ``cap``: what was just asked for (a reply, the next round's task)
    usually comes soon, and a wait that ends ``t`` seconds after the start is at most about
    ``t / 3`` late (and ``cap``), for a few polls per second of waiting."""

    def __init__(self, cap: float, first: float = FIRST_POLL_S) -> None:
        self.cap = cap
        self.first = first
        self.next = cap

    def reset(self) -> None:
        self.next = min(self.first, self.cap)

    def wait(self) -> float:
        """The next wait, in seconds."""
        wait = self.next
        self.next = min(wait * BACKOFF, self.cap)
        return wait


def quick_object_retries(module: Any) -> None:
    """Make ``module`` (one of Flower's that pulls a message's objects with
    ``pull_objects``) retry an object that is not there yet soon.

    A message is seen before its objects (the arrays) have all arrived, and Flower's default
    backoff then waits a whole second: in the deployment grid
    (``flwr.superlink.grid.http_grid``, a ServerApp pulling a reply that its SuperNode is still
    pushing) and in the SuperNode (``flwr.supernode.start_client_internal``, pulling a message
    that the ServerApp is still pushing). Replaced, in ``module`` only, by the same function with
    :data:`OBJECT_RETRY_S`; idempotent.
    """
    import functools

    from flwr.supercore.inflatable.inflatable_utils import pull_objects

    if isinstance(module.pull_objects, functools.partial):
        return
    module.pull_objects = functools.partial(
        pull_objects,
        initial_backoff=OBJECT_RETRY_S,
        backoff_cap=OBJECT_RETRY_CAP_S,
        max_tries_per_object=OBJECT_RETRIES,
    )


class PollingGrid(Grid):
    """``grid`` with ``send_and_receive`` polling for replies soon after sending, then less
    often, up to every ``poll_s`` seconds (:class:`Backoff`)."""

    def __init__(self, grid: Grid, poll_s: float = DEFAULT_POLL_S) -> None:
        self._grid = grid
        self.poll_s = poll_s
        from flwr.superlink.grid import http_grid

        quick_object_retries(http_grid)

    def set_run(self, run: Any) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Any:
        return self._grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def get_nodes(self) -> Iterable[Any]:
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push ``messages``, then pull replies until all are in or ``timeout`` seconds pass."""
        pending = set(self.push_messages(messages))
        end = time.time() + (timeout if timeout is not None else 0.0)
        replies: list[Message] = []
        backoff = Backoff(self.poll_s)
        backoff.reset()
        while timeout is None or time.time() < end:
            got = list(self.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if not pending:
                break
            time.sleep(backoff.wait())
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def faster_deployment_grid(grid: Grid) -> Grid:
    """A deployment's grid (Flower's ``HttpGrid``, which sleeps 3 s between pulls for replies)
    as a :class:`PollingGrid`; any other grid (the simulation engine's polls every 0.1 s) as it
    is. Only the waiting changes: the same messages, the same replies."""
    from flwr.superlink.grid.http_grid import HttpGrid

    return PollingGrid(grid) if isinstance(grid, HttpGrid) else grid
