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


def _extend(x: Tensor, dim: int, start: int, size: int) -> Tensor:
    """``out[i] = x[(start + i) mod N]`` along ``dim`` for i < size, from contiguous slices of x."""
    n = x.shape[dim]
    pieces, pos = [], start % n
    while size > 0:
        take = min(n - pos, size)
        pieces.append(x.narrow(dim, pos, take))
        size, pos = size - take, 0
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim)


def _fold(z: Tensor, dim: int, start: int, n: int) -> Tensor:
    """Adjoint of :func:`_extend`: add ``z[i]`` onto ``out[(start + i) mod n]`` along ``dim``."""
    shape = list(z.shape)
    shape[dim] = n
    out = z.new_zeros(shape)
    pos, done = start % n, 0
    while done < z.shape[dim]:
        take = min(n - pos, z.shape[dim] - done)
        out.narrow(dim, pos, take).add_(z.narrow(dim, done, take))
        done, pos = done + take, 0
    return out


def wrap(x: Tensor, start: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Circular window: ``out[..., i, j] = x[..., (start0 + i) mod H, (start1 + j) mod W]`` of the given size."""
    return _extend(_extend(x, -2, start[0], size[0]), -1, start[1], size[1])


def unwrap(z: Tensor, start: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Adjoint of :func:`wrap`: scatter-add the window back onto an H×W map."""
    return _fold(_fold(z, -2, start[0], size[0]), -1, start[1], size[1])


def circular_pad(y: Tensor, pad: int) -> Tensor:
    """Circular padding by ``pad`` on every side, valid for any pad (also larger than the map)."""
    h, w = y.shape[-2:]
    return wrap(y, (-pad, -pad), (h + 2 * pad, w + 2 * pad))


def _flipped(kernel: Tensor) -> Tensor:
    return kernel.flip(-2, -1).unsqueeze(1)  # (C, 1, kh, kw): conv2d correlates, A convolves


def decimate(x: Tensor, kernel: Tensor, scale: int, centre: Centre) -> Tensor:
    """``A x``: (B,C,H,W) → (B,C,H/s,W/s) with per-channel kernel (C,kh,kw) no larger than the grid.

    Per axis, with shift − k + 1 = s·M + e (0 ≤ e < s) and a the flipped kernel,
    (A x)_i = Σ_δ a_δ x[s·(i + M) + e + δ]: the stride-s convolution of x padded circularly by f = −e mod s
    in front (so that it starts on a block) and e + k − s behind, from output c = [e > 0] on, rolled by M
    on the low-resolution grid. No padding at all where e = 0 and k ≤ s (``centre="kernel"``, k ≤ 2).
    """
    kh, kw = kernel.shape[-2:]
    H, W = x.shape[-2:]
    h, w = H // scale, W // scale
    sh, sw = kernel_shift(centre, (H, W), (kh, kw))
    (m1, e1), (m2, e2) = divmod(sh - kh + 1, scale), divmod(sw - kw + 1, scale)
    pad = (-e2 % scale, max(e2 + kw - scale, 0), -e1 % scale, max(e1 + kh - scale, 0))
    xp = F.pad(x, pad, mode="circular") if any(pad) else x
    z = F.conv2d(xp, _flipped(kernel), stride=scale, groups=x.shape[1])
    c1, c2 = int(e1 > 0), int(e2 > 0)
    return wrap(z[..., c1 : c1 + h, c2 : c2 + w], (m1, m2), (h, w))


def decimate_adjoint(r: Tensor, kernel: Tensor, scale: int, centre: Centre) -> Tensor:
    """``Aᵀ r``: zero insertion then correlation with the kernel, (B,C,h,w) → (B,C,s·h,s·w)."""
    kh, kw = kernel.shape[-2:]
    H, W = r.shape[-2] * scale, r.shape[-1] * scale
    sh, sw = kernel_shift(centre, (H, W), (kh, kw))
    z = F.conv_transpose2d(r, _flipped(kernel), stride=scale, groups=r.shape[1], output_padding=scale - 1)
    return unwrap(z, (sh - kh + 1, sw - kw + 1), (H, W))


def block_sum(z: Tensor, dim: int, scale: int) -> Tensor:
    """Σ_m z[…, m·n : (m+1)·n, …] along ``dim`` (of length s·n): the sum of its s equal blocks, → length n.

    Elementwise adds of slabs (~3× faster on CPU than a sum over a size-s axis of a reshaped view).
    """
    n = z.shape[dim] // scale
    out = z.narrow(dim, 0, n) + z.narrow(dim, n, n)
    for m in range(2, scale):
        out += z.narrow(dim, m * n, n)
    return out


def alias_mean(z: Tensor, scale: int) -> Tensor:
    """⟨Z⟩↓: mean over the s×s equal blocks of an (…,s·h,s·w) array, i.e. over each alias group
    {(u + a·h, v + b·w)} of a spectrum (the authors' "splits + mean"), → (…,h,w); one axis at a time.
    """
    return block_sum(block_sum(z, -2, scale), -1, scale).div_(scale * scale)


def reverse(z: Tensor, columns: int | None = None) -> Tensor:
    """Index reversal on the last two axes, ``out[k1, k2] = z[(−k1) mod H, (−k2) mod W]``, for the first
    ``columns`` columns k2 (default W; more than W repeats the columns periodically).

    flip(wrap(z, (1, 1 − columns))) by contiguous slices: flip(y)[k] = y[c − 1 − k] = z[(−k) mod W].
    """
    H, W = z.shape[-2:]
    columns = W if columns is None else columns
    return wrap(z, (1, 1 - columns), (H, columns)).flip(-2, -1)
