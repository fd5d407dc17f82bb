"""The steps of the solves that the CUDA kernels fuse, in PyTorch, and the dispatch between the two.

Each function takes the same tensors on either path; :func:`wrcli.ops.backend.select` picks the path
(CuPy kernels for float32 CUDA tensors when available, else these PyTorch expressions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .backend import select
from .sampling import reverse

# Floors of the authors' CUDA path (their Python path has none); active only for tiny λ.
DEN_FLOOR = 1e-3


def _tile(q: Tensor, H: int, W: int) -> Tensor:
    s1, s2 = H // q.shape[-2], W // q.shape[-1]
    return q.repeat(1, 1, s1, s2)[..., : W // 2 + 1]


def official_mix(r_hat: Tensor, z: Tensor, w_low: Tensor, power: Tensor, mh: Tensor, d: Tensor, k_half: Tensor) -> Tensor:
    """The published solve between its FFTs, on the half spectrum (B,C,H,W/2+1):

        q(i) = W_L Z / max(W_L P + M, 10⁻³)                   on the low grid, i = k mod (h, w)
        x̂(k) = ½ [R̂ (v(k) + v(−k)) − conj K̂ (q(i_k) v(k) + conj q(i_−k) v(−k))],   v = 1 / max(d, 10⁻³)

    R̂ = rfft2(r); Z = fft2(A r) (B,C,h,w); W_L (B,C,h,w); P = ⟨|K̂|²⟩↓ (C,h,w); M = ⟨W_H⟩↓ + λ (B,C,h,w);
    d = W_H + λ (B,C,H,W); K̂ on the half spectrum (C,H,W/2+1). irfft2(x̂) = Re F⁻¹ of the full x̂.
    """
    if select(d.device, d.dtype) == "cupy":
        from . import cupy_kernels

        B, C, H, W = d.shape
        h, w = z.shape[-2:]
        low = (B, C, h, w)
        return cupy_kernels.official_mix(
            r_hat.contiguous(), z.contiguous(), w_low.expand(low).contiguous(), power.expand(C, h, w).contiguous(),
            mh.expand(low).contiguous(), d.contiguous(), k_half.expand(C, H, W // 2 + 1).contiguous(), DEN_FLOOR,
        )
    H, W = d.shape[-2:]
    half = W // 2 + 1
    q = w_low * z / (w_low * power + mh).clamp_min(DEN_FLOOR)
    v = 0.5 / d.clamp_min(DEN_FLOOR)  # the ½ of the Hermitian part folded in
    v_fwd, v_rev = v[..., :half], reverse(v)[..., :half]
    mixed = _scaled(_tile(q, H, W), v_fwd) + _scaled(_tile(reverse(q).conj(), H, W), v_rev)
    return _scaled(r_hat, v_fwd + v_rev) - k_half.conj() * mixed


def _scaled(z: Tensor, v: Tensor) -> Tensor:
    """z · v for complex z and real v in real arithmetic (torch would first promote v to complex)."""
    return torch.view_as_complex(torch.view_as_real(z.resolve_conj()) * v.unsqueeze(-1))


def converse_divide(res: Tensor, den: Tensor) -> Tensor:
    """res / den on the low-resolution half spectrum (den real, > 0, shared by the batch or per element)."""
    if select(den.device, den.dtype) == "cupy":
        from . import cupy_kernels

        return cupy_kernels.converse_divide(res.contiguous(), den.contiguous())
    return res / den


def exact_blocks(y: Tensor, x0: Tensor, w_low: Tensor, d: Tensor, kernel: Tensor, scale: int, start: tuple[int, int]) -> Tensor:
    """Sherman–Morrison on every s×s block B_i, which starts at s·i + start (mod H, W):

        p = aᵀx0_B,  q = Σ_B a²/d,  r = w_i (y_i − p) / (1 + w_i q),  x_B = x0_B + (a / d_B) r,

    a = the flipped kernel zero-padded to s×s. y, W_L (B,C,h,w); x0, d (B,C,H,W); kernel (C,kh,kw).
    """
    B, C, h, w = y.shape
    H, W = x0.shape[-2:]
    kh, kw = kernel.shape[-2:]
    start = (start[0] % H, start[1] % W)
    if select(d.device, d.dtype) == "cupy":
        from . import cupy_kernels

        full = (B, C, H, W)
        return cupy_kernels.exact_solve(
            y.contiguous(), x0.expand(full).contiguous(), w_low.expand(B, C, h, w).contiguous(),
            d.expand(full).contiguous(), kernel.contiguous(), scale, *start,
        )

    def blocks(t: Tensor) -> Tensor:  # (B,C,H,W) → (B,C,h,s,w,s), block-aligned
        return torch.roll(t.expand(B, C, H, W), shifts=(-start[0], -start[1]), dims=(-2, -1)).reshape(B, C, h, scale, w, scale)

    a = F.pad(kernel.flip(-2, -1), (0, scale - kw, 0, scale - kh)).reshape(1, C, 1, scale, 1, scale)
    x0b, db = blocks(x0), blocks(d)
    ad = a / db
    p = (a * x0b).sum(dim=(-3, -1))
    q = (a * ad).sum(dim=(-3, -1))
    r = w_low * (y - p) / (1 + w_low * q)
    xb = x0b + ad * r[:, :, :, None, :, None]
    return torch.roll(xb.reshape(B, C, H, W), shifts=start, dims=(-2, -1))
