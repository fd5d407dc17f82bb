"""The parts of ``wrc train`` (:mod:`wrcli.train`): the options and recipes, the recipe's pure functions, data
order and samples, the feature cache, the training state file, validation, the run's builder and its loop."""

from .recipe import (
    cosine_mse,
    crop_offsets,
    crop_views,
    crop_windows,
    half_view,
    lr_factor,
)

__all__ = ["cosine_mse", "crop_offsets", "crop_views", "crop_windows", "half_view", "lr_factor"]
