"""One run lifecycle for every engine: hooks, how a run ended, the run file, what a round sent.

Every engine (the in-process :class:`~driftscope.engine.inprocess.Simulator`, :func:`driftscope.train`,
the Flower strategy and the Flower recording wrapper) runs a :class:`Lifecycle`::

    life = Lifecycle(hooks, writer=writer, state=...)    # writer None: hooks only
    with life.running(RunStarted(...)):                   # on_run_start
        for each round: life.round_start(RoundStarted(...))
                        life.client_end(ClientTrained(...))   # once per sampled client
                        life.round_end(round_ended(...))      # every hook, then the commit
    # on_run_end with the status of how the block ended (run_ended), then the file is closed

:func:`open_recording` builds the lifecycle of a :class:`~driftscope.engine.setup.RunSetup` that
writes a run file: the writer, the recorder, the resume state and the commit. The numbers every
engine reports of a round are computed here once: the traffic (:func:`traffic`) and the mean of
the clients' reported training metrics (:func:`reported_mean`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from driftscope.engine.events import (
    ClientTrained,
    Hook,
    RoundEnded,
    RoundStarted,
    RunEnded,
    RunStarted,
)
from driftscope.errors import DivergenceError

if TYPE_CHECKING:
    import os

    import torch
    from torch import nn

    from driftscope.config import RunConfig
    from driftscope.engine.recorder import Recorder
    from driftscope.engine.setup import RunSetup
    from driftscope.models.layout import ModelLayout
    from driftscope.runfile.writer import RunWriter

#: the name of the in-process engine, in events, the run file (root attr ``engine``) and the CLI
INPROCESS = "inprocess"


class Hooks(Hook):
    """Several hooks as one: each event goes to every hook, in order (the one dispatch loop)."""

    def __init__(self, hooks: Iterable[Hook] = ()) -> None:
        self.hooks: list[Hook] = list(hooks)

    def append(self, hook: Hook) -> None:
        self.hooks.append(hook)

    def _each(self, method: str, event: object) -> None:
        for hook in self.hooks:
            getattr(hook, method)(event)

    def on_run_start(self, event: RunStarted) -> None:
        self._each("on_run_start", event)

    def on_round_start(self, event: RoundStarted) -> None:
        self._each("on_round_start", event)

    def on_client_end(self, event: ClientTrained) -> None:
        self._each("on_client_end", event)

    def on_round_end(self, event: RoundEnded) -> None:
        self._each("on_round_end", event)

    def on_run_end(self, event: RunEnded) -> None:
        self._each("on_run_end", event)


def run_ended(error: BaseException | None) -> RunEnded:
    """How a run ended, as its status: complete (no error), diverged, interrupted (Ctrl-C, or
    SIGTERM as :class:`~driftscope.engine.signals.Terminated`) or failed (anything else, named)."""
    if error is None:
        return RunEnded("complete")
    if isinstance(error, DivergenceError):
        return RunEnded("diverged", str(error))
    if isinstance(error, KeyboardInterrupt):
        return RunEnded("interrupted", str(error) or "stopped by the user")
    return RunEnded("failed", f"{type(error).__name__}: {error}")


def traffic(per_client: tuple[int, int], sent: int, answered: int) -> tuple[int, int]:
    """(downlink, uplink) bytes of a round: ``per_client`` = (down, up) bytes of one client; the
    server sent to ``sent`` clients and ``answered`` of them replied."""
    down, up = per_client
    return down * sent, up * answered


def reported_mean(values: Iterable[float]) -> float:
    """The mean of the clients' reported values; NaN marks a value a client did not report (a
    failed client, a Flower app's metric that is absent) and is left out; NaN if none was."""
    reported = [v for v in values if not math.isnan(v)]
    return float(np.mean(reported)) if reported else math.nan


def round_ended(
    *,
    round: int,
    clients: Sequence[int],
    test: tuple[float, float],
    losses: Mapping[int, float],
    accuracies: Mapping[int, float],
    train: tuple[float, float] | None = None,
    per_client_bytes: tuple[int, int],
    answered: int,
    started: float,
    global_params: torch.Tensor,
    control_norms: Mapping[str, torch.Tensor],
    failed: Mapping[int, str] | None = None,
    global_buffers: Mapping[str, torch.Tensor] | None = None,
) -> RoundEnded:
    """The :class:`RoundEnded` of a round, its numbers computed as every engine computes them.

    ``test`` = (loss, accuracy) (NaN when not evaluated), ``losses``/``accuracies`` per client
    that answered (their :func:`reported_mean` is the round's training loss and accuracy, unless
    ``train`` gives the (loss, accuracy) the app aggregated itself), ``started`` the round's ``time.perf_counter()``, ``failed`` client -> reason,
    ``global_buffers`` the new global module buffers by name."""
    down, up = traffic(per_client_bytes, len(clients), answered)
    return RoundEnded(
        round=round,
        clients=tuple(clients),
        test_loss=test[0],
        test_accuracy=test[1],
        train_loss=reported_mean(losses.values()) if train is None else train[0],
        train_accuracy=reported_mean(accuracies.values()) if train is None else train[1],
        downlink_bytes=down,
        uplink_bytes=up,
        seconds=time.perf_counter() - started,
        client_train_loss=MappingProxyType(dict(losses)),
        client_train_accuracy=MappingProxyType(dict(accuracies)),
        global_params=global_params,
        control_norms=control_norms,
        failed=MappingProxyType(dict(failed or {})),
        global_buffers=MappingProxyType(dict(global_buffers or {})),
    )


#: per committed round: (resume state, algorithm record) for :meth:`RunWriter.commit`
CommitState = Callable[[], tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]]


class Lifecycle:
    """A run's hooks and (optionally) its run file: started, told every event, committed round by
    round after every hook's ``on_round_end``, and ended once with the status of how it ended.

    ``writer``: the open run file (None: hooks only), closed by :meth:`end`. ``state()``: what
    each commit writes besides the round's metrics (resume state, algorithm record).
    """

    def __init__(
        self,
        hooks: Iterable[Hook] = (),
        *,
        writer: RunWriter | None = None,
        state: CommitState | None = None,
    ) -> None:
        self.hooks = Hooks(hooks)
        self.writer = writer
        self.state = state
        self.ended: RunEnded | None = None

    def add(self, hook: Hook) -> None:
        self.hooks.append(hook)

    def start(self, event: RunStarted) -> None:
        self.hooks.on_run_start(event)

    def round_start(self, event: RoundStarted) -> None:
        self.hooks.on_round_start(event)

    def client_end(self, event: ClientTrained) -> None:
        self.hooks.on_client_end(event)

    def round_end(self, event: RoundEnded) -> None:
        """Every hook's ``on_round_end``, then the commit of the round (``metrics/round`` last)."""
        self.hooks.on_round_end(event)
        if self.writer is not None:
            from driftscope.engine.heap import release_free_heap

            state, record = self.state() if self.state is not None else (None, None)
            self.writer.commit(event, state, record)
            release_free_heap()

    def end(self, error: BaseException | None = None) -> RunEnded:
        """Tell the hooks how the run ended, then close the run file with that status (once)."""
        if self.ended is not None:
            return self.ended
        ended = self.ended = run_ended(error)
        try:
            self.hooks.on_run_end(ended)
        finally:
            if self.writer is not None:
                self.writer.close(ended.status, ended.message)
        return ended

    @contextlib.contextmanager
    def running(self, started: RunStarted) -> Iterator[Lifecycle]:
        """Start with ``started``; end with the status of how the block ends (the error goes on)."""
        try:
            self.start(started)
            yield self
        except BaseException as err:
            self.end(err)
            raise
        self.end(None)


def open_recording(
    setup: RunSetup,
    out: str | os.PathLike,
    *,
    engine: str,
    hooks: Iterable[Hook] = (),
    overwrite: bool = False,
    resume: bool = False,
    failures: bool = False,
    state: CommitState | None = None,
    initial_state: Mapping[str, Any] | None = None,
) -> tuple[Lifecycle, Mapping[str, Any], int]:
    """The lifecycle of ``setup``'s run writing the run file ``out``: the writer (new, or the
    interrupted run reopened when ``resume``), the recorder after ``hooks`` when recording is on,
    the resume state declared from ``initial_state`` (name -> tensor), ``/clients/failed`` when the
    engine may lose clients (``failures``). SWMR is on when it returns.

    Returns the lifecycle, the resume state read back and the round to start from (``{}``, 0 for a
    new run). Bad input fails before the run replaces anything at ``out``.
    """
    from driftscope.engine.recorder import stored_params
    from driftscope.runfile.writer import RunWriter

    stored_params(setup.cfg.record, setup.layout)  # a bad pattern fails before any file is touched
    loaded: Mapping[str, Any] = {}
    start = 0
    if resume:
        from driftscope.runfile.resume import reopen_for_resume

        _check_layout(out, setup, initial_state)  # a damaged file is refused before it is copied
        writer, loaded, start = reopen_for_resume(out, setup.num_clients)
    else:
        writer = RunWriter.create(
            out,
            config=setup.cfg,
            layout=setup.layout,
            label_histogram=setup.label_histogram,
            overwrite=overwrite,
            engine=engine,
            device=setup.device_name,
        )
    life = Lifecycle(hooks, writer=writer, state=state)
    try:
        recorder = _declare(writer, setup, resume=resume, failures=failures, state=initial_state)
        if recorder is not None:
            life.add(recorder)
        writer.start_swmr()
    except BaseException as err:  # before SWMR: no hook has started; a new run is deleted
        ended = run_ended(err)
        writer.close(ended.status, ended.message)
        raise
    return life, loaded, start


def _declare(
    writer: RunWriter,
    setup: RunSetup,
    *,
    resume: bool,
    failures: bool,
    state: Mapping[str, Any] | None,
) -> Hook | None:
    """Declare what ``setup``'s run writes into ``writer``'s file before SWMR (a resumed file
    holds it already): the recorder's datasets, the resume state (``state``: name -> tensor) and
    the algorithm record, ``/clients/failed``, the per-client evaluation and the kept global
    models. Returns the hook that writes the records (None: none): the recorder (recording on),
    then the per-client evaluation (``data.client_test_fraction``), then the kept global models
    (``record.global_every``)."""
    from driftscope.engine.client_eval import ClientEval
    from driftscope.engine.global_model import GlobalModel

    recorder = None
    hooks: list[Hook] = []
    cfg = setup.cfg
    if cfg.data.client_test_fraction > 0:
        evaluation = ClientEval(writer, setup)
        if not resume:
            evaluation.declare()
        hooks.append(evaluation)
    if cfg.record.global_every > 0:
        kept = GlobalModel(
            writer,
            setup.layout,
            every=cfg.record.global_every,
            rounds=cfg.train.rounds,
            buffers=setup.initial_buffers,
            frozen=setup.frozen,
        )
        if not resume:
            kept.declare()
        hooks.append(kept)
    if setup.cfg.record.enabled:
        recorder = recorder_for(
            writer,
            setup.cfg,
            setup.layout,
            model_factory=setup.build_model,
            test_x=setup.test_x,
            control_names=tuple(setup.algorithm.state_norms()),
            frozen=setup.frozen,
        )
    if not resume:
        if state is not None:  # an engine that can resume: state + algorithm record
            writer.declare_state({k: (tuple(v.shape), _dtype(v)) for k, v in state.items()})
            writer.declare_algorithm_record(setup.algorithm.round_record())
        if failures:
            writer.declare_failed_clients()
    if recorder is not None:
        hooks.insert(0, recorder)
    return Hooks(hooks) if len(hooks) > 1 else (hooks[0] if hooks else None)


def _check_layout(out: str | os.PathLike, setup: RunSetup, state: Mapping[str, Any] | None) -> None:
    """The run file holds every dataset this run writes, as it writes them (see
    :func:`~driftscope.runfile.resume.check_layout`): checked against a writer in memory."""
    import warnings

    from driftscope.runfile.resume import check_layout
    from driftscope.runfile.writer import RunWriter

    ref = RunWriter.in_memory(setup.cfg, setup.layout, setup.label_histogram)
    try:
        with warnings.catch_warnings():  # the run's own recorder says it once
            warnings.simplefilter("ignore")
            _declare(ref, setup, resume=False, failures=False, state=state)
        check_layout(out, ref.file)
    finally:
        ref.file.close()


def recorder_for(
    writer: RunWriter,
    cfg: RunConfig,
    layout: ModelLayout,
    *,
    model_factory: Callable[[], nn.Module],
    test_x: torch.Tensor,
    control_names: Sequence[str] = (),
    frozen: Mapping[str, torch.Tensor] | None = None,
) -> Recorder:
    """The recorder of a driftscope run: ``cfg``'s record settings, its probe set (rows of the
    normalised test inputs ``test_x`` drawn from the (seed, "probe") stream), the control-variate
    names of its algorithm, the training model's frozen parameters. What every engine of a
    driftscope config uses."""
    from driftscope.engine.activations import probe_index
    from driftscope.engine.recorder import Recorder

    rc = cfg.record
    rows = probe_index(cfg.seed, len(test_x), rc.probe_size) if rc.probe_size else None

    return Recorder(
        writer,
        rc,
        layout,
        clients_per_round=cfg.train.clients_per_round,
        num_clients=cfg.train.clients,
        model_factory=model_factory,
        probe_inputs=test_x[rows] if rows is not None else None,
        probe_rows=rows,
        control_names=control_names,
        frozen=frozen,
    )


def _dtype(tensor: Any) -> str:
    import torch

    return str(torch.empty(0, dtype=tensor.dtype).numpy().dtype)  # no copy off the device
