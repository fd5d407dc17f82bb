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
from torch import Tensor

from .backend import select
from .fused import DEN_FLOOR, converse_divide, exact_blocks, official_mix, spectral_mix
from .precision import compute_dtype, full_precision
from .sampling import Centre, alias_mean, decimate, decimate_adjoint, kernel_shift, reverse, wrap
from .spectral import alias_power, decimated_spectrum, otf


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
    power = alias_power(kernel, scale, (h, w), columns=w // 2 + 1)
    residual = torch.fft.rfft2(y - decimate(x0, kernel, scale, centre))
    correction = torch.fft.irfft2(converse_divide(residual, power + _per_channel(lam)), s=(h, w))
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
    sh, sw = kernel_shift(centre, tuple(x0.shape[-2:]), (kh, kw))
    return exact_blocks(y, x0, w_low, w_high + _per_channel(lam), kernel, scale, (sh - kh + 1, sw - kw + 1))


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
    The CUDA kernels take R̂ and F_L(A r) (:func:`official_mix`); PyTorch, eager or compiled, assembles them
    in the frequency domain instead (:func:`_official_spectral`).
    """
    _check(y, x0, scale)
    H, W = x0.shape[-2:]
    lam = _per_channel(lam)
    power, mh = alias_power(kernel, scale, y.shape[-2:]), alias_mean(w_high, scale) + lam
    if select(y.device, y.dtype) != "cupy":
        k_conj = otf(kernel, (H, W), centre, columns=W // 2 + 1, conj=True)
        x_hat = _official_spectral(y, x0, w_low, w_high, lam, power, mh, k_conj, scale)
    else:
        d = w_high + lam
        r = torch.addcmul(decimate_adjoint(w_low * y, kernel, scale, centre), d, x0)
        z = torch.fft.fft2(decimate(r, kernel, scale, centre))
        x_hat = official_mix(torch.fft.rfft2(r), z, w_low, power, mh, d, otf(kernel, (H, W), centre, columns=W // 2 + 1))
    return torch.fft.irfft2(x_hat, s=(H, W))


def _official_spectral(
    y: Tensor, x0: Tensor, w_low: Tensor, w_high: Tensor, lam: Tensor, power: Tensor, mh: Tensor, k_conj: Tensor,
    scale: int,
) -> Tensor:
    """The half spectrum x̂ of :func:`official` in few high-resolution passes, (B,C,H,W/2+1); ``k_conj`` is
    conj K̂ on the half spectrum (C,H,W/2+1), ``power`` P = ⟨|K̂|²⟩↓, ``mh`` M = ⟨W_H⟩↓ + λ.

    With p = d x0 and U = F_L(W_L y): zero insertion is tiling, so F(Aᵀ W_L y) = conj K̂ · tile U and
    R̂ = P̂ + conj K̂ · tile U; A Aᵀ has symbol P, so F_L(A r) = P U + F_L(A p), and F_L(A p) is folded from
    P̂ (:func:`~wrcli.ops.spectral.decimated_spectrum`). Neither r, Aᵀ nor A is formed in space. With
    q = W_L F_L(A r) / max(W_L P + M, 10⁻³), g = U − q and v = 1 / max(d, 10⁻³):

        x̂(k) = ½ v(k) [P̂ + conj K̂ · tile g] + ½ v(−k) [P̂ + conj K̂ · tile conj g(−i)]

    (U − conj q(−i) = conj g(−i) as U(−i) = conj U(i)). The ½ is folded in: p and W_L y are taken at ¼
    (so P̂, U and q are) and 1 / max(½d, ½·10⁻³) = 2v. The spectra are viewed as (B,C,s,h,W/2+1), over whose s row
    blocks the low-resolution maps, extended to the half spectrum's columns, broadcast. Intermediates
    are updated in place where autograd allows.
    """
    B, C, H, W = x0.shape
    h, w = y.shape[-2:]
    cols = W // 2 + 1
    blocks = (B, C, H // h, h, cols)
    half_d = torch.add(0.5 * lam, w_high, alpha=0.5)
    p = torch.addcmul(x0.new_zeros(()), half_d, x0, value=0.5)  # ¼ d x0
    p_hat = torch.fft.rfft2(p)
    u = torch.fft.fft2((w_low * y).mul_(0.25))
    q = decimated_spectrum(p_hat, k_conj, W, scale).addcmul_(power, u)
    g = q.mul_(w_low / torch.addcmul(mh, w_low, power).clamp_min_(DEN_FLOOR)).sub_(u)  # −g
    t_fwd, t_rev = wrap(g, (0, 0), (h, cols)).unsqueeze(2), reverse(g.conj(), cols).unsqueeze(2)
    v = half_d.clamp_min(DEN_FLOOR / 2).reciprocal_()  # 2 / max(d, 10⁻³), exactly
    x_hat = spectral_mix(p_hat.reshape(blocks), k_conj.reshape(-1, *blocks[2:]), t_fwd, t_rev, v)
    return x_hat.reshape(B, C, H, cols)
