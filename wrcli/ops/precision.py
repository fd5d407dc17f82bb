"""Precision policy of the solvers: the maths always runs in float32 (float64 stays float64).

FFTs reject bfloat16 and fp16 FFTs need power-of-two sizes, so every solver upcasts its inputs, switches
autocast off locally, and casts the result back to the dtype of its main input. This holds under every command's
``--precision bf16`` (:mod:`wrcli.precision`), whose autocast covers the backbone and the upsamplers' layers only.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


@contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Disable autocast for ``device`` inside the block."""
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def upcast(dtype: torch.dtype, *tensors: Tensor | None) -> list[Tensor | None]:
    return [None if t is None else t.to(dtype) for t in tensors]
