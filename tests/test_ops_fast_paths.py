"""Helpers of the official solve's eager path against their definitions."""

from __future__ import annotations

import itertools

import pytest
import torch

from wrcli.ops import alias_power, otf
from wrcli.ops.sampling import reverse

from .test_ops_layers import block_mean, p2o
from .test_ops_oracle import problem, rel_err, shift_of

# (h, w, s, kh, kw): odd and non-square grids, s = 2 and 3, kernels 1×1, 1×2, 2×2, 3×3 and 3×2 (≤ s),
# and 3×3, 4×2 at s = 2 (larger than the scale)
GEOMETRIES = [(4, 4, 2, 2, 2), (5, 3, 2, 2, 2), (3, 6, 2, 1, 2), (5, 3, 3, 1, 2), (3, 4, 3, 3, 3), (4, 5, 3, 3, 2),
              (2, 2, 2, 1, 1), (4, 5, 2, 3, 3), (3, 3, 2, 4, 2), (1, 1, 2, 2, 2)]
CENTRES = ["image", "kernel"]


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
