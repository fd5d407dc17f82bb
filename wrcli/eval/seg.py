"""``wrc eval seg``: linear-probe semantic segmentation, several upsamplers side by side.

Protocols (``--protocol``; ``--epochs``, ``--batch-size``, ``--size`` and ``--scale`` override a preset and the
report says so):

- ``jafar`` — the JAFAR / AnyUp / WRC / NAF probe, with the scheduler stepped per epoch as AnyUp fixed it: short
  side to 448 and centre crop 448 for image and label (label by nearest neighbour), features upsampled to 448,
  1×1 conv, AdamW lr 5e-4 and weight decay 1e-5, cosine schedule over 20 epochs stepped per epoch, batch 4,
  random horizontal flip, cross-entropy ignoring 255.
- ``featup`` — the FeatUp / LoftUp 224 style: Resize(224) + CenterCrop(224), features upsampled to 224, the
  labels nearest-downsampled to the feature size for training (the same at 224; it matters with ``--scale``),
  evaluation at 224; LoftUp's optimiser settings (AdamW lr 1e-4, batch 8, 10 epochs) with weight decay 1e-5 and
  the per-epoch cosine; no flip (FeatUp trains on precomputed embeddings).

Metrics: mIoU and pixel accuracy over the whole evaluation split (see :mod:`wrcli.eval.metrics`), plus the IoU of
each class in the report.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wrcli.errors import WrcError

from .datasets import ProbeData, open_seg
from .metrics import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy
from .probes import ProbeOptions, ProbeTask, Protocol
from .task import run_task

SEG_PROTOCOLS = {
    "jafar": Protocol("jafar", size=448, epochs=20, batch_size=4, lr=5e-4, weight_decay=1e-5, flip=True),
    "featup": Protocol("featup", size=224, epochs=10, batch_size=8, lr=1e-4, weight_decay=1e-5, flip=False, train_at="feature"),
}


def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int | None) -> Tensor:
    """Mean cross-entropy over the pixels whose target is not ``ignore_index`` (0, with no gradient, when a batch
    has none, instead of torch's NaN)."""
    ignore = -100 if ignore_index is None else ignore_index
    total = F.cross_entropy(logits, target.long(), ignore_index=ignore, reduction="sum")
    return total / (target != ignore).sum().clamp_min(1)


class ConfusionAccumulator:
    """Sums the confusion matrix over batches of (logits, target)."""

    def __init__(self, classes: tuple[str, ...], ignore_index: int | None) -> None:
        self.classes, self.ignore_index = classes, ignore_index
        self.confusion = torch.zeros(len(classes), len(classes), dtype=torch.int64)

    def update(self, logits: Tensor, target: Tensor) -> None:
        self.confusion += confusion_matrix(logits.argmax(1).cpu(), target.cpu(), len(self.classes), self.ignore_index)

    def result(self) -> dict[str, Any]:
        iou = iou_per_class(self.confusion).tolist()
        return {"miou": mean_iou(self.confusion), "accuracy": pixel_accuracy(self.confusion),
                "per_class_iou": dict(zip(self.classes, iou, strict=True))}


class SegHead:
    """Per-pixel class logits, cross-entropy, mIoU and pixel accuracy (:class:`~wrcli.eval.probes.Head`)."""

    metrics = ("miou", "accuracy")
    target_dtype = np.dtype(np.uint8)

    def __init__(self, classes: tuple[str, ...], ignore_index: int | None) -> None:
        self.classes, self.ignore_index = classes, ignore_index
        self.out_channels = self.label_classes = len(classes)

    def predict(self, out: Tensor) -> Tensor:
        return out

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(pred, target, self.ignore_index)

    def shrink(self, target: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(target[:, None].float(), size=size, mode="nearest-exact")[:, 0].to(target.dtype)

    def accumulator(self) -> ConfusionAccumulator:
        return ConfusionAccumulator(self.classes, self.ignore_index)

    def describe(self) -> dict[str, Any]:
        return {"loss": f"cross-entropy, ignore index {self.ignore_index}",
                "metrics": "mIoU: mean IoU over classes present in labels or predictions (torchmetrics JaccardIndex "
                           "average=macro); accuracy: pixel accuracy (torchmetrics Accuracy average=micro); "
                           "ignored pixels excluded; one confusion matrix over the split"}


class SegProbe(ProbeTask):
    """``wrc eval seg``: the segmentation probe on dataset ``root`` (``dataset``: a layout name or auto)."""

    kind = "seg"
    metrics = SegHead.metrics

    def __init__(self, root: str | os.PathLike, dataset: str = "auto", protocol: str = "jafar",
                 options: ProbeOptions | None = None) -> None:
        if protocol not in SEG_PROTOCOLS:
            raise WrcError(f"unknown segmentation protocol {protocol!r}; use {' or '.join(SEG_PROTOCOLS)}")
        super().__init__(SEG_PROTOCOLS[protocol], options or ProbeOptions())
        self.root, self.layout = root, dataset

    def open_data(self) -> ProbeData:
        return open_seg(self.layout, self.root)

    def make_head(self, data: ProbeData) -> SegHead:
        return SegHead(data.classes, data.ignore_index)


def run_seg(root: str | os.PathLike, dataset: str = "auto", protocol: str = "jafar",
            options: ProbeOptions | None = None, command: str | None = None) -> dict[str, Any]:
    """Linear-probe segmentation on dataset ``root`` for every upsampler of ``options``; the report."""
    task = SegProbe(root, dataset, protocol, options)
    return run_task(task, task.options, command)
