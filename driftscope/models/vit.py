"""A tiny Vision Transformer for small images (the 8x8 digits): the LoRA scenario's base model.

Patches of ``patch x patch`` pixels become tokens (a linear patch embedding, a learned position
embedding, a class token), ``depth`` pre-norm Transformer blocks follow, and the class token's
final state goes through ``head``. Every projection is its own ``nn.Linear`` (attention ``q``,
``k``, ``v``, ``proj``; MLP ``fc1``, ``fc2``), so LoRA adapters (PEFT's ``target_modules``) can
name them: :data:`LORA_TARGETS`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LORA_TARGETS", "TinyViT"]

#: the projections LoRA adapts: attention (query, key, value, output) and the MLP's two layers
LORA_TARGETS = ("q", "k", "v", "proj", "fc1", "fc2")


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.heads

        def split(z: torch.Tensor) -> torch.Tensor:
            return z.view(b, t, h, d // h).transpose(1, 2)

        out = nn.functional.scaled_dot_product_attention(
            split(self.q(x)), split(self.k(x)), split(self.v(x))
        )
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    """ViT over ``(N, C, H, W)`` images; ``head`` is the classifier (FedPVR's head)."""

    head_prefixes = ("head",)

    def __init__(
        self,
        image: int = 8,
        channels: int = 1,
        patch: int = 2,
        dim: int = 32,
        depth: int = 2,
        heads: int = 4,
        hidden: int = 64,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if image % patch:
            raise ValueError(f"image size {image} is not a multiple of the patch size {patch}")
        self.patch = patch
        tokens = (image // patch) ** 2
        self.embed = nn.Linear(channels * patch * patch, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch
        n, c = x.shape[:2]
        # (N, C, H, W) -> (N, tokens, C * p * p), row-major patches
        tokens = (
            x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(n, -1, c * p * p)
        )
        z = torch.cat([self.cls.expand(n, -1, -1), self.embed(tokens)], dim=1) + self.pos
        for block in self.blocks:
            z = block(z)
        return self.head(self.norm(z)[:, 0])
