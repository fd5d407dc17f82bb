"""The steps of the solves that the CUDA kernels fuse, in PyTorch, and the dispatch between the paths.

Each step takes the same tensors on every path; :func:`wrcli.ops.backend.select` picks one: ``cupy`` (the
CUDA kernels), ``compiled`` (these PyTorch functions through ``torch.compile``, which fuses each into one
loop; eager if compiling fails) or ``torch`` (these functions, eagerly). The compiled steps take complex
tensors as real views (…, 2) and compute in real arithmetic, so that the compiler can fuse them: it
generates no code for complex operators. :func:`spectral_mix` is the one step of the official solve's
PyTorch formulation (which the CUDA path does not use) worth fusing on CPU.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .backend import compiled, select
from .sampling import reverse

# Floors of the authors' CUDA path (their Python path has none); active only for tiny λ.
DEN_FLOOR = 1e-3


def official_mix(r_hat: Tensor, z: Tensor, w_low: Tensor, power: Tensor, mh: Tensor, d: Tensor, k_half: Tensor) -> Tensor:
    """The published solve between its FFTs, on the half spectrum (B,C,H,W/2+1):

        q(i) = W_L Z / max(W_L P + M, 10⁻³)                   on the low grid, i = k mod (h, w)
        x̂(k) = ½ [R̂ (v(k) + v(−k)) − conj K̂ (q(i_k) v(k) + conj q(i_−k) v(−k))],   v = 1 / max(d, 10⁻³)

    R̂ = rfft2(r); Z = fft2(A r) (B,C,h,w); W_L (B,C,h,w); P = ⟨|K̂|²⟩↓ (C,h,w); M = ⟨W_H⟩↓ + λ (B,C,h,w);
    d = W_H + λ (B,C,H,W); K̂ on the half spectrum (C,H,W/2+1). irfft2(x̂) = Re F⁻¹ of the full x̂.
    """
    path = select(d.device, d.dtype)
    if path == "cupy":
        from . import cupy_kernels

        B, C, H, W = d.shape
        h, w = z.shape[-2:]
        low = (B, C, h, w)
        return cupy_kernels.official_mix(
            r_hat.contiguous(), z.contiguous(), w_low.expand(low).contiguous(), power.expand(C, h, w).contiguous(),
            mh.expand(low).contiguous(), d.contiguous(), k_half.expand(C, H, W // 2 + 1).contiguous(), DEN_FLOOR,
        )
    planes = _on(path, _official_mix)(torch.view_as_real(r_hat), torch.view_as_real(z), w_low, power, mh, d,
                                      torch.view_as_real(k_half))
    return torch.view_as_complex(planes)


def _official_mix(r_hat: Tensor, z: Tensor, w_low: Tensor, power: Tensor, mh: Tensor, d: Tensor, k_half: Tensor) -> Tensor:
    """:func:`official_mix` on real views (…, 2) of the complex tensors, → (B,C,H,W/2+1,2)."""
    H, W = d.shape[-2:]
    gain = w_low / (w_low * power + mh).clamp_min(DEN_FLOOR)
    q_re, q_im = z[..., 0] * gain, z[..., 1] * gain
    v = 0.5 / d.clamp_min(DEN_FLOOR)  # the ½ of the Hermitian part folded in
    v_fwd, v_rev = v[..., : W // 2 + 1], reverse(v)[..., : W // 2 + 1]
    # m = tile(q) v(k) + tile(conj q(−i)) v(−k);  x̂ = R̂ (v(k) + v(−k)) − conj K̂ · m
    m_re = _tile(q_re, H, W) * v_fwd + _tile(reverse(q_re), H, W) * v_rev
    m_im = _tile(q_im, H, W) * v_fwd - _tile(reverse(q_im), H, W) * v_rev
    k_re, k_im, v_sum = k_half[..., 0], k_half[..., 1], v_fwd + v_rev
    x_re = r_hat[..., 0] * v_sum - (k_re * m_re + k_im * m_im)
    x_im = r_hat[..., 1] * v_sum - (k_re * m_im - k_im * m_re)
    return torch.stack([x_re, x_im], dim=-1)


def spectral_mix(p_hat: Tensor, k_conj: Tensor, t_fwd: Tensor, t_rev: Tensor, v: Tensor) -> Tensor:
    """The high-resolution step of the eager official solve (:func:`wrcli.ops.solvers._official_spectral`):

        x̂(k) = v(k) [P̂ − conj K̂ · T] + v(−k) [P̂ − conj K̂ · T_r]

    on the half spectrum's s row blocks: P̂ (B,C,s,h,W/2+1) and conj K̂ (C,s,h,W/2+1) complex, the low-resolution
    T and T_r (B,C,1,h,W/2+1) complex (broadcast over the blocks), v (B,C,H,W) real. ``torch``: five complex
    passes; ``compiled``: the same on real views (…, 2), one fused loop with v's reversal as index arithmetic.
    """
    cols = p_hat.shape[-1]
    if select(v.device, v.dtype) == "compiled":
        planes = _on("compiled", _spectral_mix)(*(torch.view_as_real(t.resolve_conj()) for t in (p_hat, k_conj, t_fwd, t_rev)), v)
        return torch.view_as_complex(planes)
    x_hat = torch.addcmul(p_hat, k_conj, t_fwd, value=-1)
    rev = torch.addcmul(p_hat, k_conj, t_rev, value=-1)
    return x_hat.mul_(v[..., :cols].reshape(p_hat.shape)).addcmul_(rev, reverse(v, cols).reshape(p_hat.shape))


def _spectral_mix(p_hat: Tensor, k_conj: Tensor, t_fwd: Tensor, t_rev: Tensor, v: Tensor) -> Tensor:
    """:func:`spectral_mix` on real views (…, 2) of the complex tensors, → (B,C,s,h,W/2+1,2)."""
    shape = p_hat.shape[:-1]
    v_fwd, v_rev = v[..., : shape[-1]].reshape(shape), reverse(v, shape[-1]).reshape(shape)
    p_re, p_im, k_re, k_im = p_hat[..., 0], p_hat[..., 1], k_conj[..., 0], k_conj[..., 1]
    a_re, a_im, b_re, b_im = t_fwd[..., 0], t_fwd[..., 1], t_rev[..., 0], t_rev[..., 1]
    x_re = (p_re - (k_re * a_re - k_im * a_im)) * v_fwd + (p_re - (k_re * b_re - k_im * b_im)) * v_rev
    x_im = (p_im - (k_re * a_im + k_im * a_re)) * v_fwd + (p_im - (k_re * b_im + k_im * b_re)) * v_rev
    return torch.stack([x_re, x_im], dim=-1)


def _tile(q: Tensor, H: int, W: int) -> Tensor:
    """The low-resolution map tiled over the H×W grid, on the half spectrum's columns."""
    return q.repeat(1, 1, H // q.shape[-2], W // q.shape[-1])[..., : W // 2 + 1]


def converse_divide(res: Tensor, den: Tensor) -> Tensor:
    """res / den on the low-resolution half spectrum (den real, > 0, shared by the batch or per element)."""
    if select(den.device, den.dtype) == "cupy":
        from . import cupy_kernels

        return cupy_kernels.converse_divide(res.contiguous(), den.contiguous())
    return res / den  # one pass over a low-resolution map: nothing to fuse


def exact_blocks(y: Tensor, x0: Tensor, w_low: Tensor, d: Tensor, kernel: Tensor, scale: int, start: tuple[int, int]) -> Tensor:
    """Sherman–Morrison on every s×s block B_i, which starts at s·i + start (mod H, W):

        p = aᵀx0_B,  q = Σ_B a²/d,  r = w_i (y_i − p) / (1 + w_i q),  x_B = x0_B + (a / d_B) r,

    a(u, v) = k(kh−1−u, kw−1−v) on the block, zero beyond the kernel (so only its kh·kw taps cost work,
    each a strided view of the block-aligned maps). y, W_L (B,C,h,w); x0, d (B,C,H,W); kernel (C,kh,kw).
    """
    B, C, h, w = y.shape
    H, W = x0.shape[-2:]
    start = (start[0] % H, start[1] % W)
    path = select(d.device, d.dtype)
    if path == "cupy":
        from . import cupy_kernels

        full = (B, C, H, W)
        return cupy_kernels.exact_solve(
            y.contiguous(), x0.expand(full).contiguous(), w_low.expand(B, C, h, w).contiguous(),
            d.expand(full).contiguous(), kernel.contiguous(), scale, *start,
        )
    return _on(path, _exact_blocks)(y, x0, w_low, d, kernel, scale, start)


def _exact_blocks(y: Tensor, x0: Tensor, w_low: Tensor, d: Tensor, kernel: Tensor, scale: int, start: tuple[int, int]) -> Tensor:
    B, C, h, w = y.shape
    H, W = x0.shape[-2:]
    kh, kw = kernel.shape[-2:]
    aligned = [_roll(t.expand(B, C, H, W), (-start[0], -start[1])) for t in (x0, d)]  # block B_i at s·i
    taps = [(u, v, kernel[:, kh - 1 - u, kw - 1 - v, None, None]) for u in range(kh) for v in range(kw)]  # a(u, v)
    x0_at = {(u, v): aligned[0][..., u::scale, v::scale] for u, v, _ in taps}  # x0 at tap (u, v) of each block
    d_at = {(u, v): aligned[1][..., u::scale, v::scale] for u, v, _ in taps}
    p = sum(a * x0_at[u, v] for u, v, a in taps)
    q = sum(a.square() / d_at[u, v] for u, v, a in taps)
    r = w_low * (y - p) / (1 + w_low * q)
    x = aligned[0].clone()
    for u, v, a in taps:
        x[..., u::scale, v::scale] += a / d_at[u, v] * r
    return _roll(x, start)


def _roll(t: Tensor, shifts: tuple[int, int]) -> Tensor:
    return t if shifts == (0, 0) else torch.roll(t, shifts=shifts, dims=(-2, -1))


def _on(path: str, fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``fn`` as ``path`` runs it: compiled, unless it is being traced already (inside a pass compiled whole, where
    the compiler inlines it into the enclosing graph), or eager."""
    return compiled(fn) if path == "compiled" and not torch.compiler.is_compiling() else fn
