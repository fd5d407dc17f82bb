"""``wrc eval depth``: linear depth probe, several upsamplers side by side.

The head is Probe3D's linear ``bindepth`` head: a 1×1 conv to 256 logits per pixel, turned into depth as
``d = Σ_k p_k c_k`` with bin centres ``c_k`` uniform on [min_depth, max_depth] = [1e-3, 10] m and
``p = (relu(logits) + 0.1) / Σ (relu(logits) + 0.1)`` (AdaBins' linear normalisation).
Loss (Probe3D / DINOv2): ``10 · SigLoss + 0.5 · gradient loss`` on valid pixels (0 < d* ≤ max depth), with
``g = log(d + 1e-3) − log(d* + 1e-3)``, ``SigLoss = sqrt(mean g² − 0.85 (mean g)²)`` over the batch's valid
pixels, and the multi-scale gradient-matching term ``Σ_s (Σ |g(i+2) − g(i)| over valid pairs, both axes) / |V_s|``
on the maps subsampled by s = 1, 2, 4, 8.
Metrics: RMSE (m), AbsRel and δ1 per image over valid pixels, averaged over images (:mod:`wrcli.eval.metrics`).

Protocols (``--protocol``):

- ``probe3d`` — Probe3D's NYUv2 probe as AnyUp ran it: short side 224 + centre crop 224, AdamW lr 5e-4 with
  torch's default weight decay 0.01, batch 8, 10 epochs, 1.5 warm-up epochs then a cosine stepped per batch,
  random horizontal flip (Probe3D's other training augmentations are not reproduced). Probe3D trains on the
  47k-frame GeoNet NYU set; here training uses the dataset's train split (795 labelled images for NYUv2).
- ``jafar`` — the segmentation probe's settings at 448: short side 448 + centre crop, AdamW lr 5e-4 and weight
  decay 1e-5, cosine over 20 epochs stepped per epoch, batch 4, random horizontal flip.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wrcli.errors import WrcError

from .datasets import ProbeData, open_depth
from .metrics import DEPTH_METRICS, depth_image_metrics
from .probes import ProbeOptions, ProbeTask, Protocol
from .task import run_task

DEPTH_PROTOCOLS = {
    "probe3d": Protocol("probe3d", size=224, epochs=10, batch_size=8, lr=5e-4, weight_decay=1e-2, flip=True,
                        schedule="warmup-cosine-step", warmup_epochs=1.5),
    "jafar": Protocol("jafar", size=448, epochs=20, batch_size=4, lr=5e-4, weight_decay=1e-5, flip=True),
}
BINS = 256
MIN_DEPTH = 1e-3
LOG_EPS = 1e-3


def bin_depth(logits: Tensor, min_depth: float, max_depth: float) -> Tensor:
    """(B, K, h, w) bin logits → (B, 1, h, w) depth: AdaBins' linear normalisation over K uniform bin centres."""
    centres = torch.linspace(min_depth, max_depth, logits.shape[1], device=logits.device, dtype=logits.dtype)
    p = logits.relu() + 0.1
    return torch.einsum("bkhw,k->bhw", p / p.sum(1, keepdim=True), centres)[:, None]


def sig_loss(pred: Tensor, gt: Tensor, valid: Tensor, variance_focus: float = 0.85) -> Tensor:
    """Scale-invariant log loss ``sqrt(mean g² − λ (mean g)²)`` over the valid pixels (0 without any)."""
    g = (torch.log(pred + LOG_EPS) - torch.log(gt + LOG_EPS))[valid]
    if g.numel() == 0:
        return pred.sum() * 0
    return (g.square().mean() - variance_focus * g.mean().square()).clamp_min(1e-12).sqrt()


def gradient_loss(pred: Tensor, gt: Tensor, valid: Tensor, strides: tuple[int, ...] = (1, 2, 4, 8)) -> Tensor:
    """Multi-scale gradient matching of the log-depth error ``g`` on (B, H, W) maps: at each stride s,
    Σ |g(i+2) − g(i)| over pairs of valid pixels along both axes, divided by the valid pixel count."""
    g = (torch.log(pred + LOG_EPS) - torch.log(gt + LOG_EPS)) * valid
    total = pred.sum() * 0
    for s in strides:
        gs, vs = g[:, ::s, ::s], valid[:, ::s, ::s]
        count = vs.sum()
        if count == 0:
            continue
        dy = (gs[:, 2:] - gs[:, :-2]).abs() * (vs[:, 2:] & vs[:, :-2])
        dx = (gs[:, :, 2:] - gs[:, :, :-2]).abs() * (vs[:, :, 2:] & vs[:, :, :-2])
        total = total + (dy.sum() + dx.sum()) / count
    return total


class DepthAccumulator:
    """Sums per-image RMSE, AbsRel and δ1 over the images with valid pixels."""

    def __init__(self, max_depth: float) -> None:
        self.max_depth = max_depth
        self.sums = torch.zeros(3, dtype=torch.float64)
        self.images = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        per_image = depth_image_metrics(pred[:, 0].cpu(), target.cpu(), valid_depth(target, self.max_depth).cpu())
        kept = per_image[~per_image.isnan().any(1)]
        self.sums += kept.sum(0)
        self.images += len(kept)

    def result(self) -> dict[str, Any]:
        if not self.images:
            return dict.fromkeys(DEPTH_METRICS, math.nan)
        return dict(zip(DEPTH_METRICS, (self.sums / self.images).tolist(), strict=True))


def valid_depth(gt: Tensor, max_depth: float) -> Tensor:
    """Pixels with a measurement: finite, positive and not beyond ``max_depth``."""
    return torch.isfinite(gt) & (gt > 0) & (gt <= max_depth)


class DepthHead:
    """Binned depth, SigLoss + gradient loss, RMSE / AbsRel / δ1 (:class:`~wrcli.eval.probes.Head`)."""

    out_channels = BINS
    label_classes = None
    target_dtype = np.dtype(np.float32)
    metrics = DEPTH_METRICS

    def __init__(self, max_depth: float = 10.0) -> None:
        self.max_depth = max_depth

    def predict(self, out: Tensor) -> Tensor:
        return bin_depth(out, MIN_DEPTH, self.max_depth)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        d = pred[:, 0]
        valid = valid_depth(target, self.max_depth)
        gt = torch.where(valid, target, torch.ones_like(target))
        return 10 * sig_loss(d, gt, valid) + 0.5 * gradient_loss(d, gt, valid)

    def shrink(self, target: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(target[:, None], size=size, mode="nearest-exact")[:, 0]

    def accumulator(self) -> DepthAccumulator:
        return DepthAccumulator(self.max_depth)

    def describe(self) -> dict[str, Any]:
        return {"head": f"{BINS} uniform depth bins on [{MIN_DEPTH}, {self.max_depth}] m, AdaBins linear normalisation",
                "loss": "10 * SigLoss(0.85) + 0.5 * multi-scale gradient loss, valid pixels only",
                "max_depth": self.max_depth,
                "metrics": "RMSE (m), AbsRel, delta1 (max(d/d*, d*/d) < 1.25) per image over valid pixels "
                           "(0 < d* <= max depth), averaged over images (Probe3D)"}


class DepthProbe(ProbeTask):
    """``wrc eval depth``: the depth probe on dataset ``root`` (``dataset``: nyu, generic or auto)."""

    kind = "depth"
    metrics = DEPTH_METRICS

    def __init__(self, root: str | os.PathLike, dataset: str = "auto", protocol: str = "probe3d",
                 options: ProbeOptions | None = None, depth_scale: float = 1000.0, max_depth: float = 10.0) -> None:
        if protocol not in DEPTH_PROTOCOLS:
            raise WrcError(f"unknown depth protocol {protocol!r}; use {' or '.join(DEPTH_PROTOCOLS)}")
        if not depth_scale > 0 or not max_depth > MIN_DEPTH:
            raise WrcError(f"--depth-scale must be positive and --max-depth above {MIN_DEPTH} m")
        super().__init__(DEPTH_PROTOCOLS[protocol], options or ProbeOptions())
        self.root, self.layout, self.depth_scale, self.max_depth = root, dataset, depth_scale, max_depth

    def open_data(self) -> ProbeData:
        return open_depth(self.layout, self.root, self.depth_scale)

    def make_head(self, data: ProbeData) -> DepthHead:
        return DepthHead(self.max_depth)


def run_depth(root: str | os.PathLike, dataset: str = "auto", protocol: str = "probe3d",
              options: ProbeOptions | None = None, depth_scale: float = 1000.0, max_depth: float = 10.0,
              command: str | None = None) -> dict[str, Any]:
    """Linear depth probe on dataset ``root`` for every upsampler of ``options``; the report."""
    task = DepthProbe(root, dataset, protocol, options, depth_scale, max_depth)
    return run_task(task, task.options, command)
