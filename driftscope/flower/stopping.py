"""Ctrl-C and SIGTERM on Flower's simulation engine: the run file ends "interrupted", at once.

The signal raises :class:`KeyboardInterrupt` (or :class:`~driftscope.engine.signals.Terminated`)
in the main thread, where Flower's engine runs; the ServerApp, which writes the run file, runs in
a thread of Flower's, waiting for the clients' replies (up to the round's timeout, an hour by
default). :func:`driftscope.flower.simulation.simulate` hands it a :class:`StoppableGrid`: once
the main thread sets the :class:`Stop`, the grid's next call (within :data:`POLL_S`) raises the
same interrupt in the ServerApp thread, so the strategy ends the run as every engine does (status
"interrupted", every committed round kept) and the thread ends.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

#: how often a grid waiting for replies looks at the stop
POLL_S = 0.1
#: how long the main thread waits for the ServerApp thread to end the run file after a stop (a
#: round being committed finishes first)
STOP_WAIT_S = 60.0


class Stop:
    """Set once by the main thread with the interrupt it received; :meth:`check` raises it again
    in any thread that asks."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._error: KeyboardInterrupt | None = None

    def set(self, error: KeyboardInterrupt) -> None:
        self._error = error
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise the main thread's interrupt (a new one of the same kind) if it was set."""
        if self._event.is_set():
            raise _again(self._error)


def _again(error: KeyboardInterrupt | None) -> KeyboardInterrupt:
    from driftscope.engine.signals import Terminated

    if isinstance(error, Terminated):
        return Terminated(error.signum)
    return KeyboardInterrupt(*(error.args if error is not None else ()))


class StoppableGrid:
    """A Flower grid whose every call first checks ``stop``; :meth:`send_and_receive` waits for
    the replies in steps of :data:`POLL_S`, checking it between them. Everything else is the
    wrapped grid's."""

    def __init__(self, grid: Any, stop: Stop) -> None:
        self._grid = grid
        self._stop = stop

    def __getattr__(self, name: str) -> Any:
        self._stop.check()
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> list:
        """The replies to ``messages`` that arrive within ``timeout`` seconds (None: until all
        have), as Flower's grid returns them; a stop raises instead."""
        self._stop.check()
        waiting = set(self._grid.push_messages(messages))
        end = math.inf if timeout is None else time.monotonic() + timeout
        replies: list = []
        while waiting:
            got = list(self._grid.pull_messages(waiting))
            replies.extend(got)
            waiting.difference_update(m.metadata.reply_to_message_id for m in got)
            if not waiting or time.monotonic() >= end:
                break
            self._stop.check()
            time.sleep(POLL_S)
        return replies


@contextlib.contextmanager
def sigterm_kept() -> Iterator[None]:
    """Keep driftscope's SIGTERM handler while Flower's engine starts Ray: ``ray.init`` replaces
    it by one that calls ``sys.exit(15)``. Within the block, Ray's ``set_sigterm_handler``
    leaves driftscope's handler in place; should Ray's handler be installed anyway, its exit
    becomes :class:`~driftscope.engine.signals.Terminated` (when the handler before was
    driftscope's). The handler before is put back when the block ends."""
    from driftscope.engine import signals

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGTERM)
    with contextlib.ExitStack() as stack:
        if signals.is_ours(before):
            stack.enter_context(_ray_keeps_handler())
        try:
            yield
        except SystemExit as err:
            replaced = signal.getsignal(signal.SIGTERM) is not before
            signal.signal(signal.SIGTERM, before)
            if err.code == signal.SIGTERM and replaced and signals.is_ours(before):
                signals.handled_elsewhere()  # a second SIGTERM waits for the run file to close
                raise signals.Terminated() from None
            raise
        finally:
            signal.signal(signal.SIGTERM, before)


@contextlib.contextmanager
def _ray_keeps_handler() -> Iterator[None]:
    """Within the block, Ray's ``ray._private.utils.set_sigterm_handler`` (called by
    ``ray.init`` in the main thread) does nothing; untouched if this Ray has no such function."""
    import importlib

    try:
        utils = importlib.import_module("ray._private.utils")
    except ImportError:
        yield
        return
    original = getattr(utils, "set_sigterm_handler", None)
    if original is None:
        yield
        return
    setattr(utils, "set_sigterm_handler", lambda handler: None)  # noqa: B010 (a module of Ray's)
    try:
        yield
    finally:
        setattr(utils, "set_sigterm_handler", original)  # noqa: B010


class QuietAfterStop(logging.Filter):
    """Drops Flower's log records once the run is being stopped: its engine's threads report
    the clients that the stop cut short, each with a traceback."""

    def __init__(self, stop: Stop) -> None:
        super().__init__()
        self._stop = stop

    def filter(self, record: logging.LogRecord) -> bool:
        from driftscope.engine import signals

        return not (self._stop.is_set() or signals.stopping())


class RoutineActorExit(logging.Filter):
    """Drops Flower's WARNING "Manually terminating ClientAppActor": its engine logs it in each
    ClientApp actor that it ends, routinely, and Ray forwards it to the terminal of the run (a
    stop, which keeps the driver alive while the run file closes, gives Ray time to)."""

    MESSAGE = "Manually terminating %s"

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != self.MESSAGE


def quiet_actor_exit() -> None:
    """Install :class:`RoutineActorExit` on Flower's logger once; run in each process that
    imports driftscope's ClientApp (Ray's actor processes among them)."""
    logger = logging.getLogger("flwr")
    if not any(isinstance(f, RoutineActorExit) for f in logger.filters):
        logger.addFilter(RoutineActorExit())


def shutdown_ray() -> None:
    """Stop this process's Ray (a no-op when it is not running): Flower shuts it down only once
    its engine has started, and a stop may come before."""
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
