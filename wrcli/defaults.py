"""Defaults shared by the CLI and the library (kept free of heavy imports)."""

DEFAULT_BACKBONE = "vit_small_patch14_dinov2.lvd142m"
# the upsampler used when none is named: "wrc" with the checkpoint shipped for the backbone's architecture
# (wrcli/checkpoints/), or "bilinear" for a backbone without one (an untrained WRC gives meaningless features)
DEFAULT_UPSAMPLER = "default"
# file names that --upsampler reads as a checkpoint (even before the file exists, for a clear "not found")
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt")
