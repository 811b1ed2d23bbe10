"""In-process federated simulation: every client trains in turn on one shared working model.

The model's parameters and gradients are bound to views of two flat vectors (:class:`FlatParams`),
so loading a client's starting point, reading its update, averaging and applying control-variate
corrections are each one vector operation, with no state-dict copies. Client data sit in memory as
tensors and batches are cut by seeded permutations, with no DataLoader.

Seeding (all from ``RunConfig.seed``, see :mod:`driftscope.seeding`): the partition, the model's
initialisation, each round's client sample, and each (round, client)'s batch order, augmentation and
dropout are separate streams, so a run repeats exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from driftscope.algorithms import Algorithm, build_algorithm
from driftscope.algorithms.aggregate import client_weights
from driftscope.config import RunConfig
from driftscope.data import Dataset, load_dataset
from driftscope.data.transforms import augment_batch
from driftscope.errors import DivergenceError
from driftscope.hooks import ClientResult, Hook, RoundSummary
from driftscope.models import ModelLayout, build_model, model_layout
from driftscope.partition import label_histogram, partition
from driftscope.seeding import derive_seed, numpy_rng, torch_generator

EVAL_BATCH = 1024


class FlatParams:
    """Binds ``model``'s parameters and gradients to views of flat vectors ``params`` and ``grads``.

    After binding, ``params.copy_(x)`` loads a model and an in-place step on ``params`` moves every
    layer. ``.grad`` of each parameter is a view of ``grads``: ``loss.backward()`` accumulates the
    flat gradient there (zero it with ``grads.zero_()``, never ``model.zero_grad()``, which would
    unbind it), and copying into the views fills it.
    """

    def __init__(self, model: nn.Module, layout: ModelLayout) -> None:
        n = layout.numel
        self.params = torch.empty(n)
        self.grads = torch.zeros(n)
        tensors = list(model.parameters())
        for tensor, info in zip(tensors, layout.params, strict=True):
            a, b = info.offset, info.offset + info.numel
            self.params[a:b].copy_(tensor.detach().reshape(-1))
            tensor.data = self.params[a:b].view(info.shape)
            tensor.grad = self.grads[a:b].view(info.shape)


def _per_param(momentum: float | torch.Tensor, layout: ModelLayout) -> list[float] | None:
    """Momentum as one number per parameter tensor, or None if it varies within one."""
    if not isinstance(momentum, torch.Tensor):
        return [float(momentum)] * len(layout.params)
    out = []
    for p in layout.params:
        seg = momentum[p.offset : p.offset + p.numel]
        if not bool((seg == seg[0]).all()):
            return None
        out.append(float(seg[0]))
    return out


class Simulator:
    """Runs a federated training described by a :class:`RunConfig`.

    ``dataset`` may be passed to reuse an already loaded one (tests, benchmarks, notebooks).
    """

    def __init__(self, cfg: RunConfig, dataset: Dataset | None = None) -> None:
        self.cfg = cfg
        t = cfg.train
        self.dataset = (
            dataset if dataset is not None else load_dataset(cfg.data.dataset, cfg.data.data_dir)
        )
        ds = self.dataset

        # data -> partition
        labels = ds.train_y.numpy()
        self.parts = partition(
            labels,
            t.clients,
            cfg.data.partition,
            numpy_rng(cfg.seed, "partition"),
            alpha=cfg.data.alpha,
            classes_per_client=cfg.data.classes_per_client,
            min_share=cfg.data.min_share,
            max_redraws=cfg.data.max_redraws,
        )
        self.label_histogram = label_histogram(labels, self.parts, ds.num_classes)
        self.augment = ds.augment if cfg.data.augment is None else cfg.data.augment
        mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
        std = torch.tensor(ds.std).view(1, -1, 1, 1)
        self._mean, self._std = mean, std
        train_x = ds.train_x if self.augment else (ds.train_x - mean) / std
        self.client_x = [train_x[torch.from_numpy(p)] for p in self.parts]
        self.client_y = [ds.train_y[torch.from_numpy(p)] for p in self.parts]
        self.test_x = (ds.test_x - mean) / std
        self.test_y = ds.test_y

        # model
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        self.model = build_model(cfg.model.name, ds.input_shape, ds.num_classes)
        self.layout = model_layout(self.model, cfg.model.head, cfg.model.head_last_k)
        self.flat = FlatParams(self.model, self.layout)
        self.global_params = self.flat.params.clone()
        self._has_dropout = any(isinstance(m, nn.Dropout) for m in self.model.modules())

        # algorithm
        self.algorithm: Algorithm = build_algorithm(t, self.layout, t.clients)
        self._momentum = self.algorithm.momentum()
        self._update = torch.empty(self.layout.numel)
        self._buf = torch.empty(self.layout.numel)
        # Per-parameter views for the local step: autograd.grad returns fresh gradients, which
        # the step applies layer by layer (torch._foreach_*) without first zeroing and
        # accumulating into the flat gradient, or copies into the flat gradient when an algorithm
        # works on it (gradient correction, weight decay, momentum that varies within a layer).
        self._params = list(self.model.parameters())
        self._grad_views = [p.grad for p in self._params]
        self._buf_views = [
            self._buf[i.offset : i.offset + i.numel].view(i.shape) for i in self.layout.params
        ]
        self._param_momentum = _per_param(self._momentum, self.layout)
        self.round = 0

    # ------------------------------------------------------------------ public API
    @property
    def num_clients(self) -> int:
        return self.cfg.train.clients

    def run(self, hooks: Sequence[Hook] = (), progress: bool = False) -> list[RoundSummary]:
        """Train for ``cfg.train.rounds`` rounds, calling ``hooks``; returns each round's summary."""
        from tqdm import tqdm  # plain text bar: no ipywidgets needed in notebooks

        summaries: list[RoundSummary] = []
        for hook in hooks:
            hook.on_run_start(self)
        bar = tqdm(
            total=self.cfg.train.rounds,
            disable=not progress,
            desc=self.cfg.train.algorithm,
            unit="round",
            dynamic_ncols=True,
        )
        try:
            for _ in range(self.cfg.train.rounds):
                summary = self.run_round(hooks)
                summaries.append(summary)
                bar.update(1)
                if not math.isnan(summary.test_accuracy):
                    bar.set_postfix(
                        acc=f"{summary.test_accuracy:.3f}", loss=f"{summary.test_loss:.3f}"
                    )
        finally:
            bar.close()
            for hook in hooks:
                hook.on_run_end(self)
        return summaries

    def sample_clients(self, round: int) -> list[int]:
        """The clients taking part in ``round`` (sorted; all clients when client_fraction = 1)."""
        k = self.cfg.train.clients_per_round
        if k == self.num_clients:
            return list(range(self.num_clients))
        rng = numpy_rng(self.cfg.seed, "sampling", round)
        return sorted(int(i) for i in rng.choice(self.num_clients, size=k, replace=False))

    def run_round(self, hooks: Sequence[Hook] = ()) -> RoundSummary:
        """One communication round: local training on sampled clients, then aggregation."""
        start = time.perf_counter()
        r = self.round
        clients = self.sample_clients(r)
        for hook in hooks:
            hook.on_round_start(self, r, clients)
        x = self.global_params
        sizes = torch.tensor([len(self.parts[c]) for c in clients])
        weights = client_weights(sizes, self.cfg.train.weighting).tolist()
        mean_update = torch.zeros_like(x)
        extras: list[torch.Tensor | None] = []
        losses: dict[int, float] = {}
        accs: dict[int, float] = {}
        for client, w in zip(clients, weights, strict=True):
            result = self.local_train(r, client, x)
            mean_update.add_(result.update, alpha=w)
            extras.append(self.algorithm.end_client(client, x, self.flat.params, result.steps))
            losses[client], accs[client] = result.train_loss, result.train_accuracy
            for hook in hooks:
                hook.on_client_end(self, r, result)
        self.global_params = self.algorithm.server_update(x, mean_update, extras)
        if not bool(torch.isfinite(self.global_params).all()):
            raise DivergenceError(f"the global model became non-finite at round {r}: lower --lr")
        evaluate = (r + 1) % self.cfg.train.eval_every == 0 or r + 1 == self.cfg.train.rounds
        test_loss, test_acc = (
            self.evaluate(self.global_params) if evaluate else (math.nan, math.nan)
        )
        down, up = self.algorithm.bytes_per_client()
        summary = RoundSummary(
            round=r,
            clients=clients,
            test_loss=test_loss,
            test_accuracy=test_acc,
            train_loss=float(np.mean(list(losses.values()))),
            train_accuracy=float(np.mean(list(accs.values()))),
            downlink_bytes=down * len(clients),
            uplink_bytes=up * len(clients),
            seconds=time.perf_counter() - start,
            client_train_loss=losses,
            client_train_accuracy=accs,
        )
        for hook in hooks:
            hook.on_round_end(self, r, summary)
        self.round += 1
        return summary

    # ------------------------------------------------------------------ local training
    def local_train(self, round: int, client: int, x: torch.Tensor) -> ClientResult:
        """Train client ``client`` from global parameters ``x``; the working model ends at y."""
        t = self.cfg.train
        cx, cy = self.client_x[client], self.client_y[client]
        n = len(cy)
        params, grads = self.flat.params, self.flat.grads
        params.copy_(x)
        gen = torch_generator(self.cfg.seed, "batches", round, client)
        if self._has_dropout:
            torch.manual_seed(derive_seed(self.cfg.seed, "dropout", round, client))
        algo = self.algorithm
        algo.begin_client(client, x)
        correct = algo.corrects_gradient
        momentum = self._momentum
        use_momentum = isinstance(momentum, torch.Tensor) or momentum > 0
        if use_momentum:
            self._buf.zero_()
        lr, wd = t.lr, t.weight_decay
        self.model.train()

        total_loss = torch.zeros((), dtype=torch.float64)
        correct_count = torch.zeros((), dtype=torch.int64)
        seen = 0
        steps = 0
        per_layer = not correct and not wd and self._param_momentum is not None
        for idx in self._batches(n, gen):
            xb, yb = cx[idx], cy[idx]
            if self.augment:
                xb = (augment_batch(xb, self.dataset.crop_padding, gen) - self._mean) / self._std
            logits = self.model(xb)
            loss = F.cross_entropy(logits, yb)
            g = torch.autograd.grad(loss, self._params)
            with torch.no_grad():
                if per_layer:  # same arithmetic as below, without the flat gradient
                    if use_momentum:
                        torch._foreach_mul_(self._buf_views, self._param_momentum)
                        torch._foreach_add_(self._buf_views, g)
                        torch._foreach_add_(self._params, self._buf_views, alpha=-lr)
                    else:
                        torch._foreach_add_(self._params, g, alpha=-lr)
                else:
                    torch._foreach_copy_(self._grad_views, g)
                    if correct:
                        algo.correct_gradient(grads, params, x)
                    if wd:
                        grads.add_(params, alpha=wd)
                    if use_momentum:
                        self._buf.mul_(momentum).add_(grads)
                        params.add_(self._buf, alpha=-lr)
                    else:
                        params.add_(grads, alpha=-lr)
                total_loss += loss.detach() * len(yb)
                correct_count += (logits.argmax(1) == yb).sum()
            seen += len(yb)
            steps += 1
        train_loss = float(total_loss) / max(seen, 1)
        if not math.isfinite(train_loss) or not bool(torch.isfinite(params).all()):
            raise DivergenceError(
                f"training diverged at round {round}, client {client} (loss {train_loss}): "
                "lower --lr or --local-epochs"
            )
        torch.sub(params, x, out=self._update)
        return ClientResult(
            round=round,
            client=client,
            num_samples=n,
            steps=steps,
            train_loss=train_loss,
            train_accuracy=float(correct_count) / max(seen, 1),
            update=self._update,
        )

    def _batches(self, n: int, gen: torch.Generator):
        """Yield index tensors: local_epochs passes, or exactly local_steps batches."""
        t = self.cfg.train
        b = min(t.batch_size, n)
        per_epoch = n // b if t.drop_last else math.ceil(n / b)
        if t.local_steps is not None:
            target = t.local_steps
        else:
            target = per_epoch * t.local_epochs
        done = 0
        while done < target:
            perm = torch.randperm(n, generator=gen)
            for k in range(per_epoch):
                if done == target:
                    return
                yield perm[k * b : (k + 1) * b]
                done += 1

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, params: torch.Tensor) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) of ``params`` on the test set."""
        self.flat.params.copy_(params)
        self.model.eval()
        total, correct = 0.0, 0
        for start in range(0, len(self.test_y), EVAL_BATCH):
            xb = self.test_x[start : start + EVAL_BATCH]
            yb = self.test_y[start : start + EVAL_BATCH]
            logits = self.model(xb)
            total += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
        n = len(self.test_y)
        return total / n, correct / n
