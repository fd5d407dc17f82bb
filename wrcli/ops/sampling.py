"""Spatial operators of the degradation model on the high-resolution grid.

The model is ``A = S K``: circular convolution ``K`` with a small per-channel kernel ``k`` followed by
decimation ``S`` (keep pixel ``(s i, s j)``). The kernel's origin is set by ``shift`` exactly as in the
optical transfer function ``p2o`` (pad ``k`` top-left to H×W, roll by ``-shift``, DFT), so per axis

    (A x)_i = Σ_t k_t · x_{(s·i + shift − t) mod H}.

``centre="kernel"`` puts the origin at tap ⌊k/2⌋ (Converse2D/USRNet); ``centre="image"`` at ⌊H/2⌋, the
half-image roll of the published WRC layer. Both operators run as one depthwise (transposed) strided
convolution on a wrapped copy of the map, so no FFT is spent on them.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Centre = Literal["image", "kernel"]


def kernel_shift(centre: Centre, size: tuple[int, int], kernel: tuple[int, int]) -> tuple[int, int]:
    """Origin of the kernel on the H×W grid: ⌊H/2⌋, ⌊W/2⌋ ("image") or ⌊kh/2⌋, ⌊kw/2⌋ ("kernel")."""
    if centre == "image":
        return size[0] // 2, size[1] // 2
    if centre == "kernel":
        return kernel[0] // 2, kernel[1] // 2
    raise ValueError(f"centre must be 'image' or 'kernel', got {centre!r}")


def wrap(x: Tensor, start: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Circular window: ``out[..., i, j] = x[..., (start0 + i) mod H, (start1 + j) mod W]`` of the given size."""
    H, W = x.shape[-2:]
    rows = torch.remainder(torch.arange(size[0], device=x.device) + start[0], H)
    cols = torch.remainder(torch.arange(size[1], device=x.device) + start[1], W)
    return x.index_select(-2, rows).index_select(-1, cols)


def unwrap(z: Tensor, start: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Adjoint of :func:`wrap`: scatter-add the window back onto an H×W map."""
    H, W = size
    rows = torch.remainder(torch.arange(z.shape[-2], device=z.device) + start[0], H)
    cols = torch.remainder(torch.arange(z.shape[-1], device=z.device) + start[1], W)
    out = z.new_zeros(*z.shape[:-2], H, z.shape[-1]).index_add(-2, rows, z)
    return out.new_zeros(*z.shape[:-2], H, W).index_add(-1, cols, out)


def circular_pad(y: Tensor, pad: int) -> Tensor:
    """Circular padding by ``pad`` on every side, valid for any pad (also larger than the map)."""
    h, w = y.shape[-2:]
    return wrap(y, (-pad, -pad), (h + 2 * pad, w + 2 * pad))


def _flipped(kernel: Tensor) -> Tensor:
    return kernel.flip(-2, -1).unsqueeze(1)  # (C, 1, kh, kw): conv2d correlates, A convolves


def decimate(x: Tensor, kernel: Tensor, scale: int, centre: Centre) -> Tensor:
    """``A x``: (B,C,H,W) → (B,C,H/s,W/s) with per-channel kernel (C,kh,kw)."""
    kh, kw = kernel.shape[-2:]
    H, W = x.shape[-2:]
    sh, sw = kernel_shift(centre, (H, W), (kh, kw))
    xw = wrap(x, (sh - kh + 1, sw - kw + 1), (H + kh - 1, W + kw - 1))
    return F.conv2d(xw, _flipped(kernel), stride=scale, groups=x.shape[1])


def decimate_adjoint(r: Tensor, kernel: Tensor, scale: int, centre: Centre) -> Tensor:
    """``Aᵀ r``: zero insertion then correlation with the kernel, (B,C,h,w) → (B,C,s·h,s·w)."""
    kh, kw = kernel.shape[-2:]
    H, W = r.shape[-2] * scale, r.shape[-1] * scale
    sh, sw = kernel_shift(centre, (H, W), (kh, kw))
    z = F.conv_transpose2d(r, _flipped(kernel), stride=scale, groups=r.shape[1], output_padding=scale - 1)
    return unwrap(z, (sh - kh + 1, sw - kw + 1), (H, W))


def alias_mean(z: Tensor, scale: int) -> Tensor:
    """⟨Z⟩↓: mean over the s×s equal blocks of an (…,s·h,s·w) array, i.e. over each alias group
    {(u + a·h, v + b·w)} of a spectrum (the authors' "splits + mean"), → (…,h,w)."""
    *lead, H, W = z.shape
    return z.reshape(*lead, scale, H // scale, scale, W // scale).mean(dim=(-4, -2))


def reverse(z: Tensor) -> Tensor:
    """Index reversal on the last two axes: ``out[k] = z[(−k) mod N]``."""
    return torch.roll(z.flip(-2, -1), shifts=(1, 1), dims=(-2, -1))
