"""Memory bounds for upsampling: the bytes a device can still allocate, and the up-front check against them
(an output size too large for the machine is one clear error instead of a crash deep inside an allocation)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from wrcli.errors import WrcError

log = logging.getLogger(__name__)

_CGROUP = Path("/sys/fs/cgroup")


def available_bytes(device: torch.device) -> int | None:
    """Bytes that ``device`` can still allocate, or None when unknown (then nothing is checked).

    CUDA: the driver's free memory plus what PyTorch's caching allocator holds unused. CPU: ``MemAvailable``
    of /proc/meminfo (else ``os.sysconf`` free pages), capped by the cgroup v2 memory limit when one is set.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    known = [v for v in (_meminfo_available(), _cgroup_headroom()) if v is not None]
    return min(known) if known else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_headroom() -> int | None:
    """memory.max − memory.current of this process's cgroup (v2), None without a limit."""
    try:
        rel = Path("/proc/self/cgroup").read_text().strip().rpartition("::")[2].lstrip("/")
        group = _CGROUP / rel
        limit = (group / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((group / "memory.current").read_text()))
    except (OSError, ValueError):
        return None


def format_bytes(n: int) -> str:
    """``n`` bytes in binary units, e.g. 1.5 GiB."""
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024 or unit == "EiB":
            break
        value /= 1024
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"


def check_memory(what: str, estimate: int, device: torch.device, max_memory: int | None = None) -> None:
    """Raise a one-line WrcError when ``estimate`` bytes (what ``what`` needs at once) exceed what ``device`` can
    still allocate, or the ``max_memory`` bytes allowed."""
    limit = available_bytes(device)
    log.debug("%s: about %d bytes at once, %s available, %s allowed", what, estimate, limit, max_memory)
    if max_memory is not None and estimate > max_memory and (limit is None or max_memory <= limit):
        raise WrcError(
            f"{what} needs about {format_bytes(estimate)} at once (estimate), more than the {format_bytes(max_memory)} "
            f"allowed (max_memory); ask for a smaller output size or batch, or allow more"
        )
    if limit is not None and estimate > limit:
        raise WrcError(
            f"{what} needs a tensor of about {format_bytes(estimate)} (estimate), more than the {format_bytes(limit)} "
            f"of memory available on {device}; ask for a smaller output size or batch"
        )
