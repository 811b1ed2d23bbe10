"""Export after the run (:func:`export_run`) and during it (:class:`LiveLogger`, a hook)."""

from __future__ import annotations

import os
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from driftscope.engine.events import Hook, RoundEnded, RunEnded, RunStarted
from driftscope.errors import DriftscopeError
from driftscope.export.rounds import hyperparameters, metric_labels, round_exports
from driftscope.export.sinks import Sink, figure_pngs, open_sink, parse_target

if TYPE_CHECKING:
    from driftscope.runfile.reader import Run

__all__ = ["LiveLogger", "LoggerWarning", "export_run"]


class LoggerWarning(UserWarning):
    """A live logger failed and stopped; the run goes on."""


def export_run(
    path: str | os.PathLike, kind: str, target: str | None, *, figures: bool = True
) -> int:
    """Write every committed round of the run file ``path`` to ``kind`` (tensorboard, mlflow,
    wandb) at ``target``, with label alignment, the config and (``figures``) the run's figures;
    returns the number of rounds written."""
    import json

    from driftscope.runfile.reader import open_run

    with open_run(path) as run:
        # a recorded Flower app may not report its labels; its own description, not the config
        recs = round_exports(run, label_alignment=run.recorded and run.has_label_histogram)
        sink = open_sink(kind, target, Path(path).stem)
        config = json.loads(run.config.to_json())
        if run.app is not None:
            config = {"app": run.app, "strategy": run.app_strategy, "record": config["record"]}
        try:
            sink.hyperparameters(hyperparameters(config), metric_labels(run.layers))
            for rec in recs:
                sink.round(rec)
            if figures:
                with tempfile.TemporaryDirectory(prefix="driftscope-figures-") as tmp:
                    for png in figure_pngs(run, Path(tmp)):
                        sink.figure(png.stem, png)
            sink.close()
        except OSError as err:  # a full disk, a target gone: one line, the run file untouched
            raise DriftscopeError(
                f"cannot write the {kind} export to {target or '.'}: {err.strerror or err}"
            ) from None
    return len(recs)


class LiveLogger(Hook):
    """Writes each committed round of the run file ``run_path`` to a backend while it trains.

    ``spec``: ``"tensorboard=DIR"``, ``"mlflow=URI"`` or ``"wandb"`` / ``"wandb=DIR"`` (the CLI's
    ``--log``). A round is committed after every hook has seen its end, so round r is written when
    round r + 1 ends (the last at the run's end), read back from the file: the values are those of
    ``analyze --csv``. The reading and writing run in a background thread, woken at each round's
    end, so training does not wait for them; the run's end waits for the last round to be
    written. A backend that fails (disk full, service down) warns once (:class:`LoggerWarning`)
    and is dropped: it never stops the run nor touches its file.
    """

    def __init__(self, spec: str, run_path: str | os.PathLike) -> None:
        self.kind, self.target = parse_target(spec)
        self.path = Path(run_path)
        self.sink: Sink | None = open_sink(self.kind, self.target, self.path.stem)
        self.run: Run | None = None
        self.done = -1  # the last round written
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    def on_run_start(self, event: RunStarted) -> None:
        import json

        self._guard(
            lambda sink: sink.hyperparameters(
                hyperparameters(json.loads(event.config.to_json())),
                metric_labels(event.layout.layers),
            )
        )
        if self.sink is not None and self._thread is None:
            self._thread = threading.Thread(
                target=self._work, name=f"driftscope-{self.kind}-logger", daemon=True
            )
            self._thread.start()

    def on_round_end(self, event: RoundEnded) -> None:
        self._wake.set()

    def on_run_end(self, event: RunEnded) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        else:  # never started: write what is committed here
            self._guard(self._write_committed)
        self._close()

    # ------------------------------------------------------------------ internals
    def _work(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            stop = self._stop
            self._guard(self._write_committed)
            if stop or self.sink is None:
                return

    def _write_committed(self, sink: Sink) -> None:
        from driftscope.runfile.reader import open_run

        if self.run is None:
            if not self.path.exists():
                return
            self.run = open_run(self.path)
        else:
            self.run.refresh()
        rounds = [int(r) for r in self.run.metrics["round"] if int(r) > self.done]
        if not rounds:
            return
        for rec in round_exports(self.run, rounds):
            sink.round(rec)
            self.done = rec.round

    def _guard(self, fn: Callable[[Sink], None]) -> None:
        if self.sink is None:
            return
        try:
            fn(self.sink)
        except Exception as err:  # any failure of the logger: warn once, keep training
            warnings.warn(
                f"the {self.kind} logger stopped ({type(err).__name__}: {err}); the run goes on "
                f"and its file keeps every round: export it later with driftscope export "
                f"{self.path} --to {self.kind}",
                LoggerWarning,
                stacklevel=2,
            )
            self._close()

    def _close(self) -> None:
        sink, self.sink = self.sink, None
        run, self.run = self.run, None
        for closing in (sink, run):
            if closing is None:
                continue
            try:
                closing.close()
            except Exception:  # closing a failed backend: the warning was given
                pass
