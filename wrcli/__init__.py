"""wrcli: dense, sharp features from frozen vision foundation models with Weighted Reverse Convolution.

The public API is small and imported lazily so that ``import wrcli`` (and ``wrc --help``) stays instant:

>>> from wrcli import load_backbone, load_upsampler
>>> backbone = load_backbone("vit_small_patch14_dinov2", weights="dinov2_vits14.safetensors")
>>> upsampler = load_upsampler(backbone=backbone)   # the default; or a name ("bilinear") or a checkpoint file
>>> images = backbone.normalize(pixels)            # uint8 (B, 3, H, W) → normalised
>>> feats = backbone(images)                      # (B, C, h, w) patch features
>>> dense = upsampler.upsample(feats, images, scale=2)
"""

from __future__ import annotations

from wrcli.lazy import lazy_getattr

__version__ = "0.1.0"

__all__ = ["__version__", "Backbone", "load_backbone", "load_upsampler", "save_upsampler", "list_upsamplers"]

_LAZY = {
    "Backbone": "wrcli.backbones",
    "load_backbone": "wrcli.backbones",
    "load_upsampler": "wrcli.models",
    "save_upsampler": "wrcli.models",
    "list_upsamplers": "wrcli.models",
}


__getattr__ = lazy_getattr(__name__, _LAZY)
