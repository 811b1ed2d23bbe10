"""The C heap's bookkeeping (glibc), in one place: how much is in use or held free, and trimming.

A round frees its temporaries (Gram products, copies of the stored updates, CKA kernels, the
evaluation's activations), but glibc returns only the top of its heap by itself, and it raises its
mmap threshold after large frees, so freed blocks stay resident: RSS wandered tens of MiB above the
memory in use at 1,000 clients (``benchmarks/many_clients.py``). The trainer calls
:func:`release_free_heap` after every committed round and the recorder after a CKA round (which the
Flower engine's rounds also pass through). Elsewhere than glibc every function is a no-op.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

__all__ = ["HEAP_SLACK", "free_heap_bytes", "heap_in_use_bytes", "release_free_heap"]

HEAP_SLACK = 16 << 20  # freed heap bytes glibc may keep between rounds


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


_libc: Any = None


def _glibc() -> Any:
    """glibc with ``mallinfo2`` (>= 2.33) typed, or False."""
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL("libc.so.6")
                libc.mallinfo2.restype = _MallInfo2
                _libc = libc
            except (OSError, AttributeError):
                pass
    return _libc


def free_heap_bytes() -> int:
    """Bytes glibc holds freed in its heaps (``mallinfo2().fordblks``; 0 without glibc)."""
    libc = _glibc()
    return int(libc.mallinfo2().fordblks) if libc else 0


def heap_in_use_bytes() -> int | None:
    """Bytes the C heap has handed out and not got back (``uordblks + hblkhd``); None without glibc."""
    libc = _glibc()
    if not libc:
        return None
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def release_free_heap(slack: int = HEAP_SLACK) -> None:
    """Give freed heap back to the OS (``malloc_trim``) when glibc keeps more than ``slack`` bytes
    of it: a trim costs a few ms over a heap of ~300 MiB, so it runs only when worth it."""
    libc = _glibc()
    if libc and free_heap_bytes() > slack:
        libc.malloc_trim(0)
