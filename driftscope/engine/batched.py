"""Many clients trained at once: one batched SGD step for a group of clients (``torch.func``).

In the simulator every client has the same architecture, so a group of clients can train as one
computation: their parameters are the rows of one (G, P) matrix, and each step evaluates the
per-client loss gradient with ``torch.func.vmap(torch.func.grad(...))`` over
``torch.func.functional_call`` of the shared model. :func:`train_clients` yields, client by
client and in the given order, the same :class:`~driftscope.engine.local.LocalResult` that
:func:`~driftscope.engine.local.local_train` returns, to float tolerance:

* each client keeps its own data, its own (seed, "batches", round, client) generator (the same
  permutations and the same augmentation draws, in the same order, as the sequential path), its
  own momentum buffer (per-parameter momentum included), weight decay and the algorithm's
  per-client gradient correction (:meth:`Algorithm.correct_gradients`, batched over rows);
* clients with different numbers of steps or a partial last batch: at each step, the clients
  that still have a batch are grouped by batch size, and each group takes one vmapped step (a
  partial batch's mean loss uses its own size); finished clients' rows are no longer touched.

Results differ from the sequential path only by float32 rounding: a vmapped convolution runs as
one grouped convolution and a vmapped linear layer as one batched matmul, whose reductions add in
another order. Models with dropout train sequentially (:func:`supported`): the sequential path
draws each client's dropout masks from torch's global generator seeded per client, a stream that
vmap (which draws one mask for the whole group) cannot reproduce. Module buffers (BatchNorm running
statistics, :mod:`driftscope.models.buffers`) are batched like the parameters: each client's row starts
from the buffers it is given and is updated in place by its own forward passes (a vmapped
``functional_call`` with the buffers as batched inputs); a BatchNorm with ``momentum=None`` (a
cumulative average, whose factor is read from the step count as a Python number) trains
sequentially. Frozen parameters (not in the layout) are the shared model's own and get no
gradient.

Devices: the group trains on the model's device (``train.device``; the simulator's model is
bound to flat parameters there) exactly as :func:`~driftscope.engine.local.local_train` does: batch
permutations and augmentation draws come from each client's CPU generator (a permutation is moved
to the device once per pass when the client's data are there), data held in host memory are copied
to the device batch by batch, the per-parameter momentum is moved to the device, and losses are
summed on the device (float32 on mps, which has no float64), so every device sees the same batches.

When the batched path is used is :func:`use_batched`: ``train.batched`` "on" / "off", or "auto",
a fixed rule from the measurements in ``benchmarks/batched_clients.py`` (no timing at run time).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from driftscope.data.transforms import augment_batch
from driftscope.engine.local import Augmentation, LocalResult, batches
from driftscope.errors import DivergenceError
from driftscope.seeding import torch_generator

if TYPE_CHECKING:
    from driftscope.algorithms import Algorithm
    from driftscope.config import TrainConfig
    from driftscope.models.layout import ModelLayout

GROUP_BYTES = 64 * 2**20  # clients per group: their (G, P) parameters fit in this many bytes
MAX_GROUP = 32  # measured: 200 clients of 8x8 digits ran 1.5-2x faster in groups of 32 than of 200
AUTO_MIN_CLIENTS = 32  # "auto": batched from this many clients per round ...
AUTO_MAX_PIXELS = 16 * 16  # ... on inputs of at most this many pixels (H x W) ...
AUTO_MAX_PARAMS = 200_000  # ... for models of at most this many parameters


def supported(model: nn.Module) -> bool:
    """Whether ``model`` can train batched: no dropout, no BatchNorm with ``momentum=None``."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return not any(
        isinstance(m, nn.Dropout) or (isinstance(m, _BatchNorm) and m.momentum is None)
        for m in model.modules()
    )


def use_batched(
    train: TrainConfig, model: nn.Module, numel: int, input_shape: tuple[int, ...]
) -> bool:
    """The path a round takes: ``train.batched`` "off"; "on" (when :func:`supported`); or "auto",
    a fixed rule from ``benchmarks/batched_clients.py`` on 2 CPU cores: batched when at least
    :data:`AUTO_MIN_CLIENTS` clients train per round, inputs have at most
    :data:`AUTO_MAX_PIXELS` pixels and the model at most :data:`AUTO_MAX_PARAMS` parameters.
    (Batching saves per-step overhead, which dominates only for small per-sample work: on 8x8
    digits it was faster from 100 clients, on 28x28 inputs the vmapped (grouped) convolutions
    were about 2x slower than one client at a time.)"""
    mode = train.batched
    if mode == "off" or not supported(model):
        return False
    if mode == "on":
        return True
    pixels = math.prod(input_shape[1:])
    return (
        train.clients_per_round >= AUTO_MIN_CLIENTS
        and pixels <= AUTO_MAX_PIXELS
        and numel <= AUTO_MAX_PARAMS
    )


def group_size(numel: int) -> int:
    """Clients per group: bounded by :data:`GROUP_BYTES` of float32 parameters and :data:`MAX_GROUP`."""
    return max(1, min(MAX_GROUP, GROUP_BYTES // (4 * max(numel, 1))))


class _Client:
    """One client's stream of batches on ``device`` (the same draws, in the same order and on the
    same devices, as local_train)."""

    def __init__(
        self,
        data_x: torch.Tensor,
        data_y: torch.Tensor,
        train: TrainConfig,
        augmentation: Augmentation | None,
        seed: int,
        round: int,
        client: int,
        device: torch.device,
    ) -> None:
        self.x, self.y = data_x, data_y
        self.n = len(data_y)
        self.device = device
        self.on_device = data_x.device == device
        self.gen = torch_generator(seed, "batches", round, client)
        self.indices = batches(self.n, train, self.gen, device if self.on_device else None)
        self.augmentation = augmentation
        self.next_idx = next(self.indices, None)

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This client's next batch on the device (augmented and normalised with its own
        generator)."""
        idx = self.next_idx
        assert idx is not None
        xb, yb = self.x[idx], self.y[idx]
        if not self.on_device:  # host memory: copied per batch
            xb = xb.to(self.device, non_blocking=True)
            yb = yb.to(self.device, non_blocking=True)
        aug = self.augmentation
        if aug is not None:
            xb = (augment_batch(xb, aug.padding, self.gen) - aug.mean) / aug.std
        self.next_idx = next(self.indices, None)
        return xb, yb


def train_clients(
    model: nn.Module,
    layout: ModelLayout,
    data: Sequence[tuple[torch.Tensor, torch.Tensor]],
    clients: Sequence[int],
    algorithm: Algorithm,
    x: torch.Tensor,
    train: TrainConfig,
    *,
    seed: int,
    round: int,
    augmentation: Augmentation | None = None,
    group: int | None = None,
    buffers: Sequence[Mapping[str, torch.Tensor]] | None = None,
) -> Iterator[LocalResult]:
    """Train ``clients`` (``data[k]`` is client ``clients[k]``'s ``(data_x, data_y)``) from ``x``
    and the module buffers ``buffers[k]`` (None: the model has none), ``group`` clients at a
    time; yield each client's :class:`LocalResult` in order, with its buffers after training.

    A result's ``update``, ``params`` and ``buffers`` are views valid until the next result is
    drawn from the iterator (as :func:`~driftscope.engine.local.local_train`'s are until its next call).
    """
    size = group or group_size(layout.numel)
    for start in range(0, len(clients), size):
        yield from _train_group(
            model,
            layout,
            data[start : start + size],
            clients[start : start + size],
            algorithm,
            x,
            train,
            seed=seed,
            round=round,
            augmentation=augmentation,
            buffers=None if buffers is None else buffers[start : start + size],
        )


def _train_group(
    model: nn.Module,
    layout: ModelLayout,
    data: Sequence[tuple[torch.Tensor, torch.Tensor]],
    clients: Sequence[int],
    algorithm: Algorithm,
    x: torch.Tensor,
    train: TrainConfig,
    *,
    seed: int,
    round: int,
    augmentation: Augmentation | None,
    buffers: Sequence[Mapping[str, torch.Tensor]] | None = None,
) -> Iterator[LocalResult]:
    from torch.func import functional_call, grad, vmap

    g_all = len(clients)
    names = [name for name, p in model.named_parameters() if p.requires_grad]  # layout order
    infos = layout.params
    device = next(model.parameters()).device  # train.device: where the simulator bound it
    x = x.to(device)  # (the simulator's x is there already)
    params = x.expand(g_all, -1).clone()  # (G, P): row k is client k's model
    # (G, ...) per buffer: row k is client k's buffers, updated in place by its forward passes
    bufs: dict[str, torch.Tensor] = {}
    if buffers:
        bufs = {n: torch.stack([b[n] for b in buffers]).to(device) for n in buffers[0]}
    for client in clients:
        algorithm.begin_client(client, x)
    correct = algorithm.corrects_gradient
    momentum = algorithm.momentum()
    if isinstance(momentum, torch.Tensor):  # per-parameter (P,), built on the CPU
        momentum = momentum.to(device)
    use_momentum = isinstance(momentum, torch.Tensor) or momentum > 0
    buf = torch.zeros_like(params) if use_momentum else None
    lr, wd = train.lr, train.weight_decay
    model.train()

    def loss_fn(
        p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        logits = functional_call(model, {**p, **b}, (xb,))
        loss = F.cross_entropy(logits, yb)
        return loss, (loss, (logits.argmax(-1) == yb).sum())

    step_fn = vmap(grad(loss_fn, has_aux=True))

    streams = [
        _Client(dx, dy, train, augmentation, seed, round, c, device)
        for (dx, dy), c in zip(data, clients, strict=True)
    ]
    loss_dtype = torch.float32 if device.type == "mps" else torch.float64  # as local_train
    total_loss = torch.zeros(g_all, dtype=loss_dtype, device=device)
    correct_count = torch.zeros(g_all, dtype=torch.int64, device=device)
    seen = [0] * g_all
    steps = [0] * g_all
    while True:
        active = [k for k, s in enumerate(streams) if s.next_idx is not None]
        if not active:
            break
        by_size: dict[int, list[int]] = {}
        for k in active:
            by_size.setdefault(len(streams[k].next_idx), []).append(k)  # type: ignore[arg-type]
        for rows in by_size.values():
            pairs = [streams[k].take() for k in rows]
            xb = torch.stack([p[0] for p in pairs])
            yb = torch.stack([p[1] for p in pairs])
            rows_t = torch.tensor(rows, device=device)
            index = None if len(rows) == g_all else rows_t
            y = params if index is None else params.index_select(0, index)
            g = len(rows)
            p_dict = {
                name: y[:, i.offset : i.offset + i.numel].view(g, *i.shape)
                for name, i in zip(names, infos, strict=True)
            }
            b_dict = (
                bufs if index is None else {n: v.index_select(0, index) for n, v in bufs.items()}
            )
            grads_dict, (loss, hits) = step_fn(p_dict, b_dict, xb, yb)
            with torch.no_grad():
                grads = torch.cat([grads_dict[name].reshape(g, -1) for name in names], dim=1)
                if correct:
                    algorithm.correct_gradients([clients[k] for k in rows], grads, y, x)
                if wd:
                    grads.add_(y, alpha=wd)
                if buf is not None:
                    b = buf if index is None else buf.index_select(0, index)
                    b.mul_(momentum).add_(grads)
                    y.add_(b, alpha=-lr)
                    if index is not None:
                        buf.index_copy_(0, index, b)
                else:
                    y.add_(grads, alpha=-lr)
                if index is not None:
                    params.index_copy_(0, index, y)
                    for name, value in b_dict.items():  # updated in place: a copy's rows
                        bufs[name].index_copy_(0, index, value)
                n_b = yb.shape[1]
                total_loss.index_add_(0, rows_t, (loss.detach() * n_b).to(loss_dtype))
                correct_count.index_add_(0, rows_t, hits)
                for k in rows:
                    seen[k] += n_b
                    steps[k] += 1

    update = torch.empty_like(x)
    for k, client in enumerate(clients):
        y = params[k]
        train_loss = float(total_loss[k]) / max(seen[k], 1)
        if not math.isfinite(train_loss) or not bool(torch.isfinite(y).all()):
            raise DivergenceError(
                f"training diverged at round {round}, client {client} (loss {train_loss}): "
                "lower --lr or --local-epochs"
            )
        torch.sub(y, x, out=update)
        extra = algorithm.end_client(client, x, y, steps[k])
        yield LocalResult(
            num_samples=streams[k].n,
            steps=steps[k],
            train_loss=train_loss,
            train_accuracy=float(correct_count[k]) / max(seen[k], 1),
            update=update,
            params=y,
            extra=extra,
            buffers={name: value[k] for name, value in bufs.items()} if buffers else None,
        )
