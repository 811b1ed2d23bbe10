"""Model registry, and the split of a model's parameters into layers, body and head.

Every registered model declares its *head*: the classifier's parameters, named by module prefixes
(``HEAD_PREFIXES``). :func:`model_layout` resolves the head (the model's own, or a user override by
parameter-name patterns or "the last k layers") into a :class:`ModelLayout` that algorithms,
recorder and analysis share: parameters and layers in model order, each marked head or body.

A *layer* is a module that owns parameters directly (a Conv2d or Linear: weight + bias).

Registry (``MODELS``):

* ``small_cnn`` (default): 4 conv layers (16, 32, pool, 64, 64, pool, global average) and a 3-layer
  linear head (64, 64, classes), like VGG-11 in miniature; fits 8x8 digits and 28x28 or 32x32 images.
* ``vgg11``: the FedPVR paper's VGG-11 without BatchNorm for 32x32 inputs: 9,750,922 parameters for
  10 classes; head = the 3 linear layers.
* ``mlp``: two hidden layers of 200; head = the output layer.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from driftscope.errors import ConfigError


def he_init(model: nn.Module) -> nn.Module:
    """Kaiming-normal weights (fan-in, ReLU) and zero biases for every conv and linear layer.

    torch's default init scales ReLU networks without BatchNorm down layer by layer; on the small
    models it leaves FedAvg on a plateau at chance for tens of rounds.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return model


class SmallCNN(nn.Module):
    """Conv body (16, 32, M, 64, 64, M, global average pool) and a 3-layer linear head.

    Initialised with :func:`he_init`.
    """

    head_prefixes = ("classifier",)

    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4 * w, 4 * w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(4 * w, 4 * w),
            nn.ReLU(),
            nn.Linear(4 * w, 4 * w),
            nn.ReLU(),
            nn.Linear(4 * w, num_classes),
        )
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


VGG11_CONFIG: tuple[int | str, ...] = (
    64,
    "M",
    128,
    "M",
    256,
    256,
    "M",
    512,
    512,
    "M",
    512,
    512,
    "M",
)


class VGG11(nn.Module):
    """VGG-11 without BatchNorm for 32x32 inputs, as in the FedPVR reference code.

    features: 8 conv layers (3x3, padding 1, bias, ReLU) with 5 max-pools -> (B, 512, 1, 1);
    classifier: Dropout, Linear(512, 512), ReLU, Dropout, Linear(512, 512), ReLU, Linear(512, K).
    """

    head_prefixes = ("classifier",)

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in VGG11_CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
                channels = int(item)
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """Flatten, Linear(in, 200), ReLU, Linear(200, 200), ReLU, Linear(200, K); head = output layer."""

    head_prefixes = ("classifier",)

    def __init__(self, in_features: int, num_classes: int, hidden: int = 200) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(hidden, num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _small_cnn(shape: tuple[int, int, int], k: int) -> nn.Module:
    return SmallCNN(shape[0], k)


def _vgg11(shape: tuple[int, int, int], k: int) -> nn.Module:
    if shape[1:] != (32, 32):
        raise ConfigError(
            f"vgg11 needs 32x32 inputs but the dataset gives {shape[1]}x{shape[2]}: "
            "use it with cifar10/cifar100, or --model small_cnn"
        )
    return VGG11(shape[0], k)


def _mlp(shape: tuple[int, int, int], k: int) -> nn.Module:
    return MLP(shape[0] * shape[1] * shape[2], k)


MODELS: dict[str, Callable[[tuple[int, int, int], int], nn.Module]] = {
    "small_cnn": _small_cnn,
    "vgg11": _vgg11,
    "mlp": _mlp,
}


def check_model_name(name: str) -> None:
    if name not in MODELS:
        raise ConfigError(f"unknown model '{name}': choose one of {', '.join(MODELS)}")


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Instantiate a registered model (initialisation uses torch's global RNG: seed it first)."""
    check_model_name(name)
    return MODELS[name](input_shape, num_classes)


# ---------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class ParamInfo:
    """One parameter tensor: its slot ``[offset, offset + numel)`` in the flat parameter vector."""

    name: str
    layer: str
    group: str  # "head" or "body"
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class LayerInfo:
    """A module that owns parameters. ``label`` is a short display name (conv1, fc2, ...)."""

    name: str
    label: str
    kind: str
    group: str
    params: tuple[str, ...]
    numel: int


@dataclass(frozen=True)
class ModelLayout:
    """Parameters and layers of a model in order, split into head and body."""

    params: tuple[ParamInfo, ...]
    layers: tuple[LayerInfo, ...]

    @property
    def numel(self) -> int:
        return sum(p.numel for p in self.params)

    @property
    def head_numel(self) -> int:
        return sum(p.numel for p in self.params if p.group == "head")

    @property
    def head_share(self) -> float:
        return self.head_numel / self.numel

    def head_mask(self) -> torch.Tensor:
        """Bool (numel,) over the flat parameter vector, True on head entries."""
        mask = torch.zeros(self.numel, dtype=torch.bool)
        for p in self.params:
            if p.group == "head":
                mask[p.offset : p.offset + p.numel] = True
        return mask

    def param(self, name: str) -> ParamInfo:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)


_KIND_LABEL = {"Conv2d": "conv", "Conv1d": "conv", "Linear": "fc"}


def model_layout(
    model: nn.Module, head: Sequence[str] = (), head_last_k: int | None = None
) -> ModelLayout:
    """Resolve body/head for ``model``.

    ``head``: fnmatch patterns over parameter names (``"classifier.*"``); ``head_last_k``: the last
    k parameterised layers; neither: the model's own ``head_prefixes`` (empty head if it has none).
    A pattern that matches no parameter is an error naming the parameters that exist.
    """
    owners: list[tuple[str, nn.Module]] = [
        (name, module)
        for name, module in model.named_modules()
        if any(True for _ in module.parameters(recurse=False))
    ]
    names = [n for n, _ in model.named_parameters()]
    if head:
        for pattern in head:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                raise ConfigError(
                    f"head pattern '{pattern}' matches no parameter; parameters are "
                    f"{', '.join(names[:6])}{', ...' if len(names) > 6 else ''}"
                )
        in_head = {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in head)}
    elif head_last_k is not None:
        if head_last_k > len(owners):
            raise ConfigError(
                f"head_last_k={head_last_k} but the model has only {len(owners)} layers"
            )
        chosen = owners[len(owners) - head_last_k :] if head_last_k else []
        in_head = {
            f"{m}.{p}" if m else p
            for m, mod in chosen
            for p, _ in mod.named_parameters(recurse=False)
        }
    else:
        prefixes = tuple(getattr(model, "head_prefixes", ()))
        in_head = {n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)}

    params: list[ParamInfo] = []
    layers: list[LayerInfo] = []
    offset = 0
    counters: dict[str, int] = {}
    seen: set[int] = set()
    for mod_name, module in owners:
        pnames: list[str] = []
        groups: set[str] = set()
        for pname, tensor in module.named_parameters(recurse=False):
            if id(tensor) in seen:  # shared (tied) parameter: count once
                continue
            seen.add(id(tensor))
            full = f"{mod_name}.{pname}" if mod_name else pname
            group = "head" if full in in_head else "body"
            groups.add(group)
            params.append(ParamInfo(full, mod_name, group, tuple(tensor.shape), offset))
            offset += tensor.numel()
            pnames.append(full)
        if not pnames:
            continue
        kind = type(module).__name__
        short = _KIND_LABEL.get(kind, "layer")
        counters[short] = counters.get(short, 0) + 1
        layer_group = "head" if groups == {"head"} else "body" if groups == {"body"} else "mixed"
        numel = sum(p.numel for p in params[-len(pnames) :])
        layers.append(
            LayerInfo(
                mod_name, f"{short}{counters[short]}", kind, layer_group, tuple(pnames), numel
            )
        )
    return ModelLayout(tuple(params), tuple(layers))
