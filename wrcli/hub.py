"""What ``torch.hub.load("<owner>/wrcli", ...)`` returns (``hubconf.py`` at the top of the repository): a frozen
backbone and its upsampler as one module, ready to call, as the other upsamplers' hub entries are.

>>> model = torch.hub.load("<owner>/wrcli", "wrc_dinov2_vits14")             # or (repo_dir, ..., source="local")
>>> dense = model(images)                    # normalised float (B, 3, H, W), or uint8 0..255 → (B, 384, 2H/14, 2W/14)
>>> model.backbone, model.upsampler          # the parts: lowres = model.backbone(x); model.upsampler.upsample(...)
"""

from __future__ import annotations

import os
from typing import Any

import torch
from timm.models import split_model_name_tag
from torch import Tensor, nn

from wrcli.backbones import Backbone, load_backbone
from wrcli.checkpoints import SHIPPED
from wrcli.models import Upsampler, create_upsampler, load_upsampler

DINOV2_VITS14 = "vit_small_patch14_dinov2.lvd142m"  # this entry's backbone, whatever the default


class DenseFeatures(nn.Module):
    """``model(images)``: the backbone's patch features upsampled ×``scale`` (or to ``size``) with the image as
    guidance. ``images`` are normalised with the backbone's mean and std (``model.normalize`` does it for uint8
    0..255 or float 0..1), or uint8, which is normalised here. Frozen backbone, upsampler in eval mode; wrap calls
    in ``torch.inference_mode()`` when no gradients are needed."""

    def __init__(self, backbone: Backbone, upsampler: Upsampler, scale: int = 2):
        super().__init__()
        self.backbone, self.upsampler, self.scale = backbone, upsampler.eval(), scale

    def normalize(self, images: Tensor) -> Tensor:
        return self.backbone.normalize(images)

    def forward(self, images: Tensor, scale: int | None = None, size: tuple[int, int] | None = None) -> Tensor:
        if images.dtype == torch.uint8:
            images = self.backbone.normalize(images)
        features = self.backbone(images)
        return self.upsampler.upsample(features, images, scale=None if size else (scale or self.scale), size=size)


def wrc_dinov2_vits14(pretrained: bool = True, weights: str | os.PathLike | None = None, scale: int = 2,
                      device: str | torch.device = "cpu", upsampler: str = "wrc", **backbone_kwargs: Any) -> DenseFeatures:
    """DINOv2 ViT-S/14 (frozen) and the WRC upsampler trained for it, which ships with wrcli.

    pretrained: the backbone's weights (``weights``, else the file ``$WRC_BACKBONE_WEIGHTS`` names, else timm's
        model hub) and the shipped checkpoint; False: a random backbone and an untrained upsampler.
    scale: the default upsampling factor of ``model(images)`` (×2 is one pass of the network; 4 and 8 repeat it).
    upsampler: a name with a checkpoint shipped for this backbone: ``wrc`` (the default) or ``wrc-exact`` (trained
        with the exact weighted solve).
    """
    arch, _ = split_model_name_tag(DINOV2_VITS14)
    names = [name for name, shipped_for in SHIPPED if shipped_for == arch]
    if upsampler not in names:
        raise ValueError(f"upsampler must be one of {', '.join(map(repr, names))} (the checkpoints shipped for this "
                         f"backbone), got {upsampler!r}")
    weights = weights or (os.environ.get("WRC_BACKBONE_WEIGHTS") if pretrained else None)
    backbone = load_backbone(DINOV2_VITS14, weights, pretrained=pretrained, **backbone_kwargs)
    model = load_upsampler(upsampler, backbone) if pretrained else create_upsampler(upsampler, backbone.channels,
                                                                                     backbone.patch_size)
    return DenseFeatures(backbone, model, scale).to(device)
