"""Large outputs in bounded memory: tiled passes equal the one-piece computation, the budget picks the tiles,
and the memory check still refuses absurd sizes up front (issue 16 item 4).

Tolerance of the equality checks: rtol = atol = 1e-5. Tiling changes no operation and no operand (each output
pixel is the same sum of the same products, see wrcli.models.blocks.tiled); only the convolution algorithm
oneDNN picks for a tile's shape may sum in another order, a float32 rounding of ~1e-7 relative per layer.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from wrcli.errors import WrcError
from wrcli.models import create_upsampler, memory
from wrcli.models.blocks import (
    ConvNorm,
    bottlenecks,
    conv1x1,
    geometry,
    out_length,
    receptive,
    tiled,
)
from wrcli.ops import wrc_layer

TOL = {"rtol": 1e-5, "atol": 1e-5}


def trained_like(model: nn.Module) -> nn.Module:
    """Random BatchNorm statistics and affines (fresh ones are the identity), in eval mode."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def wrc():
    torch.manual_seed(0)
    return trained_like(create_upsampler("wrc", 16, 14))


def untiled(model):
    one_piece = copy.deepcopy(model)
    one_piece.tile_sizes = ()
    return one_piece


def test_geometry_of_the_image_branch():
    chain = nn.Sequential(ConvNorm(conv1x1(3, 4), act=True), bottlenecks(4, (2, 1, 2, 1)))
    layers = geometry(chain)
    assert [g for g in layers if g != (1, 1, 0)] == [(3, 2, 1), (3, 1, 1), (3, 2, 1), (3, 1, 1)]
    assert receptive(layers) == (19, 4, 9)  # the halo: output o reads input rows [4o − 9, 4o + 10)
    assert [out_length(layers, n) for n in (70, 67, 1)] == [18, 17, 1]
    with pytest.raises(TypeError):
        geometry(nn.Linear(2, 2))


@pytest.mark.parametrize("hw", [(70, 98), (67, 101), (9, 5)])
@pytest.mark.parametrize("tile", [1, 3, 5, 7, 100])
def test_tiled_chain_equals_one_piece(hw, tile):
    torch.manual_seed(0)
    chain = trained_like(nn.Sequential(ConvNorm(conv1x1(3, 4), act=True), bottlenecks(4, (2, 1, 2, 1))))
    x = torch.randn(2, 3, *hw)
    with torch.inference_mode():
        ref = chain(x)
        out = tiled(chain, x, geometry(chain), tile)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, **TOL)


@pytest.mark.parametrize("image_hw", [(70, 98), (67, 101)])  # the patch grid exactly, and a resized guidance
@pytest.mark.parametrize("tile", [1, 3, 5, 16])
def test_a_tiled_pass_equals_one_piece(wrc, image_hw, tile):
    feats, image = torch.randn(2, 16, 5, 7), torch.randn(2, 3, *image_hw)
    with torch.inference_mode():
        torch.testing.assert_close(wrc(feats, image, tile=tile), wrc(feats, image), **TOL)


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_upsample_in_tiles_equals_one_piece(wrc, scale):
    m = copy.deepcopy(wrc)
    m.tile_sizes = (5, 3)  # tiles that split every map of every pass unevenly
    feats, image = torch.randn(1, 16, 3, 5), torch.randn(1, 3, 42, 70)
    size = m.target_size((3, 5), scale, None)
    budget = m.peak_bytes(feats, image, size, 3)
    assert m.plan_tile(feats, image, size, budget) in (5, 3)
    with torch.inference_mode():
        out = m.upsample(feats, image, scale=scale, max_memory=budget)
        ref = untiled(m).upsample(feats, image, scale=scale)
    torch.testing.assert_close(out, ref, **TOL)


def test_skip_and_a_folded_model_tile_too():
    torch.manual_seed(0)
    m = trained_like(create_upsampler("wrc", 16, 14, skip=True))
    torch.nn.init.normal_(m.head.weight)
    m.fold_batchnorm()
    feats, image = torch.randn(1, 16, 4, 6), torch.randn(1, 3, 56, 84)
    with torch.inference_mode():
        torch.testing.assert_close(m(feats, image, tile=3), m(feats, image), **TOL)


def test_tiles_need_eval_mode(wrc):
    m = copy.deepcopy(wrc).train()
    feats, image = torch.randn(1, 16, 3, 5), torch.randn(1, 3, 42, 70)
    assert m.plan_tile(feats, image, (24, 40), None) is None
    with pytest.raises(ValueError, match="eval mode"):
        m(feats, image, tile=4)


def shipped_shape():
    """The ViT-S/14 WRC and ×8 on a 448 image (random weights: only the shapes matter here)."""
    return create_upsampler("wrc", 384, 14).eval(), torch.randn(1, 384, 32, 32), torch.randn(1, 3, 448, 448)


def test_the_budget_chooses_the_largest_tile_that_fits():
    m, feats, image = shipped_shape()
    peaks = {t: m.peak_bytes(feats, image, (256, 256), t) for t in (None, *m.tile_sizes)}
    assert peaks[None] > peaks[64] >= peaks[32] >= peaks[16]
    assert m.plan_tile(feats, image, (256, 256), None) == 64
    for t in m.tile_sizes:
        chosen = m.plan_tile(feats, image, (256, 256), peaks[t])
        assert peaks[chosen] <= peaks[t] and all(peaks[u] > peaks[t] for u in m.tile_sizes if u > chosen)
    assert m.plan_tile(feats, image, (256, 256), 1) == 16  # nothing fits: the smallest, then refused


def test_x8_at_448_is_admitted_in_a_budget_the_one_piece_pass_exceeds(monkeypatch):
    m, feats, image = shipped_shape()
    budget = (m.peak_bytes(feats, image, (256, 256), 64) + m.peak_bytes(feats, image, (256, 256))) // 2
    calls = []
    monkeypatch.setattr(m, "forward", lambda x, g, tile=None: calls.append(tile) or x.new_zeros(*x.shape[:2], 2 * x.shape[-2], 2 * x.shape[-1]))
    assert m.upsample(feats, image, scale=8, max_memory=budget).shape == (1, 384, 256, 256)
    assert calls == [64, 64, 64]
    with pytest.raises(WrcError, match=r"^upsampling features .* needs about .* at once \(estimate\), more than the .* allowed \(max_memory\)"):
        untiled(m).upsample(feats, image, scale=8, max_memory=budget)


def test_absurd_sizes_are_still_refused_up_front(wrc, monkeypatch):
    feats, image = torch.randn(1, 16, 3, 5), torch.randn(1, 3, 42, 70)
    m = copy.deepcopy(wrc)
    monkeypatch.setattr(m, "forward", lambda *a, **k: pytest.fail("computed despite the memory bound"))
    with pytest.raises(WrcError, match="of memory available on cpu"):
        m.upsample(feats, image, size=(100_000, 100_000))
    with pytest.raises(WrcError, match=r"allowed \(max_memory\)"):
        m.upsample(feats, image, scale=8, max_memory=2**20)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**20)  # less free than allowed: the free memory binds
    with pytest.raises(WrcError, match="of memory available on cpu"):
        m.upsample(feats, image, scale=8, max_memory=2**40)


@pytest.mark.parametrize("solver", ["official", "exact"])
@pytest.mark.parametrize("chunk", [1, 4, 5, 13, 100])
def test_the_wrc_layer_in_channel_chunks_equals_one_piece(solver, chunk):
    torch.manual_seed(0)
    c = 13
    y, bias = torch.randn(2, c, 9, 11), torch.randn(c)
    kernel = torch.softmax(torch.randn(c, 4), -1).view(c, 2, 2)
    conv_low, conv_high = 0.3 * torch.randn(c, c, 3, 3), 0.3 * torch.randn(c, c, 3, 3)
    ref = wrc_layer(y, kernel, bias, conv_low, conv_high, solver=solver)
    out = wrc_layer(y, kernel, bias, conv_low, conv_high, solver=solver, chunk=chunk)
    torch.testing.assert_close(out, ref, **TOL)


def test_the_layer_chunk_follows_the_tile():
    m, _, _ = shipped_shape()
    assert m.layer_chunk((128, 128), None) is None
    assert [m.layer_chunk((n, n), 64) for n in (32, 64, 128)] == [540, 151, 40]  # ×8 at 448: one (540 ≥ M = 208), two, six


@pytest.mark.parametrize("scale", [2, 8])
def test_a_channels_last_model_gives_the_same_contiguous_output(wrc, scale):
    """What :func:`wrcli.session.load_upsamplers` does on a CPU: the same maps to float rounding, NCHW out."""
    m = copy.deepcopy(wrc).fold_batchnorm()
    features, image = torch.randn(2, 16, 5, 7), torch.randn(2, 3, 70, 98)
    with torch.inference_mode():
        reference = m.upsample(features, image, scale=scale)
        out = copy.deepcopy(m).to(memory_format=torch.channels_last).upsample(features, image, scale=scale)
    assert out.is_contiguous() and out.shape == reference.shape
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)


def test_session_upsamplers_are_channels_last_on_the_cpu(vits_weights):
    from wrcli.session import open_session

    s = open_session("bilinear,wrc", backbone="vit_small_patch14_dinov2", weights=str(vits_weights), device="cpu")
    conv = next(p for p in s.upsamplers["wrc"].parameters() if p.dim() == 4 and p.shape[-1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
