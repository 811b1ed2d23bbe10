"""Model registry, and the split of a model's parameters into layers, body and head.

``MODELS`` is a registry of torch-free :class:`ModelSpec` records; ``spec.build(input_shape,
num_classes)`` imports the architectures (:mod:`driftscope.models.nets`, torch) only when called, so the
CLI and config validation can list and check names without importing torch.

Every registered model declares its *head*: the classifier's parameters, named by module prefixes
(``head_prefixes``). :func:`model_layout` resolves the head (the model's own, or a user override by
parameter-name patterns or "the last k layers") into a :class:`ModelLayout` that algorithms,
recorder and analysis share: parameters and layers in model order, each marked head or body.

A *layer* is a module that owns parameters directly (a Conv2d or Linear: weight + bias).

Registry (``MODELS``):

* ``small_cnn`` (default): 4 conv layers (16, 32, pool, 64, 64, pool, global average) and a 3-layer
  linear head (64, 64, classes), like VGG-11 in miniature; fits 8x8 digits and 28x28 or 32x32 images.
* ``vgg11``: the FedPVR paper's VGG-11 without BatchNorm for 32x32 inputs: 9,750,922 parameters for
  10 classes; head = the 3 linear layers; the reference code's initialisation.
* ``mlp``: two hidden layers of 200; head = the output layer.
* ``cnn1d``: ``small_cnn`` in one dimension for 1-D signals (``mnist1d``), in
  :mod:`driftscope.models.nets_1d`.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from driftscope.errors import ConfigError
from driftscope.models.layout import LayerInfo, ModelLayout, ParamInfo
from driftscope.models.lora_names import factor_label
from driftscope.registry import Registry

if TYPE_CHECKING:
    from torch import nn

Shape = tuple[int, ...]  # one sample's shape: (C, H, W) for images, (F,) for rows


@dataclass(frozen=True)
class ModelSpec:
    """A registered model, torch-free: ``factory`` runs (and imports torch) only in :meth:`build`."""

    name: str
    description: str
    factory: Callable[[Shape, int], nn.Module]

    def build(self, input_shape: Shape, num_classes: int) -> nn.Module:
        """Instantiate (initialisation uses torch's global RNG: seed it first)."""
        return self.factory(tuple(int(d) for d in input_shape), num_classes)

    def num_params(self, input_shape: Shape, num_classes: int) -> int:
        """Parameter count, from a build on the meta device (no memory, no RNG draws)."""
        import torch

        with torch.device("meta"):
            model = self.build(input_shape, num_classes)
        return sum(p.numel() for p in model.parameters())


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a model to :data:`MODELS` (its name must be new)."""
    return MODELS.register(spec.name, spec)


def _small_cnn(shape: Shape, k: int) -> nn.Module:
    from driftscope.models.nets import SmallCNN

    return SmallCNN(shape[0], k)


def _vgg11(shape: Shape, k: int) -> nn.Module:
    from driftscope.models.nets import VGG11

    if shape[1:] != (32, 32):
        raise ConfigError(
            f"vgg11 needs 32x32 inputs but the dataset gives {shape[1]}x{shape[2]}: "
            "use it with cifar10/cifar100, or --model small_cnn"
        )
    return VGG11(shape[0], k)


def _mlp(shape: Shape, k: int) -> nn.Module:
    from driftscope.models.nets import MLP

    return MLP(math.prod(shape), k)


def _cnn1d(shape: Shape, k: int) -> nn.Module:
    from driftscope.models.nets_1d import build_cnn1d

    return build_cnn1d(shape, k)


register_model(ModelSpec("small_cnn", "4 conv layers + 3-layer linear head (He init)", _small_cnn))
register_model(ModelSpec("vgg11", "VGG-11 without BatchNorm, 32x32 inputs (the paper's)", _vgg11))
register_model(ModelSpec("mlp", "2 hidden layers of 200 + linear output", _mlp))
register_model(ModelSpec("cnn1d", "1-D CNN for signals (mnist1d) + 3-layer linear head", _cnn1d))


def check_model_name(name: str) -> None:
    MODELS.get(name)


def check_model_fits(
    name: str, input_shape: Shape, num_classes: int, dataset: str = "the dataset"
) -> None:
    """Refuse, in one line, a model that cannot take ``input_shape`` inputs: it is built on the
    meta device (no memory, no RNG draws) and a batch of two goes through it, so a shape error
    shows here, before any data is trained or any file is written, not in round 0."""
    import torch

    from driftscope.data import DATASETS

    spec = MODELS.get(name)
    shape = tuple(int(s) for s in input_shape)
    fallback = DATASETS.get(dataset).default_model if dataset in DATASETS else None
    hint = (
        f"use --model {fallback} ({dataset}'s default model)"
        if fallback and fallback != name
        else f"choose another --model ({', '.join(n for n in MODELS.names() if n != name)})"
    )
    try:
        try:
            with torch.device("meta"):
                out = spec.build(shape, num_classes)(torch.empty(2, *shape))
        except (RuntimeError, ValueError, NotImplementedError):
            # some operations have no meta kernel: the same check on the CPU, with zeros for
            # inputs, leaving torch's global RNG as it was (the run's initialisation uses it)
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                out = spec.build(shape, num_classes)(torch.zeros(2, *shape))
    except ConfigError:
        raise  # the model's own one-line check (e.g. vgg11's 32x32)
    except (RuntimeError, ValueError, NotImplementedError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"model {name} does not fit {dataset}'s inputs {'x'.join(map(str, shape))} "
            f"({reason}): {hint}"
        ) from None
    if isinstance(out, torch.Tensor) and tuple(out.shape) != (2, num_classes):
        raise ConfigError(
            f"model {name} gives outputs shaped {tuple(out.shape)[1:]} for {dataset}, not "
            f"({num_classes},) class scores: {hint}"
        )


def build_model(name: str, input_shape: Shape, num_classes: int) -> nn.Module:
    """Instantiate a registered model (initialisation uses torch's global RNG: seed it first)."""
    return MODELS.get(name).build(input_shape, num_classes)


# ---------------------------------------------------------------------------------------- layout
# ParamInfo, LayerInfo and ModelLayout are the torch-free driftscope.models.layout's
_KIND_LABEL = {"Conv2d": "conv", "Conv1d": "conv", "Linear": "fc"}
ROOT_KIND = "Parameter"  # the kind of a layer made of one parameter owned by the root module


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``model``'s federated parameters in model order: those with ``requires_grad`` (a frozen
    parameter is part of the model but not of federated training)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def model_layout(
    model: nn.Module, head: Sequence[str] = (), head_last_k: int | None = None
) -> ModelLayout:
    """Resolve body/head for ``model``.

    Only trainable parameters (``requires_grad``) are in the layout: frozen ones are neither sent,
    averaged nor recorded. A layer is a module that owns trainable parameters directly, named by
    its module name; a parameter owned by the root module (``self.pos = nn.Parameter(...)``) is a
    layer of its own, named by the parameter (kind ``"Parameter"``). Labels are short
    (``conv1``, ``fc3``, counted per kind) when every layer is a Conv or Linear layer and no short
    label names another layer; LoRA factors (PEFT's ``<module>.lora_A.default``) as ``<module>.A``
    and ``<module>.B``; otherwise every label is the layer's name (``layer1.0.bn1``).

    ``head``: fnmatch patterns over parameter names (``"classifier.*"``); ``head_last_k``: the last
    k parameterised layers; neither: the model's own ``head_prefixes`` (empty head if it has none).
    A pattern that matches no parameter is an error naming the parameters that exist.
    """
    # (layer name, owning module name, [(param name, tensor)]) in model order
    owners: list[tuple[str, str, str, list[tuple[str, nn.Parameter]]]] = []
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        own: list[tuple[str, nn.Parameter]] = []
        for pname, tensor in module.named_parameters(recurse=False):
            if not tensor.requires_grad or id(tensor) in seen:  # frozen, or tied: count once
                continue
            seen.add(id(tensor))
            own.append((f"{mod_name}.{pname}" if mod_name else pname, tensor))
        if not own:
            continue
        if mod_name:
            owners.append((mod_name, mod_name, type(module).__name__, own))
        else:  # the root's own parameters: one layer each, named by the parameter
            owners.extend((full, "", ROOT_KIND, [(full, t)]) for full, t in own)
    names = [full for *_, own in owners for full, _ in own]
    if head:
        for pattern in head:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                raise ConfigError(
                    f"head pattern '{pattern}' matches no parameter; trainable parameters are "
                    f"{', '.join(names[:6])}{', ...' if len(names) > 6 else ''}"
                )
        in_head = {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in head)}
    elif head_last_k is not None:
        if head_last_k > len(owners):
            raise ConfigError(
                f"head_last_k={head_last_k} but the model has only {len(owners)} layers"
            )
        chosen = owners[len(owners) - head_last_k :] if head_last_k else []
        in_head = {full for *_, own in chosen for full, _ in own}
    else:
        prefixes = tuple(getattr(model, "head_prefixes", ()))
        in_head = {n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)}

    params: list[ParamInfo] = []
    layers: list[LayerInfo] = []
    offset = 0
    for layer_name, mod_name, kind, own in owners:
        groups: set[str] = set()
        for full, tensor in own:
            group = "head" if full in in_head else "body"
            groups.add(group)
            params.append(ParamInfo(full, mod_name, group, tuple(tensor.shape), offset))
            offset += tensor.numel()
        layer_group = "head" if groups == {"head"} else "body" if groups == {"body"} else "mixed"
        numel = sum(p.numel for p in params[-len(own) :])
        pnames = tuple(full for full, _ in own)
        layers.append(LayerInfo(layer_name, layer_name, kind, layer_group, pnames, numel))
    return ModelLayout(tuple(params), _short_labels(layers))


def _short_labels(layers: list[LayerInfo]) -> tuple[LayerInfo, ...]:
    """``conv1``, ``fc3``, ... (counted per kind) when every layer is a Conv or Linear layer and
    no short label is another layer's name; a model with LoRA factors (PEFT's names): the factors
    as ``<module>.A`` / ``<module>.B``, every other layer by its name; else the layers as they
    are (label = name)."""
    lora = [factor_label(layer.name) for layer in layers]
    if any(lora):
        labels = [short or layer.name for short, layer in zip(lora, layers, strict=True)]
    elif not layers or not all(layer.kind in _KIND_LABEL for layer in layers):
        return tuple(layers)
    else:
        counters: dict[str, int] = {}
        labels = []
        for layer in layers:
            short = _KIND_LABEL[layer.kind]
            counters[short] = counters.get(short, 0) + 1
            labels.append(f"{short}{counters[short]}")
    names = {layer.name: k for k, layer in enumerate(layers)}
    if any(names.get(label, k) != k for k, label in enumerate(labels)):
        return tuple(layers)  # a short label would name another layer
    return tuple(
        LayerInfo(layer.name, label, layer.kind, layer.group, layer.params, layer.numel)
        for layer, label in zip(layers, labels, strict=True)
    )


#: algorithms whose training depends on the declared head (fedpvr_auto chooses its own layers)
HEAD_ALGORITHMS = ("fedpvr",)


def check_head(
    algorithm: str, layout: ModelLayout, head: Sequence[str], last_k: int | None
) -> None:
    """A head-based algorithm on a model that declares no head (no ``head_prefixes``, no
    ``model.head`` / ``model.head_last_k``) is an error, not FedAvg in disguise. An explicitly
    empty head (``head_last_k = 0``) is allowed."""
    if algorithm not in HEAD_ALGORITHMS or head or last_k is not None or layout.head_numel:
        return
    last = layout.layers[-1].name if layout.layers else "?"
    raise ConfigError(
        f"{algorithm} needs the model's head, and this model declares none: give --head-last-k 1 "
        f"(model.head_last_k, here layer '{last}') or --head PATTERN (model.head), or set "
        "head_prefixes on the model"
    )
