"""Spectra of the per-channel kernel on the high-resolution grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .sampling import Centre, alias_mean, kernel_shift


def otf(kernel: Tensor, size: tuple[int, int], centre: Centre) -> Tensor:
    """K̂ = DFT of the kernel padded top-left to H×W and rolled by −shift (the ``p2o`` of USRNet/WRC).

    kernel: (C,kh,kw) real → (C,H,W) complex, full spectrum (the solvers slice the rfft half they need).
    """
    kh, kw = kernel.shape[-2:]
    H, W = size
    if kh > H or kw > W:
        raise ValueError(f"kernel {kh}×{kw} is larger than the {H}×{W} grid")
    shift = kernel_shift(centre, size, (kh, kw))
    padded = F.pad(kernel, (0, W - kw, 0, H - kh))
    return torch.fft.fft2(torch.roll(padded, shifts=(-shift[0], -shift[1]), dims=(-2, -1)))


def alias_power(k_hat: Tensor, scale: int) -> Tensor:
    """P = ⟨|K̂|²⟩↓, the low-resolution symbol of A·Aᵀ (real, ≥ 0, Hermitian-symmetric), (C,h,w).

    |K̂|² is formed as re² + im²: no square root, smooth gradient at zeros of K̂.
    """
    return alias_mean(k_hat.real.square() + k_hat.imag.square(), scale)
