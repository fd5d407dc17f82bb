"""The functional layers against literal full-spectrum transcriptions of the published layers, plus
precision, autocast, batching and gradient checks for every solver."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from wrcli.ops import converse, converse_layer, exact, official, wrc_layer

from .test_ops_oracle import problem, rel_err


def p2o(kernel, H, W, shift):
    psf = torch.zeros(kernel.shape[0], H, W, dtype=kernel.dtype)
    psf[:, : kernel.shape[-2], : kernel.shape[-1]] = kernel
    return torch.fft.fftn(torch.roll(psf, (-shift[0], -shift[1]), dims=(-2, -1)), dim=(-2, -1))


def block_mean(z, s):
    *lead, H, W = z.shape
    return z.reshape(*lead, s, H // s, s, W // s).mean(dim=(-4, -2))


def published_wrc(y, kernel, bias, conv_low, conv_high, s=2, pad=2, eps=1e-5, centre="image"):
    """The published WRC layer, step by step, on full complex spectra (fftn/ifftn, zero insertion, repeat)."""
    yp = F.pad(y, [pad] * 4, mode="circular")
    wl = torch.log1p(F.conv2d(yp, conv_low, padding=1).clamp(-1e4, 1e4) ** 2)
    lam = (F.softplus(bias) + eps).reshape(1, -1, 1, 1)
    B, C, h, w = yp.shape
    H, W = s * h, s * w
    zi = torch.zeros(B, C, H, W, dtype=y.dtype)
    zi[..., ::s, ::s] = wl * yp
    x0 = F.interpolate(yp, scale_factor=s, mode="bilinear", align_corners=True)
    wh = torch.log1p(F.conv2d(x0, conv_high, padding=1).clamp(-1e4, 1e4) ** 2)
    shift = (H // 2, W // 2) if centre == "image" else (kernel.shape[-2] // 2, kernel.shape[-1] // 2)
    fb = p2o(kernel, H, W, shift)
    fr = fb.conj() * torch.fft.fftn(zi, dim=(-2, -1)) + torch.fft.fftn((wh + lam) * x0, dim=(-2, -1))
    num = wl * block_mean(fb * fr, s)
    den = (wl * block_mean(fb.abs() ** 2, s) + block_mean(wh, s) + lam).clamp_min(1e-3)
    fx = (fr - fb.conj() * (num / den).repeat(1, 1, s, s)) / (wh + lam).clamp_min(1e-3)
    out = torch.fft.ifftn(fx, dim=(-2, -1)).real
    return out[..., pad * s : H - pad * s, pad * s : W - pad * s]


def published_converse2d(y, kernel, bias, s=2, pad=2, eps=1e-5):
    """ConverseNet's Converse2D: circular pad, nearest prior, λ = sigmoid(b − 9) + eps, division by λ."""
    yp = F.pad(y, [pad] * 4, mode="circular")
    B, C, h, w = yp.shape
    H, W = s * h, s * w
    lam = (torch.sigmoid(bias - 9) + eps).reshape(1, -1, 1, 1)
    x0 = F.interpolate(yp, scale_factor=s, mode="nearest")
    zi = torch.zeros(B, C, H, W, dtype=y.dtype)
    zi[..., ::s, ::s] = yp
    fb = p2o(kernel, H, W, (kernel.shape[-2] // 2, kernel.shape[-1] // 2))
    fr = fb.conj() * torch.fft.fftn(zi, dim=(-2, -1)) + lam * torch.fft.fftn(x0, dim=(-2, -1))
    q = block_mean(fb * fr, s) / (block_mean(fb.abs() ** 2, s) + lam)
    out = torch.fft.ifftn((fr - fb.conj() * q.repeat(1, 1, s, s)) / lam, dim=(-2, -1)).real
    return out[..., pad * s : H - pad * s, pad * s : W - pad * s]


def layer_params(C=4, k=2, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        kernel=torch.softmax(torch.randn(C, k * k, generator=g, dtype=dtype), -1).reshape(C, k, k),
        bias=0.3 * torch.randn(C, generator=g, dtype=dtype),
        conv_low=0.3 * torch.randn(C, C, 3, 3, generator=g, dtype=dtype),
        conv_high=0.3 * torch.randn(C, C, 3, 3, generator=g, dtype=dtype),
    )


@pytest.mark.parametrize("shape", [(2, 4, 6, 6), (1, 4, 5, 7), (3, 4, 3, 2)])
@pytest.mark.parametrize("centre", ["image", "kernel"])
def test_wrc_layer_equals_published_layer(shape, centre):
    y = torch.randn(*shape, dtype=torch.float64)
    prm = layer_params(shape[1])
    ref = published_wrc(y, **prm, centre=centre)
    out = wrc_layer(y, **prm, centre=centre)
    assert out.shape == (shape[0], shape[1], 2 * shape[2], 2 * shape[3])
    assert rel_err(out, ref) < 1e-10
    prm32 = {k: v.float() for k, v in prm.items()}
    assert rel_err(wrc_layer(y.float(), **prm32, centre=centre), ref) < 1e-5


def test_wrc_layer_on_a_single_token_and_scale_three():
    y = torch.randn(2, 4, 1, 1, dtype=torch.float64)
    prm = layer_params(4, k=3)
    assert rel_err(wrc_layer(y, **prm, scale=3, padding=1), published_wrc(y, **prm, s=3, pad=1)) < 1e-10
    out = wrc_layer(y, **prm, padding=3)  # padding larger than the map wraps around
    assert out.shape == (2, 4, 2, 2) and torch.isfinite(out).all()


@pytest.mark.parametrize("shape", [(2, 4, 6, 6), (1, 3, 5, 7)])
def test_converse_layer_equals_converse2d(shape):
    y = torch.randn(*shape, dtype=torch.float64)
    prm = layer_params(shape[1])
    for bias in (prm["bias"], prm["bias"] + 9):  # λ ≈ 1.2e-4 (Converse2D's init) and λ ≈ 0.5
        ref = published_converse2d(y, prm["kernel"], bias)
        assert rel_err(converse_layer(y, prm["kernel"], bias), ref) < 1e-9
    # at Converse2D's initial λ the correction form keeps float32 accurate where division by λ does not
    out32 = converse_layer(y.float(), prm["kernel"].float(), prm["bias"].float())
    assert rel_err(out32, published_converse2d(y, prm["kernel"], prm["bias"])) < 1e-5


def test_exact_layer_minimises_the_objective_better_than_official():
    y = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    prm = layer_params(4)
    a, b = wrc_layer(y, **prm, solver="exact"), wrc_layer(y, **prm, solver="official")
    assert a.shape == b.shape and not torch.allclose(a, b)


# ---------------------------------------------------------------- precision and autocast
SOLVERS = {
    "official": lambda p: official(**p, scale=2),
    "exact": lambda p: exact(**p, scale=2),
    "converse": lambda p: converse(p["y"], p["x0"], p["kernel"], p["lam"], scale=2),
}


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 4e-3), (torch.bfloat16, 3e-2)])
def test_low_precision_inputs(name, dtype, tol):
    p32 = {k: v.float() for k, v in problem(5, 7, 2, 2, 2).items()}
    low = {k: v.to(dtype) for k, v in p32.items()}
    out = SOLVERS[name](low)
    assert out.dtype == dtype
    # computed in float32 from the same (rounded) inputs, rounded once at the end
    same_inputs = SOLVERS[name]({k: v.float() for k, v in low.items()})
    assert torch.equal(out, same_inputs.to(dtype))
    assert rel_err(out, SOLVERS[name](p32)) < tol


@pytest.mark.parametrize("solver", ["official", "exact"])
def test_autocast_does_not_lower_the_solve(solver):
    y = torch.randn(2, 4, 6, 5)
    prm = {k: v.float() for k, v in layer_params(4).items()}
    ref = wrc_layer(y, **prm, solver=solver)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = wrc_layer(y, **prm, solver=solver)
        out_bf16 = wrc_layer(y.bfloat16(), **prm, solver=solver)
    assert out.dtype == torch.float32 and torch.equal(out, ref)
    assert out_bf16.dtype == torch.bfloat16 and rel_err(out_bf16, ref) < 3e-2


@pytest.mark.parametrize("name", SOLVERS)
def test_batch_is_independent_per_sample(name):
    p = problem(4, 5, 2, 2, 2, B=3)
    full = SOLVERS[name](p)
    for b in range(3):
        one = {k: (v[b : b + 1] if v.dim() == 4 else v) for k, v in p.items()}
        assert rel_err(full[b : b + 1], SOLVERS[name](one)) < 1e-12


# ---------------------------------------------------------------- gradients
@pytest.mark.slow
@pytest.mark.parametrize("centre", ["image", "kernel"])
@pytest.mark.parametrize("name", SOLVERS)
def test_gradcheck_solvers(name, centre):
    p = problem(3, 4, 2, 2, 2, B=2, C=2)
    keys = ["y", "x0", "kernel", "lam"] if name == "converse" else ["y", "x0", "w_low", "w_high", "kernel", "lam"]
    fn = {"official": official, "exact": exact, "converse": converse}[name]
    inputs = tuple(p[k].requires_grad_() for k in keys)
    assert gradcheck(lambda *t: fn(*t, scale=2, centre=centre), inputs)


def test_gradcheck_solvers_scale_three_odd_grid():
    p = problem(3, 1, 3, 3, 2, B=1, C=2)
    args = tuple(p[k].requires_grad_() for k in ["y", "x0", "w_low", "w_high", "kernel", "lam"])
    assert gradcheck(lambda *t: official(*t, scale=3), args)
    assert gradcheck(lambda *t: exact(*t, scale=3), args)
    assert gradcheck(lambda y, x0, k, lam: converse(y, x0, k, lam, scale=3), (args[0], args[1], args[4], args[5]))


@pytest.mark.parametrize("solver", ["official", "exact"])
def test_gradcheck_wrc_layer(solver):
    y = torch.randn(1, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    prm = {k: v.requires_grad_() for k, v in layer_params(3).items()}
    assert gradcheck(lambda y, *t: wrc_layer(y, *t, solver=solver), (y, *prm.values()))


def test_gradcheck_converse_layer():
    y = torch.randn(1, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    prm = layer_params(3)
    k, b = prm["kernel"].requires_grad_(), (prm["bias"] + 9).requires_grad_()
    assert gradcheck(converse_layer, (y, k, b))
