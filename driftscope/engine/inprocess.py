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

from driftscope.algorithms import Algorithm
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
from driftscope.engine.local import Augmentation, FlatParams, LocalResult, local_train
from driftscope.engine.progress import Progress
from driftscope.engine.setup import RunSetup
from driftscope.errors import DivergenceError
from driftscope.models.buffers import (
    BufferAverage,
    buffer_bytes,
    clone_buffers,
    load_buffers,
    read_buffers,
)
from driftscope.models.layout import ModelLayout

ENGINE = INPROCESS
GLOBAL_PARAMS = "global_params"  # state name of the global model; algorithm state: "algorithm/<k>"
ALGORITHM_STATE = "algorithm/"
BUFFER_STATE = "buffers/"  # the global buffers: "buffers/<name>"
CLIENT_BUFFER_STATE = "client_buffers/"  # model.buffers "local": (N, ...) per buffer, and
CLIENT_BUFFER_SET = "client_buffers_set"  # (N,) uint8: 1 where the client has buffers of its own


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

    # ------------------------------------------------------------------ the setup's parts
    @property
    def layout(self) -> ModelLayout:
        return self.setup.layout

    @property
    def algorithm(self) -> Algorithm:
        return self.setup.algorithm

    @property
    def model(self) -> torch.nn.Module:
        return self.setup.model

    @property
    def flat(self) -> FlatParams:
        return self.setup.flat

    @property
    def device(self) -> torch.device:
        return self.setup.device

    @property
    def dataset(self) -> Dataset:
        return self.setup.dataset

    @property
    def parts(self) -> list[np.ndarray]:
        return self.setup.parts

    @property
    def label_histogram(self) -> np.ndarray:
        return self.setup.label_histogram

    @property
    def client_x(self) -> list[torch.Tensor]:
        return self.setup.client_x

    @property
    def client_y(self) -> list[torch.Tensor]:
        return self.setup.client_y

    @property
    def test_x(self) -> torch.Tensor:
        return self.setup.test_x

    @property
    def test_y(self) -> torch.Tensor:
        return self.setup.test_y

    @property
    def augmentation(self) -> Augmentation | None:
        return self.setup.augmentation

    @property
    def augment(self) -> bool:
        return self.setup.augment

    @property
    def data_on_device(self) -> bool:
        return self.setup.data_on_device

    @property
    def num_clients(self) -> int:
        return self.setup.num_clients

    @property
    def frozen(self) -> dict[str, torch.nn.Parameter]:
        return self.setup.frozen

    @property
    def buffer_names(self) -> list[str]:
        return self.setup.buffer_names

    @property
    def local_buffers(self) -> bool:
        return self.setup.local_buffers

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
        """What continuing the run needs besides the config: the global model and the algorithm's
        state (control variates), by name. Tensors are the live ones: copy what you keep."""
        out = {GLOBAL_PARAMS: self.global_params}
        for name, tensor in self.algorithm.state_dict().items():
            out[ALGORITHM_STATE + name] = tensor
        for name, tensor in self.global_buffers.items():
            out[BUFFER_STATE + name] = tensor
        if self.local_buffers:
            for name, tensor in self.client_buffers.items():
                out[CLIENT_BUFFER_STATE + name] = tensor
            out[CLIENT_BUFFER_SET] = self.client_buffers_set
        return out

    def commit_state(self) -> dict[str, np.ndarray | StateRows]:
        """:meth:`state` as host arrays for the run file, once per round after the round: a
        per-client table (``c_clients``) as only the rows changed in the last two rounds
        (:class:`~driftscope.engine.events.StateRows`; the writer's slot for this round held the state of
        two rounds before), so committing costs O(sampled clients), not O(all clients)."""
        rows = self.algorithm.changed_rows()
        out: dict[str, np.ndarray | StateRows] = {}
        for name, tensor in self.state().items():
            key = name[len(ALGORITHM_STATE) :] if name.startswith(ALGORITHM_STATE) else None
            if key is not None and key in rows:
                index = rows[key]
                values = tensor[torch.from_numpy(index).to(tensor.device)]
                out[name] = StateRows(index, values.cpu().numpy())
            else:
                out[name] = tensor.detach().cpu().numpy()
        return out

    def load_state(self, state: Mapping[str, np.ndarray | torch.Tensor], next_round: int) -> None:
        """Continue at round ``next_round`` from a :meth:`state` saved after round next_round - 1."""
        self.global_params = torch.as_tensor(state[GLOBAL_PARAMS]).to(self.device).clone()
        algo = {
            k[len(ALGORITHM_STATE) :]: torch.as_tensor(v)
            for k, v in state.items()
            if k.startswith(ALGORITHM_STATE)
        }
        if algo:
            self.algorithm.load_state_dict(algo)
        missing = [n for n in self.buffer_names if BUFFER_STATE + n not in state]
        if missing:
            from driftscope.errors import RunFileError

            raise RunFileError(
                f"the run file's resume state has no buffers ({missing[0]}, ...): it was written "
                "before buffers were federated state; start the run again"
            )
        for name in self.buffer_names:
            value = torch.as_tensor(state[BUFFER_STATE + name])
            self.global_buffers[name] = value.to(self.device, self.global_buffers[name].dtype)
        if self.local_buffers:
            for name in self.buffer_names:
                value = torch.as_tensor(state[CLIENT_BUFFER_STATE + name])
                self.client_buffers[name].copy_(value)
            self.client_buffers_set.copy_(torch.as_tensor(state[CLIENT_BUFFER_SET]))
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
