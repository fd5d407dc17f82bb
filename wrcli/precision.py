"""Compute precision of every command (``--precision auto|fp32|bf16``): one resolver and one autocast context.

``bf16`` runs the backbone and the upsamplers under ``torch.autocast(device.type, dtype=torch.bfloat16)``;
the WRC solves switch autocast off and compute in float32 whatever the setting
(:func:`wrcli.ops.precision.full_precision`). ``auto`` picks bf16 where the hardware has bf16 arithmetic:

- CUDA: ``torch.cuda.is_bf16_supported(including_emulation=False)`` (compute capability ≥ 8.0);
- CPU: oneDNN is built in and takes bf16 (``torch.backends.mkldnn.is_available()``,
  ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``: true on any AVX-512 core, where bf16 is only emulated),
  and the instruction set has bf16 arithmetic: ``amx_bf16`` or ``avx512_bf16`` in
  ``torch.cpu.get_capabilities()`` (cpuinfo as PyTorch reads it at run time, not /proc);
- fp32 elsewhere (MPS, other devices, x86 without those instructions).

The compute precision is separate from a store's features dtype (``--dtype``): both are recorded.
"""

from __future__ import annotations

import contextlib
import functools
import logging

import torch

from wrcli.errors import WrcError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
CPU_BF16_INSTRUCTIONS = ("amx_bf16", "avx512_bf16")  # torch.cpu.get_capabilities() keys


@functools.cache
def cpu_has_bf16() -> bool:
    """True when oneDNN runs bf16 here and the CPU has AMX-BF16 or AVX-512 BF16 instructions."""
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return False
    capabilities = torch.cpu.get_capabilities()
    return any(bool(capabilities.get(name, False)) for name in CPU_BF16_INSTRUCTIONS)


def has_bf16(device: torch.device) -> bool:
    """Whether ``device`` has native bf16 arithmetic (see the module docstring)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_has_bf16()


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` → ``bf16`` where ``device`` has bf16 arithmetic, else ``fp32``; ``fp32``/``bf16`` as given."""
    if name not in PRECISIONS:
        raise WrcError(f"--precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    if name == "auto":
        return "bf16" if has_bf16(device) else "fp32"
    if name == "bf16" and not has_bf16(device):
        log.warning("--precision bf16 on %s, which has no bf16 arithmetic: emulated, likely slower than fp32", device)
    return name


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` for ``bf16`` (a resolved precision); nothing for ``fp32``."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp32":
        return contextlib.nullcontext()
    raise ValueError(f"precision must be resolved to fp32 or bf16, got {precision!r}")
