"""The eager official solve and the helpers it is built from, against the fused formulation and definitions.

On the torch and compiled paths :func:`wrcli.ops.official` assembles R̂ and F_L(A r) in the frequency domain
(``solvers._official_spectral``); the CUDA kernels take them from r = Aᵀ(W_L y) + d x0
(:func:`wrcli.ops.fused.official_mix`). Both must agree to rounding, values and gradients.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from wrcli.ops import alias_power, decimate, decimate_adjoint, official, otf
from wrcli.ops.backend import use_backend
from wrcli.ops.fused import official_mix
from wrcli.ops.sampling import alias_mean, reverse
from wrcli.ops.spectral import decimated_spectrum

from .test_ops_layers import block_mean, p2o
from .test_ops_oracle import dense_A, official_by_dft_matrices, problem, rel_err, shift_of

# (h, w, s, kh, kw): odd and non-square grids, s = 2 and 3, kernels 1×1, 1×2, 2×2, 3×3 and 3×2 (≤ s),
# and 3×3, 4×2 at s = 2 (larger than the scale)
GEOMETRIES = [(4, 4, 2, 2, 2), (5, 3, 2, 2, 2), (3, 6, 2, 1, 2), (5, 3, 3, 1, 2), (3, 4, 3, 3, 3), (4, 5, 3, 3, 2),
              (2, 2, 2, 1, 1), (4, 5, 2, 3, 3), (3, 3, 2, 4, 2), (1, 1, 2, 2, 2)]
CENTRES = ["image", "kernel"]


def fused_formulation(p: dict, s: int, centre: str) -> torch.Tensor:
    """The solve as the fused paths compute it, with :func:`official_mix` run eagerly."""
    y, x0, kernel = p["y"], p["x0"], p["kernel"]
    H, W = x0.shape[-2:]
    lam = p["lam"].reshape(-1, 1, 1)
    d = p["w_high"] + lam
    r = decimate_adjoint(p["w_low"] * y, kernel, s, centre) + d * x0
    z = torch.fft.fft2(decimate(r, kernel, s, centre))
    with use_backend("torch"):
        x_hat = official_mix(torch.fft.rfft2(r), z, p["w_low"], alias_power(kernel, s, y.shape[-2:]),
                             alias_mean(p["w_high"], s) + lam, d, otf(kernel, (H, W), centre, columns=W // 2 + 1))
    return torch.fft.irfft2(x_hat, s=(H, W))


@pytest.mark.parametrize("geom,centre", list(itertools.product(GEOMETRIES, CENTRES)))
def test_eager_official_equals_fused_formulation_and_published_formula(geom, centre):
    h, w, s, kh, kw = geom
    p = problem(h, w, s, kh, kw, B=3)
    out = official(**p, scale=s, centre=centre)
    assert rel_err(out, fused_formulation(p, s, centre)) < 1e-12
    assert rel_err(out, official_by_dft_matrices(p, s, centre)) < 1e-10
    f32 = {k: v.float() for k, v in p.items()}
    assert rel_err(official(**f32, scale=s, centre=centre), out) < 1e-5


@pytest.mark.parametrize("geom,centre", [((5, 3, 3, 1, 2), "image"), ((3, 4, 2, 3, 3), "kernel"), ((3, 5, 2, 2, 2), "image")])
def test_eager_official_gradients_equal_fused_formulation(geom, centre):
    h, w, s, kh, kw = geom
    p = problem(h, w, s, kh, kw, B=2)
    weights = torch.randn(2, 3, s * h, s * w, dtype=torch.float64)
    grads = []
    for fn in (lambda t: official(**t, scale=s, centre=centre), lambda t: fused_formulation(t, s, centre)):
        leaves = {k: v.clone().requires_grad_() for k, v in p.items()}
        (fn(leaves) * weights).sum().backward()
        grads.append({k: v.grad for k, v in leaves.items()})
    for name in p:
        assert rel_err(grads[0][name], grads[1][name]) < 1e-11, name


@pytest.mark.parametrize("geom,centre", list(itertools.product(GEOMETRIES, CENTRES)))
def test_decimate_by_padded_strided_convolution_matches_dense(geom, centre):
    """A x as a strided convolution of x padded circularly at both ends, rolled on the low grid."""
    h, w, s, kh, kw = geom
    p = problem(h, w, s, kh, kw, B=3)
    A = dense_A(p["kernel"], s * h, s * w, s, centre)
    ref = (A @ p["x0"].reshape(3, 3, -1, 1)).reshape(p["y"].shape)
    assert rel_err(decimate(p["x0"], p["kernel"], s, centre), ref) < 1e-12


@pytest.mark.parametrize("geom,centre", list(itertools.product(GEOMETRIES, CENTRES)))
def test_decimated_spectrum_from_the_half_spectrum_matches_dense(geom, centre):
    """F_L(A x) folded from rfft2(x) and conj K̂ equals the low-resolution DFT of the dense A x."""
    h, w, s, kh, kw = geom
    p = problem(h, w, s, kh, kw, B=3)
    H, W = s * h, s * w
    A = dense_A(p["kernel"], H, W, s, centre)
    ref = torch.fft.fft2((A @ p["x0"].reshape(3, 3, -1, 1)).reshape(p["y"].shape))
    k_conj = otf(p["kernel"], (H, W), centre, columns=W // 2 + 1, conj=True)
    out = decimated_spectrum(torch.fft.rfft2(p["x0"]), k_conj, W, s)
    assert rel_err(torch.view_as_real(out), torch.view_as_real(ref)) < 1e-12  # real and imaginary parts


@pytest.mark.parametrize("geom", GEOMETRIES)
def test_alias_mean_is_the_block_mean(geom):
    h, w, s = geom[:3]
    z = torch.randn(2, 3, s * h, s * w, dtype=torch.float64)
    assert rel_err(alias_mean(z, s), block_mean(z, s)) < 1e-14


@pytest.mark.parametrize("H,W", [(6, 8), (5, 7), (1, 1), (4, 3), (3, 1)])
def test_reverse_on_the_first_columns(H, W):
    z = torch.randn(2, H, W, dtype=torch.float64)
    k1, k2 = torch.arange(H)[:, None], torch.arange(2 * W + 1)[None, :]
    full = z[:, (-k1) % H, (-k2) % W]  # out[k] = z[(−k) mod (H, W)], columns beyond W periodic
    assert torch.equal(reverse(z), full[..., :W])
    for columns in range(1, 2 * W + 2):
        assert torch.equal(reverse(z, columns), full[..., :columns])


@pytest.mark.parametrize("geom,centre", list(itertools.product(GEOMETRIES, CENTRES)))
def test_otf_and_its_conjugate(geom, centre):
    h, w, s, kh, kw = geom
    kernel = problem(h, w, s, kh, kw)["kernel"]
    H, W = s * h, s * w
    full = p2o(kernel, H, W, shift_of(centre, H, W, kh, kw))
    assert ((otf(kernel, (H, W), centre) - full).abs().max() / full.abs().max()).item() < 1e-12  # complex
    half = otf(kernel, (H, W), centre, columns=W // 2 + 1)
    assert torch.equal(otf(kernel, (H, W), centre, columns=W // 2 + 1, conj=True), half.conj())


@pytest.mark.parametrize("geom", GEOMETRIES)
def test_alias_power_is_the_alias_mean_of_the_power_spectrum(geom):
    h, w, s, kh, kw = geom
    kernel = problem(h, w, s, kh, kw)["kernel"]
    ref = block_mean(p2o(kernel, s * h, s * w, (0, 0)).abs() ** 2, s)  # independent of the centring
    power = alias_power(kernel, s, (h, w))
    assert power.shape == (3, h, w) and rel_err(power, ref) < 1e-12
    assert torch.equal(alias_power(kernel, s, (h, w), columns=w // 2 + 1), power[..., : w // 2 + 1])
