"""SIGTERM (what schedulers such as SLURM send before killing a job) stops a run like Ctrl-C.

Inside :func:`sigterm_as_interrupt`, SIGTERM raises :class:`Terminated`, a
:class:`KeyboardInterrupt`, so the code that closes a run file on Ctrl-C (status "interrupted",
every committed round kept) handles it too; the CLI prints one line and exits 143 (128 + 15), or
130 for Ctrl-C. Torch-free, so the CLI can use it before it imports anything heavy.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


# signals received inside the outermost sigterm_as_interrupt block, and how deeply it is nested
_received = 0
_depth = 0


def _handler(signum: int, frame: Any) -> None:
    """The first SIGTERM or SIGINT stops the run; a second one, arriving while the run file is
    being closed, is ignored (it would interrupt the closing); a third exits at once."""
    global _received
    _received += 1
    if _received == 1:
        raise Terminated(signum) if signum == signal.SIGTERM else KeyboardInterrupt
    if _received >= 3:
        os._exit(128 + signum)


def handled_elsewhere() -> None:
    """Count a signal that reached another handler (one a library installed in place of
    :func:`_handler`), so that the next one is treated as the second: it does not interrupt
    the closing of the run file."""
    global _received
    if _depth > 0:
        _received = max(_received, 1)


def stopping() -> bool:
    """Whether a signal has stopped the run inside :func:`sigterm_as_interrupt`."""
    return _received > 0


def is_ours(handler: Any) -> bool:
    """Whether ``handler`` is the one :func:`sigterm_as_interrupt` installs."""
    return handler is _handler


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread, and a signal
    arriving while the first one is handled does not interrupt the handling (see
    :func:`_handler`). Ctrl-C keeps raising :class:`KeyboardInterrupt` (unless SIGINT is
    ignored or handled by someone else, then it is left alone). Outside the main thread (where
    Python cannot install handlers) the block runs unchanged."""
    global _depth, _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _handler)
    previous_int = signal.getsignal(signal.SIGINT)
    own_int = previous_int in (signal.default_int_handler, _handler)
    if own_int:
        signal.signal(signal.SIGINT, _handler)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            _received = 0
        signal.signal(signal.SIGTERM, previous)
        if own_int:
            signal.signal(signal.SIGINT, previous_int)


def exit_unless_threads_end(code: int, grace_s: float = 2.0) -> None:
    """For a process stopped by a signal, after its run file is closed: the threads Python waits
    for at exit get ``grace_s`` seconds to end; if one is still running (Flower's engine threads
    wait forever on a Ray that was shut down under them), exit with ``code`` at once, stdout and
    stderr flushed, instead of hanging."""
    deadline = time.monotonic() + grace_s
    me = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not me and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    if any(t is not me and not t.daemon and t.is_alive() for t in threading.enumerate()):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
