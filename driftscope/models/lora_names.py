"""PEFT's LoRA parameter names: which names are LoRA factors, and their short labels.

Hugging Face PEFT names the factors ``<module>.lora_A.<adapter>.weight`` and
``<module>.lora_B.<adapter>.weight``. Standard library only: the model layout (torch-free) and
the LoRA metrics (numpy) both read names through this module.
"""

from __future__ import annotations

import re

__all__ = ["FACTOR", "factor_label", "is_lora_factor"]

FACTOR = re.compile(r"^(?P<module>.+)\.lora_(?P<factor>[AB])\.(?P<adapter>[^.]+)(?P<rest>\..+)?$")


def is_lora_factor(name: str) -> bool:
    """Whether ``name`` is a PEFT LoRA factor (``....lora_A.<adapter>[.weight]`` or ``lora_B``)."""
    return FACTOR.match(name) is not None


def factor_label(name: str) -> str | None:
    """A LoRA factor's short label, ``<module>.A`` or ``<module>.B`` (``.<adapter>`` added unless
    the adapter is PEFT's ``default``); None for any other name."""
    m = FACTOR.match(name)
    if m is None:
        return None
    adapter = "" if m["adapter"] == "default" else f".{m['adapter']}"
    return f"{m['module']}.{m['factor']}{adapter}{m['rest'] or ''}"
