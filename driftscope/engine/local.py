"""One client's local training, the same for every engine.

:func:`local_train` takes everything it uses as arguments (a model bound to flat parameters, the
client's data, the algorithm, the global parameters ``x``, the training config and the
(seed, round, client) that name its random streams) and returns the client's
:class:`LocalResult`. The in-process simulator calls it for each client in turn; another engine (a
Flower ``ClientApp``) calls the same function, so both train identically.

The model's parameters and gradients are bound to views of two flat vectors (:class:`FlatParams`),
so loading the starting point and reading the update are each one vector operation. Batches are
cut by a permutation drawn from the (seed, "batches", round, client) stream, with no DataLoader.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from driftscope.data.transforms import augment_batch
from driftscope.errors import DivergenceError
from driftscope.seeding import derive_seed, torch_generator

if TYPE_CHECKING:
    from driftscope.algorithms import Algorithm
    from driftscope.config import TrainConfig
    from driftscope.models.layout import ModelLayout


class FlatParams:
    """Binds ``model``'s parameters and gradients to views of flat vectors ``params`` and ``grads``.

    After binding, ``params.copy_(x)`` loads a model and an in-place step on ``params`` moves every
    layer. ``.grad`` of each parameter is a view of ``grads`` (never call ``model.zero_grad()``,
    which would unbind it). Also holds the reusable buffers of local training: the momentum buffer
    and the update ``y - x``, each with per-parameter views for the per-layer fast path.
    """

    def __init__(
        self, model: nn.Module, layout: ModelLayout, device: torch.device | str | None = None
    ) -> None:
        n = layout.numel
        tensors: list[torch.Tensor] = _trainable(model)
        if device is None:  # the model's own device
            device = tensors[0].device if tensors else torch.device("cpu")
        device = torch.device(device)
        model.to(device)  # buffers and frozen parameters; the trainable ones are rebound below
        tensors = _trainable(model)  # frozen parameters (requires_grad False) are not federated
        self.device = device
        self.model = model
        self.layout = layout
        self.params = torch.empty(n, device=device)
        self.grads = torch.zeros(n, device=device)
        for tensor, info in zip(tensors, layout.params, strict=True):
            a, b = info.offset, info.offset + info.numel
            self.params[a:b].copy_(tensor.detach().reshape(-1))
            tensor.data = self.params[a:b].view(info.shape)
            tensor.grad = self.grads[a:b].view(info.shape)
        self.tensors = tensors
        self.grad_views: list[torch.Tensor] = [t.grad for t in tensors]  # type: ignore[misc]  # set above
        self.momentum_buf = torch.empty(n, device=device)
        self.momentum_views = [
            self.momentum_buf[i.offset : i.offset + i.numel].view(i.shape) for i in layout.params
        ]
        self.update = torch.empty(n, device=device)
        self.has_dropout = any(isinstance(m, nn.Dropout) for m in model.modules())
        self._momentum_of: object = None
        self._momentum: float | torch.Tensor = 0.0
        self._param_momentum: list[float] | None = None
        self._momentum_key: tuple[int, ...] = ()

    def momentum(self, algorithm: Algorithm) -> tuple[float | torch.Tensor, list[float] | None]:
        """The algorithm's momentum, and the same as one number per parameter tensor (or None if
        it varies within one); computed once per algorithm object and ``momentum_version`` (an
        algorithm whose momentum changes mid-run, such as fedpvr_auto's, bumps the version)."""
        key = (algorithm.momentum_version,)
        if self._momentum_of is not algorithm or self._momentum_key != key:
            momentum = algorithm.momentum()
            if isinstance(momentum, torch.Tensor):
                momentum = momentum.to(self.device)
            self._momentum = momentum
            self._param_momentum = _per_param(self._momentum, self.layout)
            self._momentum_of = algorithm
            self._momentum_key = key
        return self._momentum, self._param_momentum


@dataclass(frozen=True)
class Augmentation:
    """Random crop (zero padding ``padding``) and flip of un-normalised images, then normalise."""

    padding: int
    mean: torch.Tensor  # (1, C, 1, 1)
    std: torch.Tensor


@dataclass(frozen=True)
class LocalResult:
    """One client's local training. ``update`` (P,) = y - x and ``params`` (P,) = y are views of
    the :class:`FlatParams` buffers, valid until its next use; ``extra`` is what the algorithm
    uploads besides the update (a control-variate delta), or None."""

    num_samples: int
    steps: int
    train_loss: float
    train_accuracy: float
    update: torch.Tensor
    params: torch.Tensor
    extra: torch.Tensor | None
    # the client's module buffers after training, when the trainer holds them apart from the
    # model (the batched path); None: they are the model's own (local_train)
    buffers: Mapping[str, torch.Tensor] | None = None


def local_train(
    flat: FlatParams,
    data_x: torch.Tensor,
    data_y: torch.Tensor,
    algorithm: Algorithm,
    x: torch.Tensor,
    train: TrainConfig,
    *,
    seed: int,
    round: int,
    client: int,
    augmentation: Augmentation | None = None,
) -> LocalResult:
    """Train client ``client`` from global parameters ``x`` on ``(data_x, data_y)``.

    ``data_x`` is normalised, or raw in [0, 1] when ``augmentation`` is given (augmentation works on
    raw images and normalises each batch). Training runs on ``flat.device``; data held elsewhere
    (host memory) are copied there batch by batch. Batch order and augmentation are drawn on the
    CPU (the index is moved to the device once per epoch), so every device sees the same batches.
    Losses and accuracy are summed on the device and read once per client (no host round trip per
    step). Local SGD with the algorithm's momentum and gradient
    correction; ``algorithm.begin_client`` before and ``algorithm.end_client`` after. Raises
    :class:`~driftscope.errors.DivergenceError` on a non-finite loss or model.
    """
    model = flat.model
    n = len(data_y)
    params, grads = flat.params, flat.grads
    params.copy_(x)
    gen = torch_generator(seed, "batches", round, client)
    if flat.has_dropout:
        torch.manual_seed(derive_seed(seed, "dropout", round, client))
    algorithm.begin_client(client, x)
    correct = algorithm.corrects_gradient
    momentum, param_momentum = flat.momentum(algorithm)
    use_momentum = isinstance(momentum, torch.Tensor) or momentum > 0
    if use_momentum:
        flat.momentum_buf.zero_()
    buf = flat.momentum_buf
    lr, wd = train.lr, train.weight_decay
    model.train()

    device = flat.device
    on_device = data_x.device == device
    loss_dtype = torch.float32 if device.type == "mps" else torch.float64  # mps has no float64
    total_loss = torch.zeros((), dtype=loss_dtype, device=device)
    correct_count = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    steps = 0
    # Per-parameter step: autograd.grad returns fresh gradients, which the step applies layer by
    # layer (torch._foreach_*) without first copying them into the flat gradient; the flat path
    # is for algorithms that work on the flat gradient (gradient correction, weight decay,
    # momentum that varies within a layer). Both do the same arithmetic.
    per_layer = not correct and not wd and param_momentum is not None
    for idx in batches(n, train, gen, device if on_device else None):
        xb, yb = data_x[idx], data_y[idx]
        if not on_device:
            xb = xb.to(device, non_blocking=True)
            yb = yb.to(device, non_blocking=True)
        if augmentation is not None:
            xb = (
                augment_batch(xb, augmentation.padding, gen) - augmentation.mean
            ) / augmentation.std
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        g = torch.autograd.grad(loss, flat.tensors)
        with torch.no_grad():
            if per_layer:
                if use_momentum:
                    assert param_momentum is not None  # per_layer implies it
                    torch._foreach_mul_(flat.momentum_views, param_momentum)
                    torch._foreach_add_(flat.momentum_views, g)
                    torch._foreach_add_(flat.tensors, flat.momentum_views, alpha=-lr)
                else:
                    torch._foreach_add_(flat.tensors, g, alpha=-lr)
            else:
                torch._foreach_copy_(flat.grad_views, g)
                if correct:
                    algorithm.correct_gradient(grads, params, x)
                if wd:
                    grads.add_(params, alpha=wd)
                if use_momentum:
                    buf.mul_(momentum).add_(grads)
                    params.add_(buf, alpha=-lr)
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
    torch.sub(params, x, out=flat.update)
    extra = algorithm.end_client(client, x, params, steps)
    return LocalResult(
        num_samples=n,
        steps=steps,
        train_loss=train_loss,
        train_accuracy=float(correct_count) / max(seen, 1),
        update=flat.update,
        params=params,
        extra=extra,
    )


def batches(
    n: int, train: TrainConfig, gen: torch.Generator, device: torch.device | None = None
) -> Iterator[torch.Tensor]:
    """Index tensors into a client's n samples: local_epochs passes, or exactly local_steps
    batches, each pass a fresh permutation from ``gen`` (a CPU generator), moved to ``device``
    once per pass when given (the same batches on every device)."""
    b = min(train.batch_size, n)
    per_epoch = n // b if train.drop_last else math.ceil(n / b)
    target = train.local_steps if train.local_steps is not None else per_epoch * train.local_epochs
    done = 0
    while done < target:
        perm = torch.randperm(n, generator=gen)
        if device is not None and device.type != "cpu":
            perm = perm.to(device, non_blocking=True)
        for k in range(per_epoch):
            if done == target:
                return
            yield perm[k * b : (k + 1) * b]
            done += 1


def _trainable(model: nn.Module) -> list[torch.Tensor]:
    """The parameters in the layout: the trainable ones, in model order."""
    return [p for p in model.parameters() if p.requires_grad]


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
