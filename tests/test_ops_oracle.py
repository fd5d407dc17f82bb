"""The solvers against dense linear algebra in float64.

Every operator here is built independently of wrcli.ops: A = S K is assembled entry by entry from the
p2o definition (kernel padded top-left, rolled by −shift, circular convolution, keep every s-th pixel),
and the normal equations are solved with torch.linalg. A formula that is only "close" fails.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from wrcli.ops import converse, decimate, decimate_adjoint, exact, official

F64_TOL = 1e-10
F32_TOL = 1e-5


def shift_of(centre: str, H: int, W: int, kh: int, kw: int) -> tuple[int, int]:
    return (H // 2, W // 2) if centre == "image" else (kh // 2, kw // 2)


def dense_A(kernel: torch.Tensor, H: int, W: int, s: int, centre: str) -> torch.Tensor:
    """(C, h·w, H·W): rows of S K for each channel, from the rolled point-spread function."""
    C, kh, kw = kernel.shape
    sh, sw = shift_of(centre, H, W, kh, kw)
    psf = torch.zeros(C, H, W, dtype=kernel.dtype)
    psf[:, :kh, :kw] = kernel
    psf = torch.roll(psf, (-sh, -sw), dims=(-2, -1))
    n1, n2 = torch.arange(H), torch.arange(W)
    d1 = (n1[:, None] - n1[None, :]) % H  # K[n, m] = psf[n − m]
    d2 = (n2[:, None] - n2[None, :]) % W
    K = psf[:, d1[:, None, :, None], d2[None, :, None, :]]  # (C, H, W, H, W)
    return K[:, ::s, ::s].reshape(C, (H // s) * (W // s), H * W)


def dft(n: int) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)
    return torch.exp(-2j * torch.pi * torch.outer(k, k) / n)


def dft2(H: int, W: int) -> torch.Tensor:
    """Unnormalised 2-D DFT acting on row-major vec(x)."""
    return torch.kron(dft(H), dft(W))


def weighted_minimiser(A, y, x0, w_low, d) -> torch.Tensor:
    """argmin Σ w_low (y − A x)² + Σ d (x − x0)² per (b, c) plane, by a dense solve."""
    B, C, h, w = y.shape
    H, W = x0.shape[-2:]
    yv, x0v = y.reshape(B, C, -1), x0.reshape(B, C, -1)
    wl, dv = w_low.reshape(B, C, -1), d.expand(B, C, H, W).reshape(B, C, -1)
    At = A.transpose(-1, -2)
    M = At @ (wl[..., :, None] * A) + torch.diag_embed(dv)
    rhs = (At @ (wl * yv)[..., None])[..., 0] + dv * x0v
    return torch.linalg.solve(M, rhs).reshape(B, C, H, W)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


# (h, w, scale, kh, kw): square, odd, non-square, 1×1, s = 3 and 4, kernels below, at and above the scale
GEOMETRIES = [(4, 4, 2, 2, 2), (3, 5, 2, 2, 2), (1, 1, 2, 2, 2), (3, 4, 3, 3, 3), (4, 3, 3, 2, 2), (2, 3, 4, 3, 2)]
WIDE = [(4, 5, 2, 3, 3), (3, 3, 2, 4, 2)]  # kernel larger than the scale (official, converse only)
CENTRES = ["image", "kernel"]


def problem(h, w, s, kh, kw, B=2, C=3, dtype=torch.float64, gen_seed=0):
    g = torch.Generator().manual_seed(gen_seed)
    H, W = s * h, s * w
    r = lambda *shape: torch.rand(*shape, generator=g, dtype=dtype)  # noqa: E731
    return dict(
        y=torch.randn(B, C, h, w, generator=g, dtype=dtype),
        x0=torch.randn(B, C, H, W, generator=g, dtype=dtype),
        w_low=0.1 + 2 * r(B, C, h, w),
        w_high=0.1 + 2 * r(B, C, H, W),
        kernel=torch.softmax(torch.randn(C, kh * kw, generator=g, dtype=dtype), -1).reshape(C, kh, kw) + 0.2 * r(C, kh, kw),
        lam=0.05 + r(C),
    )


@pytest.mark.parametrize("geom,centre", list(itertools.product(GEOMETRIES + WIDE, CENTRES)))
def test_operators_match_dense(geom, centre):
    h, w, s, kh, kw = geom
    p = problem(h, w, s, kh, kw)
    A = dense_A(p["kernel"], s * h, s * w, s, centre)
    B, C = p["y"].shape[:2]
    Ax = (A @ p["x0"].reshape(B, C, -1, 1)).reshape(p["y"].shape)
    Aty = (A.transpose(-1, -2) @ p["y"].reshape(B, C, -1, 1)).reshape(p["x0"].shape)
    assert rel_err(decimate(p["x0"], p["kernel"], s, centre), Ax) < F64_TOL
    assert rel_err(decimate_adjoint(p["y"], p["kernel"], s, centre), Aty) < F64_TOL


@pytest.mark.parametrize("geom,centre", list(itertools.product(GEOMETRIES + WIDE, CENTRES)))
@pytest.mark.parametrize("lam_scale", [1.0, 1e-3])
def test_converse_is_tikhonov_minimiser(geom, centre, lam_scale):
    h, w, s, kh, kw = geom
    p = problem(h, w, s, kh, kw)
    lam = p["lam"] * lam_scale
    A = dense_A(p["kernel"], s * h, s * w, s, centre)
    ones = torch.ones_like(p["y"])
    ref = weighted_minimiser(A, p["y"], p["x0"], ones, lam.reshape(1, -1, 1, 1))
    assert rel_err(converse(p["y"], p["x0"], p["kernel"], lam, scale=s, centre=centre), ref) < F64_TOL
    f32 = {k: v.float() for k, v in p.items()}
    out32 = converse(f32["y"], f32["x0"], f32["kernel"], lam.float(), scale=s, centre=centre)
    assert out32.dtype == torch.float32 and rel_err(out32, ref) < F32_TOL


@pytest.mark.parametrize("geom,centre", list(itertools.product(GEOMETRIES, CENTRES)))
def test_exact_is_weighted_minimiser(geom, centre):
    h, w, s, kh, kw = geom
    p = problem(h, w, s, kh, kw)
    A = dense_A(p["kernel"], s * h, s * w, s, centre)
    d = p["w_high"] + p["lam"].reshape(1, -1, 1, 1)
    ref = weighted_minimiser(A, p["y"], p["x0"], p["w_low"], d)
    out = exact(p["y"], p["x0"], p["w_low"], p["w_high"], p["kernel"], p["lam"], scale=s, centre=centre)
    assert rel_err(out, ref) < F64_TOL
    f32 = {k: v.float() for k, v in p.items()}
    assert rel_err(exact(**f32, scale=s, centre=centre), ref) < F32_TOL


def test_exact_rejects_kernel_above_scale():
    p = problem(3, 3, 2, 3, 3)
    with pytest.raises(ValueError, match="kernel ≤ scale"):
        exact(**p, scale=2)


@pytest.mark.parametrize("geom,centre", list(itertools.product(GEOMETRIES + WIDE, CENTRES)))
def test_official_with_constant_weights_is_weighted_minimiser(geom, centre):
    h, w, s, kh, kw = geom
    p = problem(h, w, s, kh, kw)
    B, C = p["y"].shape[:2]
    p["w_low"] = (0.1 + torch.rand(B, C, 1, 1, dtype=torch.float64)).expand_as(p["w_low"]).contiguous()
    p["w_high"] = (0.1 + torch.rand(B, C, 1, 1, dtype=torch.float64)).expand_as(p["w_high"]).contiguous()
    A = dense_A(p["kernel"], s * h, s * w, s, centre)
    ref = weighted_minimiser(A, p["y"], p["x0"], p["w_low"], p["w_high"] + p["lam"].reshape(1, -1, 1, 1))
    assert rel_err(official(**p, scale=s, centre=centre), ref) < F64_TOL
    f32 = {k: v.float() for k, v in p.items()}
    assert rel_err(official(**f32, scale=s, centre=centre), ref) < F32_TOL


def fourier_diagonal_solution(p, s, centre):
    """Re M⁻¹(AᵀW_L y + D x0) with M = Aᵀ𝒲_L A + 𝒟, 𝒲_L = F_L⁻¹ diag(W_L) F_L, 𝒟 = F_H⁻¹ diag(W_H + λ) F_H:
    the system the published layer solves (wrc-math §4.2)."""
    y, x0 = p["y"], p["x0"]
    B, C, h, w = y.shape
    H, W = x0.shape[-2:]
    A = dense_A(p["kernel"], H, W, s, centre).to(torch.complex128)
    FL, FH = dft2(h, w), dft2(H, W)
    d = p["w_high"] + p["lam"].reshape(1, -1, 1, 1)
    wl, dv = p["w_low"].reshape(B, C, -1), d.reshape(B, C, -1)
    WL_op = torch.linalg.inv(FL) @ torch.diag_embed(wl.to(torch.complex128)) @ FL
    D_op = torch.linalg.inv(FH) @ torch.diag_embed(dv.to(torch.complex128)) @ FH
    At = A.transpose(-1, -2)
    M = At @ WL_op @ A + D_op
    rhs = (At @ (wl * y.reshape(B, C, -1)).to(torch.complex128)[..., None])[..., 0] + (dv * x0.reshape(B, C, -1))
    return torch.linalg.solve(M, rhs).real.reshape(B, C, H, W)


@pytest.mark.parametrize("geom,centre", list(itertools.product(GEOMETRIES[:5] + WIDE[:1], CENTRES)))
def test_official_solves_its_fourier_diagonal_system(geom, centre):
    """Arbitrary W_L, W_H alias-periodic (W_H(n) = W_H(n + h)): exact equality with the dense system."""
    h, w, s, kh, kw = geom
    p = problem(h, w, s, kh, kw)
    p["w_high"] = p["w_high"][..., :h, :w].repeat(1, 1, s, s)
    ref = fourier_diagonal_solution(p, s, centre)
    assert rel_err(official(**p, scale=s, centre=centre), ref) < F64_TOL


def official_by_dft_matrices(p, s, centre):
    """The published formula (wrc-math §4.1) on full spectra with explicit DFT matrices, one plane at a time:
    R̂ = conj(K̂)·F(Sᵀ(W_L y)) + F((W_H+λ) x0); Num = W_L·⟨K̂R̂⟩↓; Den = max(W_L·⟨|K̂|²⟩↓ + ⟨W_H⟩↓ + λ, 1e-3);
    x = Re F⁻¹[(R̂ − conj(K̂)·tile(Num/Den)) / max(W_H + λ, 1e-3)]."""
    y, x0 = p["y"], p["x0"]
    B, C, h, w = y.shape
    H, W = x0.shape[-2:]
    kh, kw = p["kernel"].shape[-2:]
    sh, sw = shift_of(centre, H, W, kh, kw)
    FH = dft2(H, W)
    psf = torch.zeros(C, H, W, dtype=torch.float64)
    psf[:, :kh, :kw] = p["kernel"]
    k_hat = (FH @ torch.roll(psf, (-sh, -sw), dims=(-2, -1)).reshape(C, -1, 1).to(torch.complex128))[..., 0]
    # alias groups on the row-major H×W grid: frequency (u + a h, v + b w) ↦ low-res (u, v)
    u = torch.arange(H)[:, None] % h
    v = torch.arange(W)[None, :] % w
    group = (u * w + v).reshape(-1)
    avg = torch.zeros(h * w, H * W, dtype=torch.complex128)
    avg[group, torch.arange(H * W)] = 1 / s**2
    tile = avg.T * s**2
    lam = p["lam"].reshape(1, C, 1)
    wl = p["w_low"].reshape(B, C, -1).to(torch.complex128)
    wh = p["w_high"].reshape(B, C, -1)
    zero_ins = torch.zeros(B, C, H, W, dtype=torch.float64)
    zero_ins[..., ::s, ::s] = p["w_low"] * y
    r_hat = k_hat.conj() * (zero_ins.reshape(B, C, -1).to(torch.complex128) @ FH.T) + (
        ((wh + lam) * x0.reshape(B, C, -1)).to(torch.complex128) @ FH.T
    )
    num = wl * ((k_hat * r_hat) @ avg.T)
    den = (wl.real * ((k_hat.abs() ** 2).to(torch.complex128) @ avg.T).real + (wh.to(torch.complex128) @ avg.T).real + lam)
    q = num / den.clamp_min(1e-3)
    x_hat = (r_hat - k_hat.conj() * (q @ tile.T)) / (wh + lam).clamp_min(1e-3)
    return (x_hat @ torch.linalg.inv(FH).T).real.reshape(B, C, H, W)


@pytest.mark.parametrize("geom,centre", list(itertools.product(GEOMETRIES + WIDE, CENTRES)))
def test_official_equals_published_formula_for_any_weights(geom, centre):
    h, w, s, kh, kw = geom
    p = problem(h, w, s, kh, kw)
    ref = official_by_dft_matrices(p, s, centre)
    assert rel_err(official(**p, scale=s, centre=centre), ref) < F64_TOL
    f32 = {k: v.float() for k, v in p.items()}
    assert rel_err(official(**f32, scale=s, centre=centre), ref) < F32_TOL


def test_official_clamps_match_the_cuda_path():
    """λ far below the 1e-3 floor: both floors become active, as in the authors' CUDA path."""
    p = problem(3, 4, 2, 2, 2)
    p["w_low"] = p["w_low"] * 1e-6
    p["w_high"] = p["w_high"] * 1e-6
    p["lam"] = torch.full_like(p["lam"], 1e-5)
    ref = official_by_dft_matrices(p, 2, "image")
    assert rel_err(official(**p, scale=2), ref) < F64_TOL


def test_official_is_not_the_spatial_minimiser_for_varying_weights():
    """Documents the departure (wrc-math §4.2): with spatially varying maps the published solve and the
    true minimiser differ by tens of percent, which the exact solver fixes."""
    p = problem(4, 4, 2, 2, 2)
    A = dense_A(p["kernel"], 8, 8, 2, "image")
    ref = weighted_minimiser(A, p["y"], p["x0"], p["w_low"], p["w_high"] + p["lam"].reshape(1, -1, 1, 1))
    assert rel_err(official(**p, scale=2), ref) > 0.05
    assert rel_err(exact(**p, scale=2, centre="image"), ref) < F64_TOL
