"""The LoRA scenario's model: a :class:`~driftscope.models.vit.TinyViT` pretrained centrally,
then wrapped with Hugging Face PEFT's LoRA adapters for federated fine-tuning.

* :func:`split_pretraining`: the digits' training set cut once (a fixed seed) into a pretraining
  pool and the federation's share; the base model sees only the pool's digits 0-4, so the
  federation has new classes to learn (5-9) as well as a shift in the known ones.
* :func:`pretrained_base`: the base's ``state_dict``, trained on the pool (seeded Adam) and cached
  as plain tensors (``torch.save`` of the state dict, read back with ``weights_only=True``) in
  ``<data dir>/lora/``.
* :func:`lora_factory`: a zero-argument factory for ``driftscope.train(model=...)``: the base with
  its pretrained weights, LoRA adapters (``peft.inject_adapter_in_model``) on the attention and
  MLP projections, every base parameter frozen and the classifier ``head`` trainable.

``peft`` is an optional extra (``pip install -e '.[lora]'``); without it the factory is a one-line
:class:`~driftscope.errors.ConfigError`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from driftscope.errors import ConfigError
from driftscope.models.vit import LORA_TARGETS, TinyViT

__all__ = [
    "PretrainConfig",
    "lora_factory",
    "pretrained_base",
    "require_peft",
    "split_pretraining",
]

SPLIT_SEED = 0  # the pretraining pool is the same for every run seed (a published checkpoint)


@dataclass(frozen=True)
class PretrainConfig:
    """The base model and its central pretraining (part of the cache file's name)."""

    pool_share: float = 0.5  # share of the training set held out for pretraining
    classes: int = 5  # pretraining sees digits 0 .. classes - 1 of the pool
    epochs: int = 40
    lr: float = 3e-3
    batch_size: int = 32
    seed: int = 0
    dim: int = 32
    depth: int = 2
    heads: int = 4
    hidden: int = 64
    patch: int = 2

    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def build(self, num_classes: int = 10) -> TinyViT:
        return TinyViT(
            patch=self.patch,
            dim=self.dim,
            depth=self.depth,
            heads=self.heads,
            hidden=self.hidden,
            num_classes=num_classes,
        )


def require_peft() -> None:
    """A one-line error when ``peft`` is not installed."""
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ConfigError(
            "the LoRA scenario needs Hugging Face PEFT: pip install -e '.[lora]'"
        ) from None


def split_pretraining(num_train: int, cfg: PretrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-set rows of the pretraining pool and of the federation (a fixed permutation)."""
    perm = torch.randperm(num_train, generator=torch.Generator().manual_seed(SPLIT_SEED))
    cut = round(cfg.pool_share * num_train)
    return perm[:cut].sort().values, perm[cut:].sort().values


def pretrained_base(
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: PretrainConfig,
    cache_dir: str | os.PathLike,
    log: Callable[[str], None] | None = None,
) -> dict[str, torch.Tensor]:
    """The base model's pretrained ``state_dict``: loaded from ``cache_dir`` (``weights_only``) if
    there, else trained on ``(x, y)`` restricted to classes ``< cfg.classes`` and saved there.
    ``x`` are the pool's (normalised) images, ``y`` their labels."""
    path = Path(cache_dir) / "lora" / f"tinyvit_digits_{cfg.key()}.pt"
    if path.exists():
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as err:  # damaged, truncated, or not a tensor file
            raise ConfigError(
                f"{path} cannot be read ({type(err).__name__}): delete it to pretrain again"
            ) from None
        expected = cfg.build().state_dict()
        if not isinstance(state, dict) or {k: tuple(v.shape) for k, v in state.items()} != {
            k: tuple(v.shape) for k, v in expected.items()
        }:
            raise ConfigError(
                f"{path} is not the base model's state dict: delete it to pretrain again"
            )
        return state
    keep = y < cfg.classes
    x, y = x[keep], y[keep]
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = cfg.build()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    model.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), cfg.batch_size):
            rows = order[start : start + cfg.batch_size]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[rows]), y[rows])
            loss.backward()
            opt.step()
        if log is not None and (epoch + 1) % 10 == 0:
            log(f"pretraining epoch {epoch + 1}/{cfg.epochs}: loss {loss.item():.3f}")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return state


def lora_factory(
    base: dict[str, torch.Tensor],
    cfg: PretrainConfig,
    rank: int = 4,
    alpha: int = 8,
    targets: tuple[str, ...] = LORA_TARGETS,
) -> Callable[[], nn.Module]:
    """A factory of the LoRA model: the pretrained base (frozen), PEFT LoRA adapters of ``rank``
    on ``targets`` (initialised from torch's RNG: A Kaiming-uniform, B zero) and the trainable
    ``head``. Parameter names: ``blocks.0.attn.q.lora_A.default.weight``, ..., ``head.weight``."""
    require_peft()

    def build() -> nn.Module:
        import peft

        base_model = cfg.build()
        base_model.load_state_dict(base)
        config = peft.LoraConfig(
            r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets)
        )
        model = peft.inject_adapter_in_model(config, base_model)
        for name, p in model.named_parameters():
            p.requires_grad_(".lora_" in name or name.startswith("head."))
        return model

    build.name = f"tinyvit_lora_r{rank}"  # type: ignore[attr-defined]  # the run file's model name
    return build
