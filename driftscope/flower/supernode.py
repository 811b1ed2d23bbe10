"""Flower's SuperNode with a shorter idle poll, for a loopback deployment.

::

    python -m driftscope.flower.supernode --idle-poll 0.5 -- [flower-supernode arguments]

An idle flwr 1.42 SuperNode asks the SuperLink for a message, and when there is none sleeps 3 s
before asking again (``flwr.supernode.start_client_internal.start_client_internal``:
``time.sleep(3)``); it waits for its ClientApp's reply in 0.5 s steps (``_push_messages``). After
a node replies, the next round's message comes while it sleeps, so every round waits up to 3 s.
This runs Flower's own ``flower-supernode`` entry point with the sleeps of that module capped at
``--idle-poll`` seconds; nothing else changes. The cap only shortens waits: a message or reply is
picked up sooner, never skipped. flwr is pinned to 1.42 (a test checks the module still sleeps
through ``time.sleep`` there).
"""

from __future__ import annotations

import sys
import time
from typing import Any

DEFAULT_IDLE_POLL_S = 0.5


class CappedSleep:
    """The ``time`` module with ``sleep`` capped at ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.seconds))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def cap_idle_poll(seconds: float) -> None:
    """Cap the sleeps of Flower's SuperNode loop in this process at ``seconds``."""
    import flwr.supernode.start_client_internal as loop

    loop.time = CappedSleep(seconds)  # type: ignore[assignment]


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    seconds = DEFAULT_IDLE_POLL_S
    if args[:1] == ["--idle-poll"]:
        seconds = float(args[1])
        args = args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not seconds > 0:
        raise SystemExit(f"--idle-poll must be > 0 seconds (got {seconds})")
    from flwr.supernode.cli import flower_supernode

    cap_idle_poll(seconds)
    sys.argv = ["flower-supernode", *args]
    flower_supernode()


if __name__ == "__main__":
    main()
