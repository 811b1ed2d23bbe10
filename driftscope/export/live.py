"""Export after the run (:func:`export_run`) and during it (:class:`LiveLogger`, a hook)."""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from driftscope.engine.events import Hook, RoundEnded, RoundStarted, RunEnded, RunStarted
from driftscope.errors import DriftscopeError
from driftscope.export.live_rounds import CommittedRounds
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
        app = None if run.app is None else {"app": run.app, "strategy": run.app_strategy}
        config = shown_config(json.loads(run.config.to_json()), app)
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


def shown_config(config: dict, app: dict | None) -> dict:
    """The hyper-parameters a backend shows: the run's config, or for a recorded Flower app
    (``app``: ``{"app": ..., "strategy": ...}``) what the app declared and the recording schedule
    (its config's data, model and training fields are driftscope's defaults, not the app's)."""
    if app is None:
        return config
    return {"app": app["app"], "strategy": app["strategy"], "record": config["record"]}


class LiveLogger(Hook):
    """Writes each committed round of the run file ``run_path`` to a backend while it trains.

    ``spec``: ``"tensorboard=DIR"``, ``"mlflow=URI"`` or ``"wandb"`` / ``"wandb=DIR"`` (the CLI's
    ``--log``). A round is committed after every hook has seen its end, so round r is written at
    the start of round r + 1 (the last at the run's end), read back from the file: the values
    are those of ``analyze --csv``. The work runs on the training thread: the file stays open and
    only the newly committed round's rows are read (:class:`~driftscope.export.live_rounds.
    CommittedRounds`), a few milliseconds a round (a background thread would hold the GIL for
    the same work and slow training more; benchmarks/README.md). A backend that fails (disk
    full, service down) warns once (:class:`LoggerWarning`) and is dropped: it never stops the
    run nor touches its file.
    """

    def __init__(self, spec: str, run_path: str | os.PathLike) -> None:
        self.kind, self.target = parse_target(spec)
        self.path = Path(run_path)
        self.sink: Sink | None = open_sink(self.kind, self.target, self.path.stem)
        self.run: Run | None = None
        self.rounds: CommittedRounds | None = None
        self.done = -1  # the last round written
        self.ended = 0  # rounds that ended in this run (none: nothing of it is committed)

    def on_run_start(self, event: RunStarted) -> None:
        import json

        self._guard(
            lambda sink: sink.hyperparameters(
                hyperparameters(shown_config(json.loads(event.config.to_json()), event.app)),
                metric_labels(event.layout.layers),
            )
        )

    def on_round_start(self, event: RoundStarted) -> None:
        if self.ended:  # the round before it is committed (a file at the path before: not yet)
            self._guard(self._write_committed)

    def on_round_end(self, event: RoundEnded) -> None:
        self.ended += 1

    def on_run_end(self, event: RunEnded) -> None:
        if self.ended:
            self._guard(self._write_committed)
        self._close()

    # ------------------------------------------------------------------ internals
    def _write_committed(self, sink: Sink) -> None:
        if self.rounds is None:
            from driftscope.runfile.reader import open_run

            if not self.path.exists():  # no round committed yet
                return
            self.run = open_run(self.path)
            self.rounds = CommittedRounds(self.run)
        for rec in self.rounds.new():
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
        run, self.run, self.rounds = self.run, None, None
        for closing in (sink, run):
            if closing is None:
                continue
            try:
                closing.close()
            except Exception:  # closing a failed backend: the warning was given
                pass
