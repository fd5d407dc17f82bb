"""Checkpoints shipped inside the package: looked up by registry name and backbone architecture."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import wrcli.checkpoints as shipped
from wrcli.backbones import load_backbone
from wrcli.defaults import DEFAULT_BACKBONE
from wrcli.models import create_upsampler, default_upsampler, load_upsampler, read_checkpoint_config, save_upsampler
from wrcli.training.data import ImageRef, decode, held_out
from wrcli.training.recipe import half_view, tile, untile

from .conftest import ARCH, PHOTOS


def test_a_shipped_checkpoint_is_what_the_name_loads(tmp_path, vits_weights, monkeypatch):
    backbone = load_backbone(ARCH, vits_weights)
    trained = create_upsampler("wrc", 384, 14)
    torch.nn.init.normal_(trained.head.weight)
    save_upsampler(trained, tmp_path / "wrc_test.safetensors", backbone=backbone)
    monkeypatch.setattr(shipped.resources, "files", lambda package: tmp_path)
    monkeypatch.setitem(shipped.SHIPPED, ("wrc", ARCH), "wrc_test.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "untrained" warning
        model = load_upsampler("wrc", backbone)
    assert model.checkpoint == tmp_path / "wrc_test.safetensors" and not model.training
    assert torch.equal(model.head.weight, trained.head.weight)
    # "default" (also what load_upsampler takes when no name is given) is that checkpoint for this architecture
    assert default_upsampler(backbone) == "wrc" and load_upsampler(backbone=backbone).checkpoint == model.checkpoint
    # a backbone without a shipped checkpoint gets a fresh model, and a warning that it is untrained
    other = load_backbone("vit_small_patch16_dinov3", pretrained=False, depth=1, embed_dim=64, num_heads=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_upsampler("wrc", other).checkpoint is None
    [message] = [str(w.message) for w in caught if "untrained" in str(w.message)]
    assert "no checkpoint for vit_small_patch16_dinov3" in message
    assert "`wrc train IMAGES --backbone vit_small_patch16_dinov3 --out wrc.safetensors --solver official`" in message
    # ... and bilinear for an architecture without one, never an untrained WRC
    assert default_upsampler(other) == "bilinear" and load_upsampler("default", other).name == "bilinear"


# ---------------------------------------------------------------------------------------------------
# the checkpoints that ship for DINOv2 ViT-S/14: wrc (the default) and wrc-exact
# ---------------------------------------------------------------------------------------------------
SHIPS = [("wrc", "official", "wrc_dinov2_vits14.safetensors"), ("wrc-exact", "exact", "wrc_exact_dinov2_vits14.safetensors")]


@pytest.mark.parametrize("name, solver, file", SHIPS)
def test_the_shipped_checkpoints_match_the_default_backbone(vits_weights, name, solver, file):
    path = shipped.shipped_checkpoint(name, ARCH)
    assert path is not None and path.name == file and path.is_file() and path.with_suffix(".md").is_file()  # + card
    cfg = read_checkpoint_config(path)
    backbone = load_backbone(DEFAULT_BACKBONE, vits_weights)
    assert backbone.arch == ARCH and cfg["backbone"]["arch"] == ARCH
    assert (cfg["architecture"], cfg["solver"], cfg["channels"], cfg["patch_size"]) == (name, solver, 384, 14)
    model = load_upsampler(name, backbone)
    assert model.name == name and model.solver == solver and model.checkpoint == path and model.skip
    assert all(p.dtype == torch.float32 for p in model.parameters())  # stored in float16, computed in float32
    assert cfg["provenance"]["validation"]["model"]["tiles"]["cos"] > cfg["provenance"]["validation"]["bilinear"]["tiles"]["cos"]
    assert cfg["provenance"]["steps"] == 1600  # trained alike, so that the two solvers compare (the cards)


def test_the_default_is_the_official_solver(vits_weights):
    backbone = load_backbone(DEFAULT_BACKBONE, vits_weights)
    model = load_upsampler(backbone=backbone)  # no name: the default
    assert model.name == "wrc" and model.checkpoint == shipped.shipped_checkpoint("wrc", ARCH)


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name, _, _ in SHIPS])
def test_the_shipped_checkpoints_beat_bilinear_on_the_held_out_photos(dinov2_weights, name):
    """The model cards' claim, recomputed: on the 60 photos held out of training (``held_out(name, 0.1)``),
    the ×2 output of each 224 view against the features of the image's four 224 quadrants ("tiles")."""
    photos = sorted(p.name for p in PHOTOS.glob("*.jpg") if held_out(p.name, 0.1)) if PHOTOS.is_dir() else []
    if len(photos) != 60:
        pytest.skip(f"the 60 held-out photos are not at {PHOTOS}")
    backbone = load_backbone(DEFAULT_BACKBONE, dinov2_weights)
    model = load_upsampler(name, backbone)
    sums = {"wrc": [0.0, 0.0], "bilinear": [0.0, 0.0]}
    with torch.no_grad():
        for photo in photos:
            pixels = decode(ImageRef(photo, str(PHOTOS / photo)), 448, 14)[None]
            lr = half_view(pixels)
            feats = backbone(backbone.normalize(lr))
            tiles = untile(backbone(backbone.normalize(tile(pixels))), 1)
            for key, x in (("wrc", model(feats, backbone.normalize(lr))),
                           ("bilinear", F.interpolate(feats, scale_factor=2, mode="bilinear", align_corners=False))):
                sums[key][0] += F.cosine_similarity(x, tiles, dim=1).mean().item() / len(photos)
                sums[key][1] += (x - tiles).square().mean().item() / len(photos)
    (cos, mse), (cos_b, mse_b) = sums["wrc"], sums["bilinear"]
    assert cos > cos_b + 0.02 and mse < 0.9 * mse_b, sums  # cards: 0.747 (wrc), 0.750 (wrc-exact) vs 0.706; 2.260, 2.226 vs 2.771
