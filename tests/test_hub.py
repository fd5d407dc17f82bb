"""hubconf.py: torch.hub.load(<checkout>, "wrc_dinov2_vits14", source="local") returns the backbone and the shipped
WRC as one module whose output is that of the two parts called by hand."""

from __future__ import annotations

import pytest
import torch

from wrcli.backbones import load_backbone
from wrcli.models import load_upsampler

from .conftest import ARCH, REPO


def test_hub_entry_equals_the_backbone_and_the_shipped_upsampler(vits_weights, monkeypatch):
    monkeypatch.delenv("WRC_BACKBONE_WEIGHTS", raising=False)
    model = torch.hub.load(str(REPO), "wrc_dinov2_vits14", source="local", weights=str(vits_weights), trust_repo=True)
    assert model.upsampler.checkpoint is not None and model.upsampler.checkpoint.name == "wrc_dinov2_vits14.safetensors"
    backbone = load_backbone(ARCH, vits_weights)
    upsampler = load_upsampler("wrc", backbone)
    pixels = torch.randint(0, 256, (2, 3, 56, 70), dtype=torch.uint8)
    with torch.inference_mode():
        images = backbone.normalize(pixels)
        expected = upsampler.upsample(backbone(images), images, scale=2)
        assert torch.equal(model(pixels), expected)  # uint8 is normalised by the model
        assert torch.equal(model(model.normalize(pixels)), expected)
        assert model(images, scale=4).shape == (2, 384, 16, 20)
        assert model(images, size=(10, 12)).shape == (2, 384, 10, 12)


def test_hub_entry_reads_the_weights_from_the_environment_and_can_be_untrained(vits_weights, monkeypatch):
    monkeypatch.setenv("WRC_BACKBONE_WEIGHTS", str(vits_weights))
    model = torch.hub.load(str(REPO), "wrc_dinov2_vits14", source="local", trust_repo=True)
    assert model.backbone.weights_sha256 == load_backbone(ARCH, vits_weights).weights_sha256
    fresh = torch.hub.load(str(REPO), "wrc_dinov2_vits14", source="local", pretrained=False, trust_repo=True)
    assert fresh.backbone.weights_sha256 is None and fresh.upsampler.checkpoint is None


def test_hub_entry_loads_the_exact_solver_checkpoint_on_request(vits_weights):
    model = torch.hub.load(str(REPO), "wrc_dinov2_vits14", source="local", weights=str(vits_weights),
                           upsampler="wrc-exact", trust_repo=True)
    assert model.upsampler.solver == "exact" and model.upsampler.checkpoint.name == "wrc_exact_dinov2_vits14.safetensors"
    with pytest.raises(ValueError, match="one of 'wrc', 'wrc-exact' .*got 'bilinear'"):
        torch.hub.load(str(REPO), "wrc_dinov2_vits14", source="local", weights=str(vits_weights), upsampler="bilinear",
                       trust_repo=True)
