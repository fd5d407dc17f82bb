"""Defaults shared by the CLI and the library (kept free of heavy imports)."""

DEFAULT_BACKBONE = "vit_small_patch14_dinov2.lvd142m"
# the upsampler used when none is named: "wrc" with the checkpoint shipped for the backbone's architecture
# (wrcli/checkpoints/), or "bilinear" for a backbone without one (an untrained WRC gives meaningless features)
DEFAULT_UPSAMPLER = "default"
# file names that --upsampler reads as a checkpoint (even before the file exists, for a clear "not found")
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt")
# what a feature store holds
STORE_DTYPES = ("float16", "float32")
# `wrc train --recipe`: the settings each recipe gives (explicit options override them). "wrcli" (the default) is
# what trained the shipped checkpoint (its model card); "published" is the authors' configuration.
TRAIN_RECIPES = {
    "wrcli": {"lr": 1e-3, "skip": True, "mse": "raw", "affinity_weight": 0.0, "contrast_weight": 0.0},
    "published": {"lr": 2e-4, "skip": False, "mse": "range", "affinity_weight": 0.0, "contrast_weight": 0.0},
}
DEFAULT_TRAIN_RECIPE = "wrcli"
TRAIN_MSE = ("range", "raw")  # the loss's MSE term: the authors' range-scaled one, or the plain one
WRC_SOLVERS = ("official", "exact", "converse")  # the WRC layer's solves (wrcli.models.wrc.SOLVER_NAMES maps them)
