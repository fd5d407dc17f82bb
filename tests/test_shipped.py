"""Checkpoints shipped inside the package: looked up by registry name and backbone architecture."""

from __future__ import annotations

import warnings

import torch

import wrcli.checkpoints as shipped
from wrcli.backbones import load_backbone
from wrcli.models import create_upsampler, default_upsampler, load_upsampler, save_upsampler

from .conftest import ARCH


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
    assert any("untrained" in str(w.message) for w in caught)
    # ... and bilinear for an architecture without one, never an untrained WRC
    assert default_upsampler(other) == "bilinear" and load_upsampler("default", other).name == "bilinear"

