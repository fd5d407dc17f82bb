"""Tests for wrcli.backbones: real DINOv2 weights (skipped when absent) and small random-init timm ViTs."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub
import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F

from wrcli.backbones import DEFAULT_BACKBONE, Backbone, load_backbone
from wrcli.errors import WrcError

SMALL = {"depth": 2, "embed_dim": 64, "num_heads": 2}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINOV2_SHA256 = "9fc8890a65e8d4239009d2f530f2168111b167c1e07fc169566af529cf1ae671"

# (timm name, patch size, prefix tokens, mean, std)
FAMILIES = [
    ("vit_small_patch14_dinov2", 14, 1, IMAGENET_MEAN, IMAGENET_STD),
    ("vit_small_patch14_reg4_dinov2", 14, 5, IMAGENET_MEAN, IMAGENET_STD),
    ("vit_small_patch16_dinov3", 16, 5, IMAGENET_MEAN, IMAGENET_STD),
    ("vit_base_patch16_clip_224", 16, 1, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    ("vit_base_patch16_siglip_224", 16, 0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
]


@functools.cache
def _real(weights: Path) -> Backbone:
    return load_backbone("vit_small_patch14_dinov2", weights)


@functools.cache
def _small(name: str) -> Backbone:
    return load_backbone(name, pretrained=False, **SMALL)


def real_backbone(weights: Path, layers: tuple[int, ...] | None = None) -> Backbone:
    """The real DINOv2 backbone, loaded once; other layer choices wrap the same timm model."""
    bb = _real(weights)
    return bb if layers is None else Backbone(bb.model, bb.name, layers, bb.weights_sha256)


def small_backbone(name: str = "vit_small_patch14_dinov2", layers: tuple[int, ...] | None = None) -> Backbone:
    """A small random-init backbone (depth 2, 64 channels), built once per name."""
    bb = _small(name)
    return bb if layers is None else Backbone(bb.model, bb.name, layers)


def images(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def tokens_to_nchw(tokens: torch.Tensor, num_prefix: int, h: int, w: int) -> torch.Tensor:
    """timm's (B, prefix + h*w, C) tokens -> (B, C, h, w), written independently of forward_intermediates."""
    patches = tokens[:, num_prefix:]
    assert patches.shape[1] == h * w
    return patches.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


def scene() -> torch.Tensor:
    """A synthetic uint8 (1, 3, 224, 224) scene: a colour gradient with a disk and a square."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 224), torch.linspace(-1, 1, 224), indexing="ij")
    img = torch.stack([0.5 + 0.4 * torch.sin(6 * xx), 0.3 + 0.2 * yy, torch.full_like(xx, 0.4)])
    img[:, (xx + 0.3) ** 2 + (yy - 0.2) ** 2 < 0.15] = torch.tensor([0.9, 0.8, 0.1])[:, None]
    img[:, ((xx - 0.5).abs() < 0.2) & ((yy + 0.4).abs() < 0.2)] = torch.tensor([0.1, 0.2, 0.8])[:, None]
    return (img * 255).round().to(torch.uint8)[None]


# --- real DINOv2 ViT-S/14 weights ---------------------------------------------------------------------------


@pytest.mark.slow
def test_real_dinov2_loads_with_expected_shapes_and_metadata(dinov2_weights: Path) -> None:
    bb = real_backbone(dinov2_weights)
    assert sum(p.numel() for p in bb.parameters()) == 22_056_192
    assert (bb.name, bb.arch, bb.patch_size, bb.embed_dim, bb.channels, bb.layers) == (
        "vit_small_patch14_dinov2",
        "vit_small_patch14_dinov2",
        14,
        384,
        384,
        (11,),
    )
    assert bb.weights_sha256 == DINOV2_SHA256
    assert bb.mean == IMAGENET_MEAN and bb.std == IMAGENET_STD
    config = json.loads(json.dumps(bb.config()))
    assert config == {
        "name": "vit_small_patch14_dinov2",
        "arch": "vit_small_patch14_dinov2",
        "patch_size": 14,
        "embed_dim": 384,
        "layers": [11],
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "weights_sha256": DINOV2_SHA256,
    }
    with torch.inference_mode():
        assert bb(bb.normalize(images(2, 3, 224, 224))).shape == (2, 384, 16, 16)
        assert bb(bb.normalize(images(1, 3, 224, 308))).shape == (1, 384, 16, 22)


@pytest.mark.slow
def test_real_features_equal_timm_forward_features(dinov2_weights: Path) -> None:
    reference = timm.create_model(
        "vit_small_patch14_dinov2",
        pretrained=True,
        dynamic_img_size=True,
        pretrained_cfg_overlay={"file": str(dinov2_weights)},
    ).eval()
    bb = real_backbone(dinov2_weights)
    x = bb.normalize(images(2, 3, 224, 308))
    with torch.inference_mode():
        expected = tokens_to_nchw(reference.forward_features(x), 1, 16, 22)
        torch.testing.assert_close(bb(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_real_layer_selection_concatenates_in_given_order(dinov2_weights: Path) -> None:
    two = real_backbone(dinov2_weights, (5, -1))
    assert (two.layers, two.channels) == ((5, 11), 768)
    assert two.config()["layers"] == [5, 11]
    x = two.normalize(images(1, 3, 112, 140))
    with torch.inference_mode():
        both = two(x)
        last = real_backbone(dinov2_weights)(x)
        reversed_ = real_backbone(dinov2_weights, (-1, 5))(x)
    assert both.shape == (1, 768, 8, 10)
    torch.testing.assert_close(both[:, 384:], last, rtol=0, atol=0)
    torch.testing.assert_close(reversed_, torch.cat([both[:, 384:], both[:, :384]], 1), rtol=0, atol=0)


@pytest.mark.slow
def test_real_features_are_semantic(dinov2_weights: Path) -> None:
    """DINOv2 features survive colour inversion (solarisation is one of its training augmentations) and tell a
    scene from noise; random-init features flip sign under inversion and permuted weights collapse to a
    constant vector, so both fail this."""
    bb = real_backbone(dinov2_weights)
    x = scene()
    with torch.inference_mode():
        f, f_inv, f_noise = (bb(bb.normalize(im)) for im in (x, 255 - x, images(1, 3, 224, 224)))
    sim_inv = F.cosine_similarity(f, f_inv, dim=1).mean().item()
    sim_noise = F.cosine_similarity(f, f_noise, dim=1).mean().item()
    assert sim_inv > 0.7
    assert sim_inv - sim_noise > 0.5


# --- small random-init models of each family ----------------------------------------------------------------


@pytest.mark.parametrize(("name", "patch", "num_prefix", "mean", "std"), FAMILIES)
def test_families_shapes_prefix_tokens_and_normalisation(name, patch, num_prefix, mean, std) -> None:
    bb = small_backbone(name)
    assert (bb.patch_size, bb.embed_dim, bb.channels, bb.layers) == (patch, 64, 64, (1,))
    assert bb.model.num_prefix_tokens == num_prefix
    assert bb.mean == pytest.approx(mean) and bb.std == pytest.approx(std)
    assert (bb.mean != IMAGENET_MEAN) == (name.startswith(("vit_base_patch16_clip", "vit_base_patch16_siglip")))
    x = torch.randn(2, 3, 3 * patch, 5 * patch)
    with torch.inference_mode():
        feats = bb(x)
        expected = tokens_to_nchw(bb.model.forward_features(x), num_prefix, 3, 5)
    assert feats.shape == (2, 64, 3, 5) and feats.dtype == torch.float32
    torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", [f[0] for f in FAMILIES])
def test_families_intermediate_layers_use_final_norm(name: str) -> None:
    bb = small_backbone(name, (0, -1))
    assert (bb.layers, bb.channels) == ((0, 1), 128)
    x = torch.randn(1, 3, 64, 48)
    with torch.inference_mode():
        feats = bb(x)
        torch.testing.assert_close(feats[:, 64:], small_backbone(name)(x), rtol=0, atol=0)
        # block 0 alone, through the same final norm: prune a fresh copy to one block and compare
        one = load_backbone(name, pretrained=False, depth=1, embed_dim=64, num_heads=2)
        one.model.load_state_dict({k: v for k, v in bb.model.state_dict().items() if not k.startswith("blocks.1.")})
        torch.testing.assert_close(feats[:, :64], one(x), rtol=1e-5, atol=1e-5)


def test_non_multiple_sizes_are_cropped_to_whole_patches() -> None:
    bb = small_backbone()
    x = torch.randn(1, 3, 3 * 14 + 13, 4 * 14 + 1)
    with torch.inference_mode():
        feats = bb(x)
        torch.testing.assert_close(feats, bb(x[..., : 3 * 14, : 4 * 14]), rtol=0, atol=0)
    assert feats.shape == (1, 64, 3, 4)


def test_normalize_uint8_and_float_agree() -> None:
    bb = small_backbone("vit_base_patch16_clip_224")
    u8 = images(2, 3, 32, 48)
    from_u8 = bb.normalize(u8)
    assert from_u8.dtype == torch.float32 and from_u8.device == u8.device
    torch.testing.assert_close(from_u8, bb.normalize(u8.float() / 255), rtol=0, atol=0)
    zero = bb.normalize(torch.zeros(1, 3, 1, 1))
    torch.testing.assert_close(zero.flatten(), -torch.tensor(bb.mean) / torch.tensor(bb.std))
    with pytest.raises(ValueError, match="uint8"):
        bb.normalize(u8.long())
    half = bb.normalize(u8.to(torch.bfloat16) / 255)
    assert half.dtype == torch.bfloat16
    # the constants are module buffers (they follow .to(device)), not weights
    assert {name for name, _ in bb.named_buffers()} >= {"_mean", "_std"}
    assert not any(k.startswith("_") for k in bb.state_dict())


def test_default_name_and_tag() -> None:
    bb = load_backbone(DEFAULT_BACKBONE, pretrained=False, **SMALL)
    assert (bb.name, bb.arch, bb.weights_sha256) == (DEFAULT_BACKBONE, "vit_small_patch14_dinov2", None)


# --- frozen ---------------------------------------------------------------------------------------------------


def test_backbone_is_frozen_but_passes_gradients_to_images() -> None:
    bb = load_backbone(pretrained=False, **SMALL)
    assert not any(p.requires_grad for p in bb.parameters())
    assert bb.train() is bb
    assert not bb.training and not any(m.training for m in bb.modules())
    x = torch.randn(1, 3, 28, 42, requires_grad=True)
    bb(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    assert all(p.grad is None for p in bb.parameters())


# --- weights files --------------------------------------------------------------------------------------------


def test_weights_file_roundtrip_safetensors_and_pth(tmp_path: Path) -> None:
    source = load_backbone(pretrained=False, **SMALL)
    state = {k: v.contiguous() for k, v in source.model.state_dict().items()}
    safetensors.torch.save_file(state, tmp_path / "w.safetensors")
    torch.save(state, tmp_path / "w.pth")
    x = torch.randn(1, 3, 28, 28)
    with torch.inference_mode():
        expected = source(x)
        for file in ("w.safetensors", "w.pth"):
            bb = load_backbone(weights=tmp_path / file, **SMALL)
            assert bb.weights_sha256 is not None and len(bb.weights_sha256) == 64
            torch.testing.assert_close(bb(x), expected, rtol=0, atol=0)


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(WrcError, match=r"not found: .*nope\.safetensors"):
        load_backbone(weights=tmp_path / "nope.safetensors", **SMALL)


def test_weights_with_wrong_keys_and_shapes(tmp_path: Path) -> None:
    state = {k: v.contiguous() for k, v in load_backbone(pretrained=False, **SMALL).model.state_dict().items()}
    state["bogus.weight"] = state.pop("norm.weight")
    state["cls_token"] = torch.zeros(1, 1, 65)
    path = tmp_path / "wrong.safetensors"
    safetensors.torch.save_file(state, path)
    with pytest.raises(WrcError) as info:
        load_backbone(weights=path, **SMALL)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "missing: norm.weight" in message and "unexpected: bogus.weight" in message
    assert "shape mismatch: cls_token (1, 1, 65) vs (1, 1, 64)" in message


def test_pickled_objects_are_never_loaded(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"cls_token": torch.zeros(1), "payload": Path("x")}, path)
    with pytest.raises(WrcError, match="pickled objects besides tensors, which are never unpickled"):
        load_backbone(weights=path, **SMALL)
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(WrcError, match="not a flat state dict"):
        load_backbone(weights=tmp_path / "list.pt", **SMALL)
    (tmp_path / "corrupt.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WrcError, match=r"cannot read backbone weights .*corrupt\.safetensors"):
        load_backbone(weights=tmp_path / "corrupt.safetensors", **SMALL)


# --- user errors ----------------------------------------------------------------------------------------------


def test_unknown_model_name_suggests_names() -> None:
    with pytest.raises(WrcError, match=r"found nothing; did you mean .*vit_small_patch14_dinov2"):
        load_backbone("vit_smal_patch14_dinov2", pretrained=False)
    with pytest.raises(WrcError, match=r"'\*reg4_dinov2\*'\) finds .*vit_small_patch14_reg4_dinov2"):
        load_backbone("reg4_dinov2", pretrained=False)
    with pytest.raises(WrcError, match="a ViT is needed"):
        load_backbone("resnet18", pretrained=False)


def test_unknown_pretrained_tag_lists_tags() -> None:
    with pytest.raises(WrcError, match=r"'nope'.*vit_small_patch14_dinov2\.lvd142m"):
        load_backbone("vit_small_patch14_dinov2.nope", pretrained=False, **SMALL)


@pytest.mark.parametrize("layers", [[2], [-3], [0, 5], []])
def test_out_of_range_layers(layers: list[int]) -> None:
    with pytest.raises(WrcError, match="2 blocks"):
        load_backbone(pretrained=False, layers=layers, **SMALL)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 3, 13, 100), "13x100 is smaller than one 14x14 patch"),
        ((1, 3, 100, 10), "100x10 is smaller than one 14x14 patch"),
        ((3, 28, 28), r"shape \(B, 3, H, W\)"),
        ((1, 1, 28, 28), r"shape \(B, 3, H, W\)"),
    ],
)
def test_bad_image_shapes(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        small_backbone()(torch.zeros(shape))


# --- hub: offline, unreachable, cached ------------------------------------------------------------------------

_HUB_SCRIPT = """
import json, time
from wrcli.backbones import load_backbone
from wrcli.errors import WrcError
t0 = time.perf_counter()
try:
    load_backbone("vit_small_patch14_dinov2.lvd142m", depth=2, embed_dim=64, num_heads=2)
    result = {"ok": True}
except WrcError as e:
    result = {"ok": False, "error": str(e)}
result["seconds"] = time.perf_counter() - t0
print(json.dumps(result))
"""


def run_hub_script(hf_home: Path, **env: str) -> dict:
    """Run _HUB_SCRIPT in a fresh interpreter (huggingface_hub reads its settings at import)."""
    clean = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY") and not k.startswith("HF_")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_HUB_SCRIPT)],
        env={**clean, "HF_HOME": str(hf_home), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_fast_offline_error(result: dict) -> None:
    assert not result["ok"] and result["seconds"] < 2.0
    assert "\n" not in result["error"]
    assert "--backbone-weights FILE" in result["error"] and "connect to the network" in result["error"]


def test_offline_without_weights_fails_fast(tmp_path: Path) -> None:
    result = run_hub_script(tmp_path, HF_HUB_OFFLINE="1")
    assert_fast_offline_error(result)
    assert "HF_HUB_OFFLINE=1" in result["error"]


def test_unreachable_hub_fails_fast(tmp_path: Path) -> None:
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never routed, so the probe gets no answer
    result = run_hub_script(tmp_path, HF_HUB_OFFLINE="0", HF_ENDPOINT="http://192.0.2.1:9")
    assert_fast_offline_error(result)
    assert "no answer from http://192.0.2.1:9" in result["error"]


def test_cached_hub_weights_are_used_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--timm--vit_small_patch14_dinov2.lvd142m"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    state = {k: v.contiguous() for k, v in load_backbone(pretrained=False, **SMALL).model.state_dict().items()}
    state["cls_token"] = torch.full_like(state["cls_token"], 0.5)
    safetensors.torch.save_file(state, snapshot / "model.safetensors")
    bb = load_backbone("vit_small_patch14_dinov2.lvd142m", **SMALL)
    assert bb.weights_sha256 is None
    torch.testing.assert_close(bb.model.cls_token, state["cls_token"])
