"""Defaults shared by the CLI and the library (kept free of heavy imports)."""

DEFAULT_BACKBONE = "vit_small_patch14_dinov2.lvd142m"
DEFAULT_UPSAMPLER = "wrc"
