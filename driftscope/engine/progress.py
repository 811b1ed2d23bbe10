"""The progress display of a run, as a hook: a bar on a terminal, a compact line elsewhere."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from driftscope.engine.events import Hook, RoundEnded, RunEnded, RunStarted


class Progress(Hook):
    """A tqdm bar on a terminal; elsewhere (a log file, a pipe), where tqdm cannot redraw in place
    and would write a line per update, one compact line every ``rounds // 8`` rounds instead."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._name = ""
        self._rounds = 0
        self._every = 1
        self._tty = False
        self._t0 = 0.0

    def on_run_start(self, event: RunStarted) -> None:
        from tqdm import tqdm  # plain text bar: no ipywidgets needed in notebooks

        train = event.config.train
        self._name, self._rounds = train.algorithm, train.rounds
        self._every = max(1, self._rounds // 8)
        self._tty = sys.stderr.isatty()
        self._t0 = time.perf_counter()
        self._bar = tqdm(
            total=self._rounds,
            initial=event.start_round,
            disable=not self._tty,
            desc=self._name,
            unit="round",
            dynamic_ncols=True,
        )

    def on_round_end(self, event: RoundEnded) -> None:
        self._bar.update(1)
        if not math.isnan(event.test_accuracy):
            self._bar.set_postfix(acc=f"{event.test_accuracy:.3f}", loss=f"{event.test_loss:.3f}")
        done = event.round + 1
        if not self._tty and (done % self._every == 0 or done == self._rounds):
            print(
                progress_line(self._name, event, self._rounds, self._t0),
                file=sys.stderr,
                flush=True,
            )

    def on_run_end(self, event: RunEnded) -> None:
        if self._bar is not None:
            self._bar.close()


def progress_line(name: str, event: RoundEnded, rounds: int, t0: float) -> str:
    """``fedavg round 10/40  acc 0.912  loss 0.301  12 s``: the compact line printed instead of
    a progress bar when stderr is not a terminal."""
    line = f"{name} round {event.round + 1}/{rounds}"
    if not math.isnan(event.test_accuracy):
        line += f"  acc {event.test_accuracy:.3f}  loss {event.test_loss:.3f}"
    return line + f"  {time.perf_counter() - t0:.0f} s"
