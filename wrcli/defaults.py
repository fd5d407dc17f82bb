"""Defaults shared by the CLI and the library (kept free of heavy imports)."""

DEFAULT_BACKBONE = "vit_small_patch14_dinov2.lvd142m"
# bilinear until a trained WRC checkpoint ships in wrcli/checkpoints/: an untrained WRC gives meaningless features
DEFAULT_UPSAMPLER = "bilinear"
