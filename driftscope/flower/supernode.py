"""Flower's SuperNode with shorter polls, for a loopback deployment.

::

    python -m driftscope.flower.supernode --idle-poll 0.25 -- [flower-supernode arguments]

A flwr 1.42 SuperNode (``flwr.supernode.start_client_internal``) sleeps through its module's
``time.sleep`` in three places:

- ``time.sleep(3)`` when the SuperLink had no message for it (``start_client_internal``): after a
  node replies, the next round's message comes while it sleeps, so every round waits up to 3 s;
- ``time.sleep(0.5)`` steps while it waits for its ClientApp's reply (``_push_messages``) and for
  an object of that reply to be stored. Both look at this process's own state, not the network.

This runs Flower's own ``flower-supernode`` entry point with the others capped at
``--local-poll`` seconds (a look at memory) and the first (each poll a request to the SuperLink)
short after the node replied, growing up to ``--idle-poll`` seconds
(:class:`~driftscope.flower.polling.Backoff`). A message that the ServerApp is still pushing is
asked for again after 0.02 s instead of 1 s
(:func:`~driftscope.flower.polling.quick_object_retries`); nothing else changes. Which sleep is
which is told by the length Flower asks for (1 s or more: the idle poll). These only shorten
waits: a message or reply is picked up sooner, never skipped. flwr is pinned to 1.42 (a test
checks the module still sleeps this way).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

DEFAULT_IDLE_POLL_S = 0.25
DEFAULT_LOCAL_POLL_S = 0.02
#: a sleep Flower asks for of at least this many seconds is its idle poll of the SuperLink
IDLE_SLEEP_S = 1.0


class CappedSleep:
    """The ``time`` module with ``sleep`` capped: at ``local`` for Flower's short waits, and for
    its idle poll (a sleep of :data:`IDLE_SLEEP_S` or more) a
    :class:`~driftscope.flower.polling.Backoff` up to ``seconds``, restarted by a short wait
    (the node was waiting for its ClientApp's reply: the next round's message comes soon)."""

    def __init__(self, seconds: float, local: float = DEFAULT_LOCAL_POLL_S) -> None:
        from driftscope.flower.polling import Backoff

        self.seconds = seconds
        self.local = local
        self.idle = Backoff(seconds)

    def sleep(self, seconds: float) -> None:
        if seconds >= IDLE_SLEEP_S:
            time.sleep(min(seconds, self.idle.wait()))
        else:
            self.idle.reset()
            time.sleep(min(seconds, self.local))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def cap_idle_poll(seconds: float, local: float = DEFAULT_LOCAL_POLL_S) -> None:
    """Cap the sleeps of Flower's SuperNode loop in this process (see :class:`CappedSleep`)."""
    import flwr.supernode.start_client_internal as loop

    from driftscope.flower.polling import quick_object_retries

    loop.time = CappedSleep(seconds, local)  # type: ignore[assignment]
    quick_object_retries(loop)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0 (got {text})")
    return value


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m driftscope.flower.supernode",
        description="Flower's flower-supernode with shorter polls; its arguments follow '--'.",
    )
    p.add_argument(
        "--idle-poll",
        type=_seconds,
        default=DEFAULT_IDLE_POLL_S,
        help="longest wait between asking the SuperLink for messages [%(default)s]",
    )
    p.add_argument(
        "--local-poll",
        type=_seconds,
        default=DEFAULT_LOCAL_POLL_S,
        help="longest wait for the ClientApp's reply [%(default)s]",
    )
    p.add_argument("flower", nargs=argparse.REMAINDER, help="-- then flower-supernode's arguments")
    args = p.parse_args(argv)
    flower_args = args.flower[1:] if args.flower[:1] == ["--"] else args.flower
    from flwr.supernode.cli import flower_supernode

    cap_idle_poll(args.idle_poll, args.local_poll)
    sys.argv = ["flower-supernode", *flower_args]
    flower_supernode()


if __name__ == "__main__":
    main()
