"""Upsampler modules: architecture size, shapes, the upsample() contract, baselines, gradients, dtypes."""

from __future__ import annotations

import subprocess
import sys
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from wrcli.defaults import DEFAULT_BACKBONE
from wrcli.errors import WrcError
from wrcli.models import (
    Upsampler,
    WRCLayer,
    WRCUpsampler,
    create_upsampler,
    list_upsamplers,
    load_upsampler,
)
from wrcli.models.compat import BackboneSpec, check_fits, with_sizes
from wrcli.models.factory import untrained_message

C = 8  # small channel count for speed (the guidance branch keeps its 32 channels)
REGISTRY = ["wrc", "wrc-exact", "wrc-converse", "nearest", "bilinear", "bicubic", "transposed", "converse2d"]
LEARNED_WRC = ["wrc", "wrc-exact", "wrc-converse"]
INTERPOLATIONS = ["nearest", "bilinear", "bicubic"]


def inputs(b=1, c=C, h=3, w=4, patch=14, dtype=torch.float32):
    return torch.randn(b, c, h, w, dtype=dtype), torch.randn(b, 3, h * patch, w * patch)


def make(name, c=C, patch=14, **options):
    return create_upsampler(name, c, patch, **options)


# ---------------------------------------------------------------------------------------------------
# architecture
# ---------------------------------------------------------------------------------------------------
def test_wrc_parameter_count_matches_paper():
    m = WRCUpsampler(384, 14)
    total = m.num_parameters()
    layer = sum(p.numel() for p in m.wrc.parameters())
    print(f"\nWRCUpsampler(384, 14): {total:,} parameters; WRC layer: {layer:,} on {m.mid_channels} channels")
    assert 3.95e6 <= total <= 4.0e6
    assert total == 3_979_216
    assert m.mid_channels == 208 and m.wrc.channels == 208
    assert layer == 779_792  # 2·208²·9 + 208·4 + 208
    assert m.wrc.weight.shape == (1, 208, 2, 2) and m.wrc.bias.shape == (1, 208, 1, 1)
    assert m.config["parameters"] == total


def test_wrc_layer_parameters_and_init():
    layer = WRCLayer(16)
    assert layer.weight.shape == (1, 16, 2, 2)
    assert torch.all(layer.weight > 0)
    torch.testing.assert_close(layer.weight.sum(dim=(-1, -2)), torch.ones(1, 16))
    assert torch.equal(layer.bias, torch.zeros(1, 16, 1, 1))
    assert layer.w_conv_low.weight.shape == (16, 16, 3, 3) and layer.w_conv_low.bias is None
    assert layer.w_conv_high.weight.shape == (16, 16, 3, 3) and layer.w_conv_high.bias is None
    conv = WRCLayer(16, solver="converse")
    assert {n for n, _ in conv.named_parameters()} == {"weight", "bias"}
    with pytest.raises(ValueError, match="solver"):
        WRCLayer(4, solver="nope")
    with pytest.raises(ValueError, match="centre"):
        WRCLayer(4, centre="middle")


@pytest.mark.parametrize("solver", ["official", "exact", "converse"])
def test_wrc_layer_208_channels(solver):
    layer = WRCLayer(208, solver=solver).eval()
    y = torch.randn(1, 208, 5, 7)
    with torch.no_grad():
        out = layer(y)
    assert out.shape == (1, 208, 10, 14) and torch.isfinite(out).all()


def test_wrc_layer_centre_option_changes_official_output():
    torch.manual_seed(1)
    a = WRCLayer(4).eval()
    b = WRCLayer(4, centre="kernel").eval()
    b.load_state_dict(a.state_dict())
    y = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        assert not torch.allclose(a(y), b(y))


@pytest.mark.parametrize(
    "patch,b,h,w",
    [(8, 1, 4, 4), (14, 2, 4, 4), (16, 1, 4, 4), (14, 1, 3, 5), (14, 3, 5, 3), (8, 2, 3, 7), (16, 2, 5, 2)],
)
def test_wrc_shapes(patch, b, h, w):
    m = WRCUpsampler(C, patch).eval()
    feats, img = inputs(b, C, h, w, patch)
    with torch.no_grad():
        out = m(feats, img)
    assert out.shape == (b, C, 2 * h, 2 * w) and torch.isfinite(out).all()


@pytest.mark.parametrize("image_hw", [(50, 70), (30, 30), (100, 61)])
def test_wrc_any_image_size(image_hw):
    """The image branch is brought to the 2× token grid whatever the image size."""
    m = WRCUpsampler(C, 14).eval()
    feats = torch.randn(1, C, 4, 5)
    with torch.no_grad():
        out = m(feats, torch.randn(1, 3, *image_hw))
    assert out.shape == (1, C, 8, 10)


def test_to_double_grid_rule():
    g = torch.randn(1, 2, 8, 10)
    assert WRCUpsampler.to_double_grid(g, 4, 5) is g  # already (2h, 2w): patch 8
    g16 = torch.randn(1, 2, 16, 20)  # (4h, 4w): patch 16 → max-pool only
    assert torch.equal(WRCUpsampler.to_double_grid(g16, 4, 5), F.max_pool2d(g16, 2))
    g14 = torch.randn(1, 2, 14, 17)  # patch 14: bilinear to (4h, 4w), then max-pool
    expect = F.max_pool2d(F.interpolate(g14, size=(16, 20), mode="bilinear", align_corners=False), 2)
    assert torch.equal(WRCUpsampler.to_double_grid(g14, 4, 5), expect)


@pytest.mark.parametrize("solver", ["official", "exact"])
def test_skip_starts_as_bilinear_and_learns_a_correction(solver):
    torch.manual_seed(0)
    m = WRCUpsampler(C, 14, solver=solver, skip=True)
    x, img = inputs(b=2)
    bilinear = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.equal(m(x, img), bilinear)
    assert m.num_parameters() == WRCUpsampler(C, 14, solver=solver).num_parameters()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for _ in range(2):  # the first step moves the zero head, the second reaches the layers behind it
        opt.zero_grad()
        (m(x, img) - 2 * bilinear).square().mean().backward()
        opt.step()
    assert m.wrc.weight.grad.abs().sum() > 0 and m.image_stem[0].weight.grad.abs().sum() > 0
    assert not torch.equal(m(x, img), bilinear)


# ---------------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------------
def test_registry_lists_all_names_with_descriptions():
    table = list_upsamplers()
    for name in REGISTRY:
        assert name in table and isinstance(table[name], str) and table[name] and "\n" not in table[name]


def test_registry_attributes():
    for name in REGISTRY:
        m = make(name)
        assert isinstance(m, Upsampler) and m.name == name and m.config["architecture"] == name
    assert make("wrc").solver == "official" and make("wrc-exact").solver == "exact"
    assert make("wrc-converse").solver == "converse"
    assert make("wrc").guided and not make("transposed").guided and not make("bilinear").guided
    assert make("wrc").native_scale == 2 and make("converse2d").native_scale == 2 and make("nearest").native_scale is None


def test_unknown_name_lists_known():
    with pytest.raises(WrcError, match="known: .*wrc.*bilinear"):
        load_upsampler("lanczos")
    with pytest.raises(WrcError, match="known"):
        create_upsampler("lanczos", 4)


def test_learned_without_channels_is_an_error():
    with pytest.raises(WrcError, match="channel"):
        load_upsampler("wrc")


def test_load_untrained_warns_and_uses_backbone():
    bb = SimpleNamespace(name="dinov2_vits14", arch="vit_test_patch14", patch_size=14, channels=C, embed_dim=C)
    with pytest.warns(UserWarning, match="untrained"):
        m = load_upsampler("wrc", backbone=bb)
    assert m.channels == C and m.patch_size == 14 and not m.training
    assert m.config["backbone"] == {"name": "dinov2_vits14", "arch": "vit_test_patch14"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_upsampler("bilinear")  # parameter-free: no warning
    with pytest.raises(WrcError, match="disagrees"):
        load_upsampler("wrc", backbone=bb, channels=C + 1)


# ---------------------------------------------------------------------------------------------------
# layers: registry → checkpoint → factory, each importing only those below it
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code, absent",
    [
        ("import wrcli.models.registry as r; r.create_upsampler('wrc', 8, 14)", ["checkpoint", "factory"]),
        ("from wrcli.models import create_upsampler, list_upsamplers, WRCUpsampler", ["checkpoint", "factory"]),
        ("import wrcli.models.checkpoint", ["factory"]),
    ],
)
def test_a_layer_imports_nothing_above_it(code, absent):
    probe = f"{code}; import sys; print(sorted(m for m in {absent!r} if 'wrcli.models.' + m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", (code, done.stdout)


def test_the_public_api_resolves_to_its_layers():
    import wrcli
    from wrcli import models
    from wrcli.models import checkpoint, factory

    assert {name: getattr(models, name) for name in models.__all__}  # every listed name resolves
    assert models.load_upsampler is factory.load_upsampler is wrcli.load_upsampler
    assert models.default_upsampler is factory.default_upsampler
    assert models.save_upsampler is checkpoint.save_upsampler and models.load_checkpoint is checkpoint.load_checkpoint
    with pytest.raises(AttributeError, match="no attribute 'lanczos'"):
        models.lanczos  # noqa: B018


# ---------------------------------------------------------------------------------------------------
# the one backbone-compatibility check
# ---------------------------------------------------------------------------------------------------
VITS = BackboneSpec("dinov2_vits14", "vit_small_patch14_dinov2", 384, 14)


@pytest.mark.parametrize(
    "takes, strict, match",
    [
        (BackboneSpec(channels=768), True, r"^thing \(768 channels\) disagrees with backbone 'dinov2_vits14' \(384 channels\); fix$"),
        (BackboneSpec(channels=384, patch_size=16), True, r"\(patch size 16\) disagrees with .* \(patch size 14\); fix$"),
        (BackboneSpec(arch="vit_other", channels=384), True, r"\(trained on 'vit_other'\) .*'vit_small_patch14_dinov2'.*strict=False"),
        (BackboneSpec(arch="vit_other", channels=768), False, r"768 channels"),  # strict=False relaxes the arch only
    ],
)
def test_check_fits_rejects_each_mismatch_in_one_line(takes, strict, match):
    with pytest.raises(WrcError, match=match) as e:
        check_fits("thing", takes, VITS, strict=strict, hint="fix")
    assert "\n" not in str(e.value)


def test_check_fits_passes_what_agrees_or_is_unknown():
    check_fits("thing", BackboneSpec("x", "vit_small_patch14_dinov2", 384, 14), VITS)
    check_fits("thing", BackboneSpec(arch="vit_other", channels=384, patch_size=14), VITS, strict=False)
    check_fits("thing", BackboneSpec(), VITS)  # nothing known about the thing
    check_fits("thing", BackboneSpec(channels=384, patch_size=16), BackboneSpec(channels=384))  # patch unknown
    check_fits("thing", BackboneSpec(channels=1, patch_size=1, arch="a"), None)  # no backbone: nothing to check


def test_with_sizes_merges_the_keywords_into_the_backbone():
    assert with_sizes(VITS, None, None) is VITS and with_sizes(None, None, None) is None
    assert with_sizes(None, 8, None) == BackboneSpec(channels=8)
    assert with_sizes(VITS, 384, 14) == VITS
    assert with_sizes(BackboneSpec(name="n"), 8, 14) == BackboneSpec(name="n", channels=8, patch_size=14)
    with pytest.raises(WrcError, match=r"requested upsampler \(patch size 8\) disagrees with backbone 'dinov2_vits14'"):
        with_sizes(VITS, None, 8)
    assert BackboneSpec(channels=8).label == "the requested sizes" and VITS.info == {"name": VITS.name, "arch": VITS.arch}


def test_backbone_spec_of_a_backbone_takes_one_layers_channels():
    from wrcli.backbones import load_backbone

    assert BackboneSpec.of(None) is None
    bb = load_backbone("vit_small_patch14_dinov2", pretrained=False, depth=2, embed_dim=64, num_heads=2, layers=[0, 1])
    assert bb.channels == 128  # two layers stored, each through the same upsampler
    assert BackboneSpec.of(bb) == BackboneSpec("vit_small_patch14_dinov2", "vit_small_patch14_dinov2", 64, 14)


# ---------------------------------------------------------------------------------------------------
# the untrained-upsampler warning: one line, and how to get a trained one
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, how",
    [
        ("wrc-exact", "train one with `wrc train IMAGES --out wrc-exact.safetensors --solver exact` and pass that file"),
        ("wrc-converse", "`wrc train IMAGES --out wrc-converse.safetensors --solver converse`"),
        ("wrc", "`wrc train IMAGES --out wrc.safetensors --solver official`"),
        ("transposed", "pass a trained transposed checkpoint file (`wrc train` trains the WRC family only)"),
        ("converse2d", "pass a trained converse2d checkpoint file (`wrc train` trains the WRC family only)"),
    ],
)
def test_untrained_warning_says_how_to_get_a_checkpoint(name, how):
    bb = SimpleNamespace(name=DEFAULT_BACKBONE, arch="vit_test_patch14", patch_size=14, embed_dim=C)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_upsampler(name, backbone=bb)
    [warning] = caught
    msg = str(warning.message)
    assert warning.category is UserWarning and warning.filename == __file__  # points at the caller
    assert msg.startswith(f"upsampler {name!r} is untrained (no checkpoint for vit_test_patch14)")
    assert how in msg and "\n" not in msg and len(msg) < 220, msg


def test_untrained_warning_names_a_backbone_other_than_the_default():
    other = BackboneSpec("vit_small_patch16_dinov3", "vit_small_patch16_dinov3", 384, 16)
    assert "`wrc train IMAGES --backbone vit_small_patch16_dinov3 --out wrc.safetensors --solver official`" in (
        untrained_message("wrc", other)
    )
    assert untrained_message("wrc-exact", None) == (
        "upsampler 'wrc-exact' is untrained, its output meaningless: "
        "train one with `wrc train IMAGES --out wrc-exact.safetensors --solver exact` and pass that file"
    )


# ---------------------------------------------------------------------------------------------------
# upsample(): scales and sizes for every entry
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", REGISTRY)
def test_upsample_scales_and_sizes(name):
    m = make(name).eval()
    feats, img = inputs(2, C, 3, 4)
    with torch.no_grad():
        for s in (2, 4, 8):
            assert m.upsample(feats, img, scale=s).shape == (2, C, 3 * s, 4 * s)
        assert m.upsample(feats, img, size=(37, 50)).shape == (2, C, 37, 50)
        assert m.upsample(feats, img, size=9).shape == (2, C, 9, 9)
        assert m.upsample(feats, img, scale=1.5).shape == (2, C, 4, 6)
        out = m.upsample(feats, img, scale=1)
        assert torch.equal(out, feats)


def test_learned_upsample_passes_and_guidance_resize():
    m = make("wrc").eval()
    seen = []
    real_forward = m.forward

    def spy(features, image, **options):
        seen.append((tuple(features.shape[-2:]), tuple(image.shape[-2:])))
        return real_forward(features, image, **options)

    m.forward = spy
    feats, img = inputs(1, C, 3, 4)
    with torch.no_grad():
        out8 = m.upsample(feats, img, scale=8)
        assert seen == [((3, 4), (42, 56)), ((6, 8), (84, 112)), ((12, 16), (168, 224))]
        seen.clear()
        # (37, 50) needs 4 passes (3×4 → 48×64 ≥ 37×50), then one antialiased bilinear shrink
        out = m.upsample(feats, img, size=(37, 50))
        assert len(seen) == 4
        seen.clear()
        full = m.upsample(feats, img, scale=16)
        torch.testing.assert_close(
            out, F.interpolate(full, size=(37, 50), mode="bilinear", align_corners=False, antialias=True)
        )
        # exact ×2 multiples take no final resize
        seen.clear()
        m.forward = real_forward
        img2 = F.interpolate(img, size=(84, 112), mode="bilinear", align_corners=False)
        img4 = F.interpolate(img2, size=(168, 224), mode="bilinear", align_corners=False)
        assert torch.equal(m(m(m(feats, img), img2), img4), out8)


def test_target_not_larger_than_input_takes_no_pass():
    m = make("wrc").eval()
    feats, img = inputs(1, C, 6, 6)
    out = m.upsample(feats, img, size=(4, 5))
    ref = F.interpolate(feats, size=(4, 5), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("mode", INTERPOLATIONS)
@pytest.mark.parametrize("size", [(6, 8), (12, 16), (24, 32), (37, 50), (2, 3), (5, 9)])
def test_interpolations_equal_f_interpolate(mode, size):
    feats = torch.randn(2, 5, 3, 4)
    out = create_upsampler(mode).upsample(feats, size=size)
    if mode == "nearest":
        ref = F.interpolate(feats, size=size, mode="nearest-exact")
    else:
        shrink = size[0] < 3 or size[1] < 4
        ref = F.interpolate(feats, size=size, mode=mode, align_corners=False, antialias=shrink)
    assert torch.equal(out, ref)


def test_interpolation_forward_is_x2_and_any_channels():
    m = create_upsampler("bicubic", 384, 14)
    feats = torch.randn(1, 7, 3, 5)  # channel-agnostic
    assert torch.equal(m(feats), F.interpolate(feats, size=(6, 10), mode="bicubic", align_corners=False))
    assert torch.equal(create_upsampler("nearest")(feats), feats.repeat_interleave(2, -2).repeat_interleave(2, -1))


def test_untrained_transposed_equals_nearest():
    m = make("transposed", c=6)
    feats = torch.randn(2, 6, 5, 3)
    nearest = feats.repeat_interleave(2, -2).repeat_interleave(2, -1)
    with torch.no_grad():
        assert torch.equal(m(feats), nearest)
        assert torch.equal(m.upsample(feats, scale=4), create_upsampler("nearest").upsample(feats, scale=4))


# ---------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------
def test_upsample_argument_errors():
    m = make("wrc")
    feats, img = inputs()
    with pytest.raises(ValueError, match="scale must be"):
        m.upsample(feats, img, scale=0.5)
    with pytest.raises(ValueError, match="exactly one"):
        m.upsample(feats, img, scale=2, size=(6, 8))
    with pytest.raises(ValueError, match="exactly one"):
        m.upsample(feats, img)
    with pytest.raises(ValueError, match="image-guided"):
        m.upsample(feats, scale=2)
    with pytest.raises(ValueError, match="expects 8-channel features, got 9"):
        m.upsample(torch.randn(1, 9, 3, 4), img, scale=2)
    with pytest.raises(ValueError, match="size"):
        m.upsample(feats, img, size=(0, 4))
    with pytest.raises(ValueError, match="batch"):
        m.upsample(torch.randn(2, C, 3, 4), img, scale=2)
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        m.upsample(torch.randn(C, 3, 4), img, scale=2)
    with pytest.raises(ValueError, match="expects"):
        make("transposed").upsample(torch.randn(1, C + 1, 3, 4), scale=2)


# ---------------------------------------------------------------------------------------------------
# training behaviour, determinism, precision
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LEARNED_WRC + ["transposed", "converse2d"])
def test_gradients_reach_all_parameters(name):
    m = make(name).train()
    feats, img = inputs(2, C, 3, 4)
    m.upsample(feats, img, scale=2).square().mean().backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("name", REGISTRY)
def test_eval_determinism(name):
    m = make(name).eval()
    feats, img = inputs(2, C, 3, 4)
    with torch.no_grad():
        assert torch.equal(m.upsample(feats, img, size=(11, 13)), m.upsample(feats, img, size=(11, 13)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", REGISTRY)
def test_reduced_precision_features_keep_dtype(name, dtype):
    m = make(name).eval()
    feats, img = inputs(1, C, 3, 4, dtype=dtype)
    with torch.no_grad():
        ref = m.upsample(feats.float(), img, scale=2)
        for kw in ({"scale": 2}, {"scale": 4}, {"size": (5, 7)}):
            out = m.upsample(feats, img, **kw)
            assert out.dtype == dtype and torch.isfinite(out.float()).all()
        out = m.upsample(feats, img, scale=2)
    tol = 2e-2 if dtype == torch.float16 else 8e-2
    torch.testing.assert_close(out.float(), ref, atol=tol * ref.abs().max().item(), rtol=tol)


# ---------------------------------------------------------------------------------------------------
# BatchNorm folding for inference
# ---------------------------------------------------------------------------------------------------
def _with_trained_statistics(m: Upsampler) -> Upsampler:
    """Give every BatchNorm non-trivial statistics and affine parameters (as training would)."""
    g = torch.Generator().manual_seed(0)
    for norm in m.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            n = norm.num_features
            norm.running_mean.copy_(torch.randn(n, generator=g))
            norm.running_var.copy_(torch.rand(n, generator=g) * 3 + 0.05)
            with torch.no_grad():
                norm.weight.copy_(torch.randn(n, generator=g))
                norm.bias.copy_(torch.randn(n, generator=g))
    return m


@pytest.mark.parametrize("name", LEARNED_WRC)
def test_folded_batchnorm_gives_the_same_outputs(name):
    torch.manual_seed(0)
    m = _with_trained_statistics(make(name)).eval().double()
    feats, img = (t.double() for t in inputs(2, C, 3, 5))
    with torch.no_grad():
        ref = m.upsample(feats, img, scale=2)
        config = m.config
        folded = m.fold_batchnorm()
        assert folded is m and not any(isinstance(x, torch.nn.BatchNorm2d) for x in folded.modules())
        out = folded.upsample(feats, img, scale=2)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10 * ref.abs().max().item())
    assert folded.config == config  # the same model as described (parameters as trained)
    assert folded.fold_batchnorm() is folded  # folding twice changes nothing


def test_folded_batchnorm_fp32_and_what_folding_refuses(tmp_path):
    from wrcli.models import save_upsampler
    from wrcli.models.blocks import fold_batchnorm

    m = _with_trained_statistics(make("wrc")).eval()
    feats, img = inputs(1, C, 4, 4)
    with torch.no_grad():
        ref = m.upsample(feats, img, scale=2)
        out = m.fold_batchnorm().upsample(feats, img, scale=2)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    with pytest.raises(WrcError, match="cannot be trained"):
        m.train()
    with pytest.raises(WrcError, match="save it before folding"):
        save_upsampler(m, tmp_path / "folded.safetensors")
    assert not (tmp_path / "folded.safetensors").exists()
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(make("wrc").train())
