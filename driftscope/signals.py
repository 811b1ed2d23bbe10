"""SIGTERM (what schedulers such as SLURM send before killing a job) stops a run like Ctrl-C.

Inside :func:`sigterm_as_interrupt`, SIGTERM raises :class:`Terminated`, a
:class:`KeyboardInterrupt`, so the code that closes a run file on Ctrl-C (status "interrupted",
every committed round kept) handles it too; the CLI prints one line and exits 143 (128 + 15), or
130 for Ctrl-C. Torch-free, so the CLI can use it before it imports anything heavy.
"""

from __future__ import annotations

import signal
import threading
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


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread. Outside the main
    thread (where Python cannot install handlers) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
