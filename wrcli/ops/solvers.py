"""The three WRC solves, as pure functions on batched (B,C,·,·) tensors.

Shapes: ``y`` (B,C,h,w) low resolution (already padded by the layer), ``x0`` (B,C,H,W) with H = s·h,
W = s·w, ``kernel`` (C,kh,kw), ``lam`` anything broadcastable to (B,C,1,1) (a (C,) vector is read per
channel), weight maps ``w_low`` (B,C,h,w) ≥ 0 and ``w_high`` (B,C,H,W) ≥ 0. ``A = S K`` as in
:mod:`wrcli.ops.sampling`. Every solve runs in float32 (float64 stays float64), autocast off, and returns
the dtype of ``y``; all are differentiable in every tensor argument.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .precision import compute_dtype, full_precision
from .sampling import Centre, alias_mean, decimate, decimate_adjoint, kernel_shift, reverse
from .spectral import alias_power, otf

# Floors of the authors' CUDA path (their Python path has none); active only for tiny λ.
DEN_FLOOR = 1e-3


def _per_channel(lam: Tensor) -> Tensor:
    return lam.reshape(-1, 1, 1) if lam.dim() == 1 else lam


def _check(y: Tensor, x0: Tensor, scale: int) -> None:
    if scale < 2 or int(scale) != scale:
        raise ValueError(f"scale must be an integer ≥ 2, got {scale}")
    if y.dim() != 4 or x0.dim() != 4:
        raise ValueError(f"y and x0 must be (B,C,h,w) and (B,C,H,W), got {tuple(y.shape)} and {tuple(x0.shape)}")
    B, C, h, w = y.shape
    if x0.shape != (B, C, scale * h, scale * w):
        raise ValueError(f"x0 must be {(B, C, scale * h, scale * w)} for y {tuple(y.shape)} at ×{scale}, got {tuple(x0.shape)}")


def _in_precision(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Run ``fn`` with every tensor argument in the compute dtype and autocast off; cast back to y's dtype."""
    names = list(inspect.signature(fn).parameters)

    def wrapped(*args, **kwargs) -> Tensor:
        bound = dict(zip(names, args), **kwargs)
        tensors = {k: v for k, v in bound.items() if isinstance(v, Tensor)}
        y = bound["y"]
        dtype = compute_dtype(*tensors.values())
        with full_precision(y.device):
            out = fn(**{**bound, **{k: v.to(dtype) for k, v in tensors.items()}})
        return out.to(y.dtype)

    return functools.wraps(fn)(wrapped)


@_in_precision
def converse(y: Tensor, x0: Tensor, kernel: Tensor, lam: Tensor, *, scale: int, centre: Centre = "kernel") -> Tensor:
    """Converse2D: argmin_x ‖y − A x‖² + λ‖x − x0‖², exactly, per channel.

    Correction form (never divides by λ alone):
        x = x0 + Aᵀ F_L⁻¹[ F_L(y − A x0) / (⟨|K̂|²⟩↓ + λ) ]
    since A Aᵀ is circulant on the low-resolution grid with symbol ⟨|K̂|²⟩↓. Only low-resolution
    rfft2/irfft2 are needed; A and Aᵀ run as strided depthwise convolutions.
    """
    _check(y, x0, scale)
    h, w = y.shape[-2:]
    power = alias_power(otf(kernel, (scale * h, scale * w), centre), scale)[..., : w // 2 + 1]
    residual = torch.fft.rfft2(y - decimate(x0, kernel, scale, centre))
    correction = torch.fft.irfft2(residual / (power + _per_channel(lam)), s=(h, w))
    return x0 + decimate_adjoint(correction, kernel, scale, centre)


@_in_precision
def exact(
    y: Tensor, x0: Tensor, w_low: Tensor, w_high: Tensor, kernel: Tensor, lam: Tensor, *, scale: int,
    centre: Centre = "kernel",
) -> Tensor:
    """The true minimiser of the spatially weighted objective, for kernels no larger than the scale:

        E(x) = Σ_i w_low,i (y_i − (A x)_i)² + Σ_j d_j (x_j − x0_j)²,   d = w_high + λ.

    For kh, kw ≤ s the rows of A have disjoint supports, so AᵀWA + D is block-diagonal with blocks
    D_B + w_i a aᵀ (a = the flipped kernel on the s×s block B_i) and Sherman–Morrison solves each:

        x_B = x0_B + (a / d_B) · w_i (y_i − aᵀx0_B) / (1 + w_i Σ_B a²/d_B).

    No FFT, no circular assumption inside blocks; every denominator is ≥ 1.
    """
    _check(y, x0, scale)
    kh, kw = kernel.shape[-2:]
    if kh > scale or kw > scale:
        raise ValueError(f"the exact solver needs kernel ≤ scale, got {kh}×{kw} at ×{scale}")
    B, C, h, w = y.shape
    H, W = x0.shape[-2:]
    sh, sw = kernel_shift(centre, (H, W), (kh, kw))
    start = (sh - kh + 1, sw - kw + 1)  # block B_i starts at s·i + start
    d = w_high + _per_channel(lam)

    def blocks(z: Tensor) -> Tensor:  # (B,C,H,W) → (B,C,h,s,w,s), block-aligned
        return torch.roll(z, shifts=(-start[0], -start[1]), dims=(-2, -1)).reshape(B, C, h, scale, w, scale)

    a = F.pad(kernel.flip(-2, -1), (0, scale - kw, 0, scale - kh)).reshape(1, C, 1, scale, 1, scale)
    x0b, db = blocks(x0), blocks(d)
    ad = a / db
    p = (a * x0b).sum(dim=(-3, -1))
    q = (a * ad).sum(dim=(-3, -1))
    r = w_low * (y - p) / (1 + w_low * q)
    xb = x0b + ad * r[:, :, :, None, :, None]
    return torch.roll(xb.reshape(B, C, H, W), shifts=start, dims=(-2, -1))


@_in_precision
def official(
    y: Tensor, x0: Tensor, w_low: Tensor, w_high: Tensor, kernel: Tensor, lam: Tensor, *, scale: int,
    centre: Centre = "image",
) -> Tensor:
    """The published WRC solve, with the weight maps read as Fourier-domain arrays (wrc-math §4.1):

        R̂ = F[Aᵀ(W_L y) + (W_H + λ) x0]
        Q = W_L ⊙ ⟨K̂ R̂⟩↓ / max(W_L ⊙ ⟨|K̂|²⟩↓ + ⟨W_H⟩↓ + λ, 10⁻³)
        x = Re F⁻¹[(R̂ − conj(K̂) ⊙ tile(Q)) / max(W_H + λ, 10⁻³)]

    with the kernel rolled by half the image (``centre="image"``, the authors' p2o) or by half the
    kernel (``centre="kernel"``). It equals the true weighted least-squares minimiser only for
    per-channel constant weights; in general it solves M x = AᵀW_L y + D x0 with circulant
    M = Aᵀ𝒲_L A + 𝒟 whose frequency responses are the maps (exactly when W_H is alias-periodic).

    Computed with one high-resolution rfft2 and one irfft2: ⟨K̂ R̂⟩↓ = F_L(A r) on the low-resolution
    grid, and since x̂ is not Hermitian, Re F⁻¹ x̂ = irfft2 of its Hermitian part
    ½(x̂(k) + conj x̂(−k)), formed on the half spectrum from the maps and their index reversals.
    """
    _check(y, x0, scale)
    H, W = x0.shape[-2:]
    half = W // 2 + 1
    lam = _per_channel(lam)
    d = w_high + lam
    r = decimate_adjoint(w_low * y, kernel, scale, centre) + d * x0
    k_hat = otf(kernel, (H, W), centre)
    den = (w_low * alias_power(k_hat, scale) + alias_mean(w_high, scale) + lam).clamp_min(DEN_FLOOR)
    q = w_low * torch.fft.fft2(decimate(r, kernel, scale, centre)) / den
    tiled = q.repeat(1, 1, scale, scale)[..., :half]
    tiled_rev = reverse(q).repeat(1, 1, scale, scale)[..., :half]
    inv = d.clamp_min(DEN_FLOOR).reciprocal()
    inv_fwd, inv_rev = inv[..., :half], reverse(inv)[..., :half]
    r_hat = torch.fft.rfft2(r)
    k_conj = k_hat[..., :half].conj()
    x_hat = r_hat * (inv_fwd + inv_rev) - k_conj * (tiled * inv_fwd + tiled_rev.conj() * inv_rev)
    return torch.fft.irfft2(0.5 * x_hat, s=(H, W))
