"""The in-process engine: every client trains in turn on one shared working model.

The run is assembled by :class:`~driftscope.engine.setup.RunSetup`. Per round the engine samples
the clients, trains each with :func:`driftscope.engine.local.local_train` (or a group at once with
:mod:`driftscope.engine.batched`) on the setup's working model bound to flat vectors, averages the
updates through the algorithm, evaluates the new global model, and tells its
:class:`~driftscope.engine.lifecycle.Lifecycle` with read-only :mod:`~driftscope.engine.events`.

Seeding (all from ``RunConfig.seed``, see :mod:`driftscope.seeding`): the partition, the model's
initialisation, each round's client sample, and each (round, client)'s batch order, augmentation and
dropout are separate streams, so a run repeats exactly, and a run resumed at round r (its global
model and algorithm state loaded with :meth:`Simulator.load_state`) continues exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType

import numpy as np
import torch

from driftscope.algorithms.aggregate import client_weights
from driftscope.config import RunConfig
from driftscope.data import Dataset, TensorData
from driftscope.data.partition import Split
from driftscope.engine import batched
from driftscope.engine.events import (
    ClientTrained,
    Hook,
    RoundEnded,
    RoundStarted,
    RunStarted,
    StateRows,
)
from driftscope.engine.lifecycle import INPROCESS, Lifecycle, round_ended
from driftscope.engine.local import LocalResult, local_train
from driftscope.engine.progress import Progress
from driftscope.engine.resume_state import (
    GLOBAL_PARAMS,
    algorithm_state,
    host_state,
    named_state,
    saved_buffers,
    saved_client_buffers,
)
from driftscope.engine.setup import RunSetup
from driftscope.errors import DivergenceError
from driftscope.models.buffers import (
    BufferAverage,
    buffer_bytes,
    clone_buffers,
    load_buffers,
    read_buffers,
)

ENGINE = INPROCESS


class Simulator:
    """The in-process engine: runs the federated training that ``setup`` assembled.

    ``Simulator(cfg, dataset)`` assembles the run (:class:`~driftscope.engine.setup.RunSetup`;
    ``dataset`` may be passed to reuse an already loaded one); :meth:`from_setup` runs one
    already assembled. The setup's parts are readable here by their names (``layout``,
    ``algorithm``, ``client_x``, ...).
    """

    def __init__(
        self,
        cfg: RunConfig,
        dataset: Dataset | TensorData | None = None,
        *,
        model: Callable[[], torch.nn.Module] | None = None,
        split: Split | None = None,
    ) -> None:
        self._use(RunSetup(cfg, dataset, model=model, split=split))

    @classmethod
    def from_setup(cls, setup: RunSetup) -> Simulator:
        sim = cls.__new__(cls)
        sim._use(setup)
        return sim

    def _use(self, setup: RunSetup) -> None:
        self.setup = setup
        self.cfg = setup.cfg
        # the setup's parts, readable here by their names (a RunSetup never replaces them)
        self.layout = setup.layout
        self.algorithm = setup.algorithm
        self.model = setup.model
        self.flat = setup.flat
        self.device = setup.device
        self.dataset = setup.dataset
        self.parts = setup.parts
        self.label_histogram = setup.label_histogram
        self.client_x = setup.client_x
        self.client_y = setup.client_y
        self.test_x = setup.test_x
        self.test_y = setup.test_y
        self.augmentation = setup.augmentation
        self.augment = setup.augment
        self.data_on_device = setup.data_on_device
        self.num_clients = setup.num_clients
        self.frozen = setup.frozen
        self.buffer_names = setup.buffer_names
        self.local_buffers = setup.local_buffers
        self.global_params = setup.initial_params.clone()
        # buffers (driftscope.models.buffers): the global ones, and in "local" mode each client's own
        self.global_buffers = clone_buffers(setup.initial_buffers)
        self.client_buffers: dict[str, torch.Tensor] = {}
        self.client_buffers_set = torch.zeros(setup.num_clients, dtype=torch.uint8)
        if setup.local_buffers:
            self.client_buffers = {
                name: torch.zeros((setup.num_clients, *v.shape), dtype=v.dtype, device=setup.device)
                for name, v in self.global_buffers.items()
            }
        self.round = 0  # the next round to train

    # ------------------------------------------------------------------ the setup's methods
    def build_model(self) -> torch.nn.Module:
        """A fresh model of this run's architecture (its parameters are not the run's)."""
        return self.setup.build_model()

    def sample_clients(self, round: int) -> list[int]:
        """The clients taking part in ``round`` (sorted; all clients when client_fraction = 1)."""
        return self.setup.sample_clients(round)

    def evaluate(self, params: torch.Tensor) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) of ``params`` (with the global buffers) on the test set."""
        return self.setup.evaluate(params, self.global_buffers)

    # ------------------------------------------------------------------ the engine
    def run(
        self,
        hooks: Sequence[Hook] = (),
        progress: bool = False,
        *,
        lifecycle: Lifecycle | None = None,
        summaries: bool = True,
    ) -> list[RoundEnded]:
        """Train from round ``self.round`` to ``cfg.train.rounds``, telling ``hooks``.

        ``lifecycle`` (default: one with ``hooks`` and no run file) receives every event, commits
        each round (:func:`driftscope.train` gives one with the run file) and ends with the
        run's status; ``hooks`` are added to it, then the progress display when ``progress``.
        Returns each round's :class:`~driftscope.engine.events.RoundEnded` without its tensors
        (``global_params`` empty, no control norms): see :attr:`global_params`. With
        ``summaries=False`` it returns ``[]`` and keeps nothing per round: the summaries hold each
        sampled client's loss and accuracy, O(rounds x clients per round) objects that a caller
        who writes the rounds elsewhere (``train``) never reads.
        """
        life = lifecycle if lifecycle is not None else Lifecycle()
        for hook in hooks:
            life.add(hook)
        if progress:
            life.add(Progress())
        kept: list[RoundEnded] = []
        started = RunStarted(
            config=self.cfg,
            layout=self.layout,
            num_clients=self.num_clients,
            clients_per_round=self.cfg.train.clients_per_round,
            label_histogram=self.label_histogram,
            engine=ENGINE,
            start_round=self.round,
        )
        with life.running(started):
            while self.round < self.cfg.train.rounds:
                event = self._round(life)
                if summaries:
                    kept.append(_without_tensors(event))
        return kept

    def run_round(self, hooks: Sequence[Hook] = ()) -> RoundEnded:
        """One communication round told to ``hooks`` (no run file): see :meth:`run`."""
        return self._round(Lifecycle(hooks))

    def _round(self, life: Lifecycle) -> RoundEnded:
        """One communication round: local training on sampled clients, then aggregation."""
        start = time.perf_counter()
        r = self.round
        clients = tuple(self.sample_clients(r))
        life.round_start(RoundStarted(r, clients))
        x = self.global_params
        sizes = torch.tensor([self.setup.client_size(c) for c in clients])
        weights = client_weights(sizes, self.cfg.train.weighting).tolist()
        mean_update = torch.zeros_like(x)
        buffer_mean = BufferAverage(self.global_buffers)
        extras: list[torch.Tensor | None] = []
        losses: dict[int, float] = {}
        accs: dict[int, float] = {}
        for client, w, result in zip(clients, weights, self._train(clients, x), strict=True):
            mean_update.add_(result.update, alpha=w)
            extras.append(result.extra)
            # the client's buffers after training: the batched path's rows, or the model's own
            buffers = (
                result.buffers
                if result.buffers is not None
                else read_buffers(self.model, self.buffer_names)
            )
            if buffers:
                buffer_mean.add(buffers, w)
                if self.local_buffers:
                    for name, value in buffers.items():
                        self.client_buffers[name][client].copy_(value)
                    self.client_buffers_set[client] = 1
            losses[client], accs[client] = result.train_loss, result.train_accuracy
            life.client_end(
                ClientTrained(
                    round=r,
                    client=client,
                    num_samples=result.num_samples,
                    steps=result.steps,
                    train_loss=result.train_loss,
                    train_accuracy=result.train_accuracy,
                    update=result.update,
                    params=result.params,
                    layout=self.layout,
                    buffers=MappingProxyType(buffers),
                )
            )
        self.global_params = self.algorithm.server_update(x, mean_update, extras)
        if self.global_buffers:
            self.global_buffers = buffer_mean.result()
        if not bool(torch.isfinite(self.global_params).all()):
            raise DivergenceError(f"the global model became non-finite at round {r}: lower --lr")
        nan = (math.nan, math.nan)
        down, up = self.algorithm.bytes_per_client()
        carried = buffer_bytes(self.global_buffers)  # buffers go down (unless kept local) and up
        event = round_ended(
            round=r,
            clients=clients,
            test=self.evaluate(self.global_params) if self.setup.evaluates(r) else nan,
            losses=losses,
            accuracies=accs,
            per_client_bytes=(down + (0 if self.local_buffers else carried), up + carried),
            answered=len(clients),
            started=start,
            global_params=self.global_params,
            control_norms=_LazyMapping(self.algorithm.state_norms),
            global_buffers=self.global_buffers,
        )
        life.round_end(event)
        self.round += 1
        return event

    def _train(self, clients: Sequence[int], x: torch.Tensor) -> Iterator[LocalResult]:
        """Each client's local training, in order: batched (:mod:`driftscope.engine.batched`) or one by
        one (:func:`local_train`), as ``train.batched`` says."""
        t, seed, r = self.cfg.train, self.cfg.seed, self.round
        if batched.use_batched(t, self.model, self.layout.numel, self.dataset.input_shape):
            data = [(self.client_x[c], self.client_y[c]) for c in clients]
            starts = [self.start_buffers(c) for c in clients] if self.buffer_names else None
            yield from batched.train_clients(
                self.model, self.layout, data, clients, self.algorithm, x, t,
                seed=seed, round=r, augmentation=self.augmentation, buffers=starts,
            )  # fmt: skip
            return
        for client in clients:
            self.load_client_buffers(client)
            yield local_train(
                self.flat, self.client_x[client], self.client_y[client], self.algorithm, x, t,
                seed=seed, round=r, client=client, augmentation=self.augmentation,
            )  # fmt: skip

    def start_buffers(self, client: int) -> dict[str, torch.Tensor]:
        """The buffers ``client`` starts its round from: the global ones, or in "local" mode its
        own once it has trained (views)."""
        if self.local_buffers and self.client_buffers_set[client]:
            return {n: v[client] for n, v in self.client_buffers.items()}
        return self.global_buffers

    def load_client_buffers(self, client: int) -> None:
        """Put the buffers ``client`` starts its round from into the working model."""
        load_buffers(self.model, self.start_buffers(client))

    # ------------------------------------------------------------------ state (resume)
    def state(self) -> dict[str, torch.Tensor]:
        """What continuing the run needs besides the config: the global model, the algorithm's
        state (control variates) and the buffers, by name (:mod:`driftscope.engine.resume_state`).
        Tensors are the live ones: copy what you keep."""
        local = (self.client_buffers, self.client_buffers_set) if self.local_buffers else None
        return named_state(
            self.global_params, self.algorithm.state_dict(), self.global_buffers, local
        )

    def commit_state(self) -> dict[str, np.ndarray | StateRows]:
        """:meth:`state` as host arrays for the run file, once per round after the round: a
        per-client table (``c_clients``) as only the rows changed in the last two rounds
        (:class:`~driftscope.engine.events.StateRows`; the writer's slot for this round held the
        state of two rounds before), so committing costs O(sampled clients), not O(all clients)."""
        return host_state(self.state(), self.algorithm.changed_rows())

    def load_state(self, state: Mapping[str, np.ndarray | torch.Tensor], next_round: int) -> None:
        """Continue at round ``next_round`` from a :meth:`state` saved after round next_round - 1."""
        self.global_params = torch.as_tensor(state[GLOBAL_PARAMS]).to(self.device).clone()
        algo = algorithm_state(state)
        if algo:
            self.algorithm.load_state_dict(algo)
        for name, value in saved_buffers(state, self.buffer_names).items():
            self.global_buffers[name] = value.to(self.device, self.global_buffers[name].dtype)
        if self.local_buffers:
            per_client, which = saved_client_buffers(state, self.buffer_names)
            for name, value in per_client.items():
                self.client_buffers[name].copy_(value)
            self.client_buffers_set.copy_(which)
        self.round = next_round


def _without_tensors(event: RoundEnded) -> RoundEnded:
    import dataclasses

    return dataclasses.replace(
        event,
        global_params=torch.empty(0),
        control_norms=MappingProxyType({}),
        global_buffers=MappingProxyType({}),
    )


class _LazyMapping(Mapping[str, torch.Tensor]):
    """A mapping computed by ``compute()`` on first access (control-variate norms cost a pass over
    the state, wasted in rounds nobody records)."""

    def __init__(self, compute: Callable[[], dict[str, torch.Tensor]]) -> None:
        self._compute = compute
        self._value: dict[str, torch.Tensor] | None = None

    def _get(self) -> dict[str, torch.Tensor]:
        if self._value is None:
            self._value = self._compute()
        return self._value

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())
