"""Which torch device a run trains on, and whether its client data fit there.

``train.device`` is ``auto`` (cuda if available, else mps if available, else cpu), ``cpu``,
``cuda``, ``cuda:N`` or ``mps``. :func:`check_device_name` validates the spelling torch-free (config
time); :func:`resolve_device` turns it into a ``torch.device`` and refuses one that does not exist
or is not available on this machine with a one-line :class:`DeviceError` naming the available
devices.

Data placement rule (:func:`data_fits`): client data go onto the device when their bytes are at most
:data:`DATA_SHARE` of the device's free memory (cuda: ``torch.cuda.mem_get_info``; cpu and mps, whose
memory is the host's, always); otherwise they stay in host memory, pinned on cuda, and each batch is
copied to the device (``non_blocking``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from driftscope.errors import ConfigError

if TYPE_CHECKING:
    import torch

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DATA_SHARE = 0.5  # client data on the device when they take at most this share of its free memory


class DeviceError(ConfigError):
    """A device that is misspelt, does not exist, or is not available here."""


def check_device_name(name: str) -> None:
    """Torch-free spelling check of ``train.device``."""
    if not isinstance(name, str) or not DEVICE_PATTERN.match(name):
        raise DeviceError(
            f"unknown device '{name}': choose auto, cpu, cuda, cuda:N or mps (--device auto)"
        )


def available_devices() -> list[str]:
    """The devices this machine can train on, e.g. ['cpu', 'cuda:0', 'cuda:1']."""
    import torch

    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def resolve_device(name: str) -> torch.device:
    """``train.device`` -> torch.device; an unavailable one is a one-line :class:`DeviceError`."""
    import torch

    check_device_name(name)
    available = available_devices()
    if name == "auto":
        for prefer in ("cuda:0", "mps", "cpu"):
            if prefer in available:
                return torch.device("cuda" if prefer == "cuda:0" else prefer)
    wanted = "cuda:0" if name == "cuda" else name
    if wanted not in available:
        raise DeviceError(
            f"device '{name}' is not available on this machine: available devices are "
            f"{', '.join(available)} (use --device auto)"
        )
    return torch.device(name)


def data_fits(nbytes: int, device: torch.device) -> bool:
    """Whether ``nbytes`` of client data go onto ``device`` (see the module's placement rule)."""
    import torch

    if device.type != "cuda":
        return True
    free, _total = torch.cuda.mem_get_info(device)
    return nbytes <= DATA_SHARE * free


def device_name(device: torch.device) -> str:
    """A device and, for cuda, its model: 'cuda:0 (NVIDIA H100 80GB HBM3)'."""
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)
