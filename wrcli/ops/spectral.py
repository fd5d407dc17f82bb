"""Spectra of the per-channel kernel: K̂ on the high-resolution grid, ⟨|K̂|²⟩↓ on the low-resolution one."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .sampling import Centre, block_sum, kernel_shift, reverse


def otf(kernel: Tensor, size: tuple[int, int], centre: Centre, columns: int | None = None, *, conj: bool = False) -> Tensor:
    """K̂ = DFT of the kernel padded top-left to H×W and rolled by −shift (the ``p2o`` of USRNet/WRC):

        K̂(k1, k2) = Σ_{a,b} k[a, b] · e^{−2πi k1 (a − sh)/H} · e^{−2πi k2 (b − sw)/W},

    evaluated as this separable sum over the taps (exact, and far cheaper than an H×W FFT per channel):
    the column sums G[c,a,k2] = Σ_b k[a,b] e^{…k2…} first, then K̂ = Σ_a e^{…k1…} ⊗ G[:,a], one pass over
    the result per kernel row (a complex batched matmul with kh inner terms is slower on CPU).
    kernel: (C,kh,kw) real → (C,H,columns) complex; ``columns`` defaults to W (the full spectrum).
    ``conj``: conj K̂ (the response of Kᵀ) instead, from conjugated phase tables (no pass over the result).
    """
    kh, kw = kernel.shape[-2:]
    H, W = size
    if kh > H or kw > W:
        raise ValueError(f"kernel {kh}×{kw} is larger than the {H}×{W} grid")
    sh, sw = kernel_shift(centre, size, (kh, kw))
    dtype = torch.complex128 if kernel.dtype == torch.float64 else torch.complex64
    rows = _phases(H, H, kh, sh, kernel.device).to(dtype)
    cols = _phases(W, W if columns is None else columns, kw, sw, kernel.device).to(dtype)
    if conj:
        rows, cols = rows.conj().resolve_conj(), cols.conj().resolve_conj()
    col_sums = torch.einsum("cab,wb->caw", kernel.to(dtype), cols)
    out = rows[:, 0, None] * col_sums[:, None, 0]
    for a in range(1, kh):
        out = out.addcmul_(rows[:, a, None], col_sums[:, None, a])
    return out


def decimated_spectrum(x_half: Tensor, k_conj: Tensor, width: int, scale: int) -> Tensor:
    """F_L(A x), the full low-resolution spectrum (B,C,h,w) of ``A x``, from the half spectrum
    X̂ = rfft2(x) (B,C,H,W/2+1) and conj K̂ on the same columns (C,H,W/2+1); ``width`` = W:

        F_L(A x)(i) = s⁻² Σ_m (K̂ X̂)(i1 + m1·h, i2 + m2·w)     (decimation folds each alias group).

    The s row blocks are summed on the half spectrum, E(i1, k2) = Σ_{m1} K̂X̂(i1 + m1·h, k2); the columns
    beyond W/2 follow from E(i1, k2) = conj E(−i1, W − k2) (x and k are real); then the s column blocks are
    added. One pass over X̂ instead of a strided convolution on x and a low-resolution FFT.
    """
    B, C, H, cols = x_half.shape
    h = H // scale
    x_blocks, k_blocks = x_half.reshape(B, C, scale, h, cols), k_conj.reshape(C, scale, h, cols)
    e = x_blocks[:, :, 0] * k_blocks[:, 0].conj()
    for m in range(1, scale):
        e = e.addcmul_(x_blocks[:, :, m], k_blocks[:, m].conj())
    # column k2 in cols … W−1 is conj E(−i1, W − k2) = conj reverse(E)[…, k2 + cols − W] (reverse: mod cols)
    e = torch.cat([e, reverse(e)[..., 2 * cols - width : cols].conj()], -1)  # (B,C,h,W)
    return block_sum(e, -1, scale).div_(scale * scale)


def _phases(n: int, count: int, taps: int, shift: int, device: torch.device) -> Tensor:
    """(count, taps): e^{−2πi k (t − shift)/n}, the integer phase reduced mod n before the float maths."""
    k = torch.arange(count, device=device)[:, None]
    t = torch.arange(taps, device=device)[None, :] - shift
    angle = (k * t).remainder(n).to(torch.float64) * (-2 * math.pi / n)
    return torch.polar(torch.ones_like(angle), angle)


def alias_power(kernel: Tensor, scale: int, size: tuple[int, int], columns: int | None = None) -> Tensor:
    """P = ⟨|K̂|²⟩↓, the symbol of A·Aᵀ on the h×w low-resolution grid (real, ≥ 0), (C,h,columns).

    A·Aᵀ is circulant there with taps ρ(s·m), ρ the kernel's autocorrelation, so

        P(i) = Σ_{m} ρ(s·m) cos 2π(m1 i1/h + m2 i2/w),   ρ(l) = Σ_t k_t k_{t+l}   (ρ is even),

    a few real products per entry instead of |K̂|² on the H×W grid; exact, and independent of the
    kernel's centring. ``columns`` defaults to w (the full spectrum).
    """
    C, kh, kw = kernel.shape
    h, w = size
    rho = F.conv2d(kernel.unsqueeze(0), kernel.unsqueeze(1), padding=(kh - 1, kw - 1), groups=C)[0]  # ρ(l) at l + (kh−1, kw−1)
    m1 = torch.arange(-((kh - 1) // scale), (kh - 1) // scale + 1, device=kernel.device)
    m2 = torch.arange(-((kw - 1) // scale), (kw - 1) // scale + 1, device=kernel.device)
    rho = rho[:, kh - 1 + scale * m1][:, :, kw - 1 + scale * m2]
    if len(m1) == len(m2) == 1:  # kh, kw ≤ s: A Aᵀ = ‖k‖² I, a constant symbol (as a broadcast view)
        return rho.expand(C, h, w if columns is None else columns)
    cos1, sin1 = _cos_sin(m1, h, h, kernel.dtype)
    cos2, sin2 = _cos_sin(m2, w, w if columns is None else columns, kernel.dtype)
    return torch.einsum("ha,cab,wb->chw", cos1, rho, cos2) - torch.einsum("ha,cab,wb->chw", sin1, rho, sin2)


def _cos_sin(m: Tensor, n: int, count: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(count, len(m)) tables of cos and sin of 2π i m / n, the integer phase reduced mod n first."""
    angle = (torch.arange(count, device=m.device)[:, None] * m[None, :]).remainder(n).to(torch.float64) * (2 * math.pi / n)
    return angle.cos().to(dtype), angle.sin().to(dtype)
