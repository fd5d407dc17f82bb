"""Probe metrics as pure tensor functions.

Segmentation follows torchmetrics' ``MulticlassJaccardIndex`` (``average="macro"``) and ``Accuracy(task="multiclass")``
(``average="micro"``) with ``ignore_index``, which the JAFAR, AnyUp, FeatUp and LoftUp probes report:

- pixels whose target is ``ignore_index`` are dropped; the others fill one confusion matrix ``M[t, p]`` (target
  class t predicted as p) accumulated over the whole split, not averaged per image;
- ``IoU_k = M_kk / (Σ_p M_kp + Σ_t M_tk − M_kk)``;
- mIoU = the mean of ``IoU_k`` over the classes whose union is not empty, i.e. present in the ground truth or in
  the predictions; a class absent from both counts neither as 0 nor as 1;
- pixel accuracy = ``Σ_k M_kk / Σ M``.

Depth follows Probe3D's ``evaluate_depth`` (scale-aware): per image, over its valid pixels V,
``RMSE = sqrt(mean_V (d − d*)²)``, ``AbsRel = mean_V |d − d*| / d*``, ``δ1 = mean_V [max(d/d*, d*/d) < 1.25]``;
each is then averaged over the images that have valid pixels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DEPTH_METRICS = ("rmse", "abs_rel", "delta1")


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = 255) -> Tensor:
    """(K, K) int64 counts ``M[t, p]`` over the pixels whose target is not ``ignore_index``.

    ``pred`` and ``target`` are integer tensors of one shape. A kept target or a prediction outside 0..K−1
    raises ValueError (a label map that does not fit the class list is a data error, not something to drop).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    keep = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    t, p = target[keep].long(), pred[keep].long()
    for name, v in (("target", t), ("prediction", p)):
        if v.numel() and (int(v.min()) < 0 or int(v.max()) >= num_classes):
            raise ValueError(f"{name} values {int(v.min())}..{int(v.max())} fall outside the {num_classes} classes")
    k = num_classes
    return torch.bincount(t * k + p, minlength=k * k).reshape(k, k)


def iou_per_class(confusion: Tensor) -> Tensor:
    """float64 (K,) ``IoU_k``; NaN for a class with an empty union (absent from targets and predictions)."""
    m = confusion.double()
    tp = m.diagonal()
    union = m.sum(0) + m.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))


def mean_iou(confusion: Tensor) -> float:
    """Mean IoU over the classes with a non-empty union (NaN when every class is empty)."""
    iou = iou_per_class(confusion)
    present = ~iou.isnan()
    return float(iou[present].mean()) if present.any() else math.nan


def pixel_accuracy(confusion: Tensor) -> float:
    """Correct pixels / counted pixels (NaN when no pixel was counted)."""
    total = int(confusion.sum())
    return int(confusion.diagonal().sum()) / total if total else math.nan


def depth_image_metrics(pred: Tensor, gt: Tensor, valid: Tensor) -> Tensor:
    """(B, 3) float64 per-image ``[RMSE, AbsRel, δ1]`` over the ``valid`` pixels of (B, H, W) maps.

    ``pred`` must be positive where valid (δ1 divides by it); an image without valid pixels gets a NaN row.
    """
    if not (pred.shape == gt.shape == valid.shape) or pred.dim() != 3:
        raise ValueError(f"pred, gt and valid must be (B, H, W) of one shape, got {pred.shape}, {gt.shape}, {valid.shape}")
    d, g, v = pred.double(), gt.double(), valid.bool()
    n = v.sum((1, 2)).double()
    safe_g = torch.where(v, g, torch.ones_like(g))
    safe_d = torch.where(v, d, torch.ones_like(d))
    err = (safe_d - safe_g) * v
    rmse = (err.square().sum((1, 2)) / n).sqrt()
    abs_rel = (err.abs() / safe_g).sum((1, 2)) / n
    ratio = torch.maximum(safe_d / safe_g, safe_g / safe_d)
    delta1 = ((ratio < 1.25) & v).sum((1, 2)) / n
    out = torch.stack([rmse, abs_rel, delta1], 1)
    return torch.where((n > 0)[:, None], out, torch.full_like(out, math.nan))
