"""In-process federated simulation: every client trains in turn on one shared working model.

The engine samples the clients of a round, trains each with :func:`driftscope.local.local_train`
on one working model bound to flat vectors, averages the updates through the algorithm, evaluates
the new global model, and tells its hooks with read-only :mod:`~driftscope.events`. Client data sit
in memory as tensors.

Seeding (all from ``RunConfig.seed``, see :mod:`driftscope.seeding`): the partition, the model's
initialisation, each round's client sample, and each (round, client)'s batch order, augmentation and
dropout are separate streams, so a run repeats exactly, and a run resumed at round r (its global
model and algorithm state loaded with :meth:`Simulator.load_state`) continues exactly.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType

import numpy as np
import torch
import torch.nn.functional as F

from driftscope import batched
from driftscope.algorithms import Algorithm, build_algorithm
from driftscope.algorithms.aggregate import client_weights
from driftscope.buffers import (
    BufferAverage,
    buffer_bytes,
    buffer_names,
    clone_buffers,
    load_buffers,
    read_buffers,
)
from driftscope.config import RunConfig
from driftscope.data import Dataset, TensorData, as_dataset, load_dataset, normalisation
from driftscope.device import data_fits, resolve_device
from driftscope.errors import ConfigError, DivergenceError
from driftscope.events import (
    ClientTrained,
    Hook,
    RoundEnded,
    RoundStarted,
    RunEnded,
    RunStarted,
    StateRows,
)
from driftscope.local import Augmentation, FlatParams, LocalResult, local_train
from driftscope.models import build_model, check_head, check_model_fits, model_layout
from driftscope.own import model_name, recorded_config
from driftscope.partition import Split, client_split, label_histogram
from driftscope.seeding import derive_seed, numpy_rng

EVAL_BATCH = 1024
ENGINE = "simulator"
GLOBAL_PARAMS = "global_params"  # state name of the global model; algorithm state: "algorithm/<k>"
ALGORITHM_STATE = "algorithm/"
BUFFER_STATE = "buffers/"  # the global buffers: "buffers/<name>"
CLIENT_BUFFER_STATE = "client_buffers/"  # model.buffers "local": (N, ...) per buffer, and
CLIENT_BUFFER_SET = "client_buffers_set"  # (N,) uint8: 1 where the client has buffers of its own


class Simulator:
    """Runs a federated training described by a :class:`RunConfig`.

    ``dataset`` may be passed to reuse an already loaded one (tests, benchmarks, notebooks).
    """

    def __init__(
        self,
        cfg: RunConfig,
        dataset: Dataset | TensorData | None = None,
        *,
        model: Callable[[], torch.nn.Module] | None = None,
        split: Split | None = None,
    ) -> None:
        self.cfg = cfg
        t = cfg.train
        self.dataset = as_dataset(
            dataset if dataset is not None else load_dataset(cfg.data.dataset, cfg.data.data_dir)
        )
        ds = self.dataset
        # a registered model that cannot take the inputs: one line now, not a traceback in round 0
        if model is None:
            check_model_fits(cfg.model.name, ds.input_shape, ds.num_classes, ds.name)
        self.device = resolve_device(t.device)
        device = self.device

        # data -> partition (a split of the user's own, or one of driftscope's from the seed)
        labels = ds.train_y.numpy()
        rng = numpy_rng(cfg.seed, "partition")
        self.parts = client_split(cfg.data, labels, t.clients, rng, split)
        self.label_histogram = label_histogram(labels, self.parts, ds.num_classes)
        self.augment = ds.augment if cfg.data.augment is None else cfg.data.augment
        mean, std = normalisation(ds, self.augment)  # (1, C, 1, ...) or None: as given
        self.augmentation = (
            Augmentation(ds.crop_padding, mean.to(device), std.to(device))
            if self.augment and mean is not None and std is not None
            else None
        )
        # client data on the device when they fit (driftscope.device.data_fits), else in host
        # memory (pinned for cuda) and copied per batch by local_train
        train_bytes = ds.train_x.element_size() * ds.train_x.nelement()
        self.data_on_device = data_fits(train_bytes, device)
        home = device if self.data_on_device else torch.device("cpu")

        def normalised(x: torch.Tensor) -> torch.Tensor:
            return x if mean is None or std is None else (x - mean) / std

        train_x = ds.train_x if self.augment else normalised(ds.train_x)
        train_x, train_y = train_x.to(home), ds.train_y.to(home)
        self.client_x = [train_x[torch.from_numpy(p).to(home)] for p in self.parts]
        self.client_y = [train_y[torch.from_numpy(p).to(home)] for p in self.parts]
        if not self.data_on_device and device.type == "cuda":
            self.client_x = [t.pin_memory() for t in self.client_x]
            self.client_y = [t.pin_memory() for t in self.client_y]
        test_x = normalised(ds.test_x)
        test_home = device if data_fits(test_x.element_size() * test_x.nelement(), device) else home
        self.test_x = test_x.to(test_home)
        self.test_y = ds.test_y.to(test_home)

        # model: a registered one by name, or the user's own factory (called for the training
        # model and the recorder's probe model; the seed fixes the initial weights)
        self._factory = model
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        self.model = self.build_model()
        if model is not None and not isinstance(self.model, torch.nn.Module):
            raise ConfigError(
                f"model= must be a function that returns a torch.nn.Module (it returned a "
                f"{type(self.model).__name__}): pass the class or a lambda, not an instance"
            )
        # the run file names what was used: the dataset's and model's own names, the split
        self.cfg = cfg = recorded_config(
            cfg,
            dataset=ds.name if dataset is not None else None,
            model=model_name(model, self.model) if model is not None else None,
            partition="custom" if split is not None else None,
        )
        self.layout = model_layout(self.model, cfg.model.head, cfg.model.head_last_k)
        check_head(t.algorithm, self.layout, cfg.model.head, cfg.model.head_last_k)
        self.flat = FlatParams(self.model, self.layout, device)  # initialised on the CPU
        self.global_params = self.flat.params.clone()
        # frozen parameters (requires_grad False): the model's own, never trained or sent
        self.frozen = {n: p for n, p in self.model.named_parameters() if not p.requires_grad}
        # buffers (driftscope.buffers): the global ones, and in "local" mode each client's own
        self.buffer_names = buffer_names(self.model)
        self.global_buffers = clone_buffers(read_buffers(self.model, self.buffer_names))
        self.local_buffers = cfg.model.buffers == "local" and bool(self.buffer_names)
        self.client_buffers: dict[str, torch.Tensor] = {}
        self.client_buffers_set = torch.zeros(t.clients, dtype=torch.uint8)
        if self.local_buffers:
            self.client_buffers = {
                name: torch.zeros((t.clients, *v.shape), dtype=v.dtype, device=device)
                for name, v in self.global_buffers.items()
            }

        # algorithm
        self.algorithm: Algorithm = build_algorithm(t, self.layout, t.clients).to(device)
        self.round = 0  # the next round to train

    # ------------------------------------------------------------------ public API
    @property
    def num_clients(self) -> int:
        return self.cfg.train.clients

    def build_model(self) -> torch.nn.Module:
        """A fresh model of this run's architecture (its parameters are not the run's)."""
        if self._factory is not None:
            return self._factory()
        ds = self.dataset
        return build_model(self.cfg.model.name, ds.input_shape, ds.num_classes)

    def run(
        self,
        hooks: Sequence[Hook] = (),
        progress: bool = False,
        commit: Callable[[RoundEnded], None] | None = None,
        *,
        summaries: bool = True,
    ) -> list[RoundEnded]:
        """Train from round ``self.round`` to ``cfg.train.rounds``, telling ``hooks``.

        ``commit(event)`` is called after every hook's ``on_round_end`` (the trainer writes the
        round there). Returns each round's :class:`~driftscope.events.RoundEnded` without its
        tensors (``global_params`` empty, no control norms): see :attr:`global_params`. With
        ``summaries=False`` it returns ``[]`` and keeps nothing per round: the summaries hold each
        sampled client's loss and accuracy, O(rounds x clients per round) objects that a caller
        who writes the rounds elsewhere (``train``) never reads.
        """
        from tqdm import tqdm  # plain text bar: no ipywidgets needed in notebooks

        rounds = self.cfg.train.rounds
        kept: list[RoundEnded] = []
        status, message = "complete", ""
        # A bar only on a terminal: elsewhere (a log file, a pipe) tqdm cannot redraw in place
        # and writes a line per update; print a compact line every ``every`` rounds instead.
        tty = progress and sys.stderr.isatty()
        every = max(1, rounds // 8)
        t0 = time.perf_counter()
        bar = tqdm(
            total=rounds,
            initial=self.round,
            disable=not tty,
            desc=self.cfg.train.algorithm,
            unit="round",
            dynamic_ncols=True,
        )
        try:
            started = RunStarted(
                config=self.cfg,
                layout=self.layout,
                num_clients=self.num_clients,
                clients_per_round=self.cfg.train.clients_per_round,
                label_histogram=self.label_histogram,
                engine=ENGINE,
                start_round=self.round,
            )
            for hook in hooks:
                hook.on_run_start(started)
            while self.round < rounds:
                event = self.run_round(hooks)
                if commit is not None:
                    commit(event)
                if summaries:
                    kept.append(_without_tensors(event))
                bar.update(1)
                if not math.isnan(event.test_accuracy):
                    bar.set_postfix(acc=f"{event.test_accuracy:.3f}", loss=f"{event.test_loss:.3f}")
                if progress and not tty and (self.round % every == 0 or self.round == rounds):
                    print(
                        _progress_line(self.cfg.train.algorithm, event, rounds, t0),
                        file=sys.stderr,
                        flush=True,
                    )
        except DivergenceError as err:
            status, message = "diverged", str(err)
            raise
        except KeyboardInterrupt as err:
            status, message = "interrupted", str(err) or "stopped by the user"
            raise
        except BaseException as err:
            status, message = "failed", f"{type(err).__name__}: {err}"
            raise
        finally:
            bar.close()
            ended = RunEnded(status, message)
            for hook in hooks:
                hook.on_run_end(ended)
        return kept

    def sample_clients(self, round: int) -> list[int]:
        """The clients taking part in ``round`` (sorted; all clients when client_fraction = 1)."""
        k = self.cfg.train.clients_per_round
        if k == self.num_clients:
            return list(range(self.num_clients))
        rng = numpy_rng(self.cfg.seed, "sampling", round)
        return sorted(int(i) for i in rng.choice(self.num_clients, size=k, replace=False))

    def run_round(self, hooks: Sequence[Hook] = ()) -> RoundEnded:
        """One communication round: local training on sampled clients, then aggregation."""
        start = time.perf_counter()
        r = self.round
        t = self.cfg.train
        clients = tuple(self.sample_clients(r))
        round_started = RoundStarted(r, clients)
        for hook in hooks:
            hook.on_round_start(round_started)
        x = self.global_params
        sizes = torch.tensor([len(self.parts[c]) for c in clients])
        weights = client_weights(sizes, t.weighting).tolist()
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
            trained = ClientTrained(
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
            for hook in hooks:
                hook.on_client_end(trained)
        self.global_params = self.algorithm.server_update(x, mean_update, extras)
        if self.global_buffers:
            self.global_buffers = buffer_mean.result()
        if not bool(torch.isfinite(self.global_params).all()):
            raise DivergenceError(f"the global model became non-finite at round {r}: lower --lr")
        evaluate = (r + 1) % t.eval_every == 0 or r + 1 == t.rounds
        test_loss, test_acc = (
            self.evaluate(self.global_params) if evaluate else (math.nan, math.nan)
        )
        down, up = self.algorithm.bytes_per_client()
        carried = buffer_bytes(self.global_buffers)  # buffers go down (unless kept local) and up
        down, up = down + (0 if self.local_buffers else carried), up + carried
        event = RoundEnded(
            round=r,
            clients=clients,
            test_loss=test_loss,
            test_accuracy=test_acc,
            train_loss=float(np.mean(list(losses.values()))),
            train_accuracy=float(np.mean(list(accs.values()))),
            downlink_bytes=down * len(clients),
            uplink_bytes=up * len(clients),
            seconds=time.perf_counter() - start,
            client_train_loss=MappingProxyType(losses),
            client_train_accuracy=MappingProxyType(accs),
            global_params=self.global_params,
            control_norms=_LazyMapping(self.algorithm.state_norms),
            global_buffers=MappingProxyType(self.global_buffers),
        )
        for hook in hooks:
            hook.on_round_end(event)
        self.round += 1
        return event

    def _train(self, clients: Sequence[int], x: torch.Tensor) -> Iterator[LocalResult]:
        """Each client's local training, in order: batched (:mod:`driftscope.batched`) or one by
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
        (:class:`~driftscope.events.StateRows`; the writer's slot for this round held the state of
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

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, params: torch.Tensor) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) of ``params`` (with the global buffers) on the test set."""
        self.flat.params.copy_(params)
        load_buffers(self.model, self.global_buffers)
        self.model.eval()
        device = self.device
        # summed on the device in float64 (float32 on mps) and read once
        dtype = torch.float32 if device.type == "mps" else torch.float64
        total = torch.zeros((), dtype=dtype, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        for start in range(0, len(self.test_y), EVAL_BATCH):
            xb = self.test_x[start : start + EVAL_BATCH].to(device, non_blocking=True)
            yb = self.test_y[start : start + EVAL_BATCH].to(device, non_blocking=True)
            logits = self.model(xb)
            total += F.cross_entropy(logits, yb, reduction="sum")
            correct += (logits.argmax(1) == yb).sum()
        n = len(self.test_y)
        return float(total) / n, int(correct) / n


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


def _progress_line(name: str, event: RoundEnded, rounds: int, t0: float) -> str:
    """``fedavg round 10/40  acc 0.912  loss 0.301  12 s``: the compact line printed instead of
    a progress bar when stderr is not a terminal."""
    line = f"{name} round {event.round + 1}/{rounds}"
    if not math.isnan(event.test_accuracy):
        line += f"  acc {event.test_accuracy:.3f}  loss {event.test_loss:.3f}"
    return line + f"  {time.perf_counter() - t0:.0f} s"
