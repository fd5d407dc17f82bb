"""glibc's heap: keep freed memory for reuse within a run, give it back to the OS between batches.

Torch-free (the CLI sets the heap up before a command's options are checked, and so before torch loads).
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Callable


@functools.cache
def _libc_function(name: str) -> Callable[..., int] | None:
    """glibc's ``name`` through ctypes, or None where there is no glibc."""
    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):
        return None


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Have glibc serve blocks below ``mmap_threshold`` bytes from its heap and keep up to ``trim_threshold``
    bytes of freed heap instead of handing them back to the OS; True when set.

    By default glibc maps each block of 32 MiB and more (and, until its threshold adapts, of 128 KiB and more)
    freshly and unmaps it when freed, and trims the heap's top: every temporary of a solve or a layer is then
    zeroed page by page by the kernel when it is touched again. On the 2-core KVM machines that costs ~3.5 µs
    per 4 KiB page: 10k page faults (~35 ms) in a batch-1 WRC solve of ~30 ms of arithmetic, 160k at batch 8.
    Memory the program frees stays reusable instead; :func:`trim_memory` still returns it. Every wrc command
    but extract sets this (extract trims after every batch, which faults the next batch in anyway). Left
    alone when the user set glibc's own variables (``MALLOC_*_``, ``GLIBC_TUNABLES``); a no-op off glibc.
    """
    if any(name in os.environ for name in _MALLOC_ENV) or (mallopt := _libc_function("mallopt")) is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def trim_memory() -> None:
    """Return freed heap memory to the OS (glibc ``malloc_trim``; a no-op elsewhere)."""
    if (trim := _libc_function("malloc_trim")) is not None:
        trim(0)
