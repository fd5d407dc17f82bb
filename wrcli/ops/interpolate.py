"""Bilinear interpolation that stays fast on a GPU for many channels on a small grid.

PyTorch's CUDA kernel for contiguous (NCHW) tensors gives one thread per output pixel and loops it over
batch × channels: for ViT-S features at batch 8 (3072 maps of 64×64) that is 4096 threads, and one call took
0.55 ms on an H100. Its channels-last kernel gives one thread per output element and the same formula per
element (the two agree to 1e-6 in tests/test_cuda_kernels.py), in a seventh of the time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bilinear(x: Tensor, size: tuple[int, int] | None = None, *, scale_factor: int | None = None,
             align_corners: bool) -> Tensor:
    """``F.interpolate(x, size or scale_factor, mode="bilinear", align_corners=...)`` for (B,C,H,W) ``x``;
    on CUDA through the channels-last kernel (the input and output copied between layouts)."""
    if not x.is_cuda:
        return F.interpolate(x, size=size, scale_factor=scale_factor, mode="bilinear", align_corners=align_corners)
    out = F.interpolate(x.contiguous(memory_format=torch.channels_last), size=size, scale_factor=scale_factor,
                        mode="bilinear", align_corners=align_corners)
    return out.contiguous()
