"""The pairwise structure of a feature map: its contrast (mean pairwise cosine), and losses that match it.

For one map with N pixels and unit C-vectors u_i = f_i / ‖f_i‖, the affinity matrix is Â = UᵀU (N×N, Â_ii = 1).
A map whose pixels regress towards a common direction has a larger mean off-diagonal affinity: that number,

    contrast(f) = (Σ_{i≠j} u_i·u_j) / (N(N−1)) = (‖Σ_i u_i‖² − N) / (N(N−1)),

costs O(NC) through the sum of the unit vectors (no N×N matrix). Lower means more contrast.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def mean_pairwise_cosine(features: Tensor, eps: float = 1e-8) -> Tensor:
    """(B,C,H,W) → (B,) float32: the mean cosine between distinct pixels of each map (see the module docstring)."""
    units = F.normalize(features.float().flatten(2), dim=1, eps=eps)  # (B,C,N)
    n = units.shape[-1]
    if n < 2:
        raise ValueError(f"the mean pairwise cosine needs at least 2 pixels, got {n}")
    total = units.sum(dim=-1).square().sum(dim=-1)  # ‖Σ u_i‖²
    norms = units.square().sum(dim=1).sum(dim=-1)  # Σ ‖u_i‖² (N, less the pixels that are exactly zero)
    return (total - norms) / (n * (n - 1))


def affinity(features: Tensor, eps: float = 1e-8) -> Tensor:
    """(B,C,H,W) → (B,N,N) float32: the cosine between every pair of pixels, N = H·W."""
    units = F.normalize(features.float().flatten(2), dim=1, eps=eps)
    return units.transpose(1, 2) @ units


def affinity_loss(pred: Tensor, target: Tensor) -> Tensor:
    """mean over maps and pixel pairs of (Â_pred − Â_target)²: the squared error between the two maps' affinity
    matrices (B,C,H,W each, same grid). Zero exactly when every pair of pixels is as similar in the prediction
    as in the target; it penalises a contrast that is too low (regression to a common direction) or too high."""
    if pred.shape[-2:] != target.shape[-2:] or pred.shape[0] != target.shape[0]:
        raise ValueError(f"affinity_loss needs maps on the same grid, got {tuple(pred.shape)} and {tuple(target.shape)}")
    return (affinity(pred) - affinity(target)).square().mean()


def contrast_loss(pred: Tensor, target: Tensor) -> Tensor:
    """mean over maps of (contrast(pred) − contrast(target))², contrast = :func:`mean_pairwise_cosine` (B,C,H,W each,
    any grids): zero when each output map is as spread in direction as its target, whatever its pixels' order."""
    if pred.shape[0] != target.shape[0]:
        raise ValueError(f"contrast_loss needs as many maps in both, got {pred.shape[0]} and {target.shape[0]}")
    return (mean_pairwise_cosine(pred) - mean_pairwise_cosine(target)).square().mean()

