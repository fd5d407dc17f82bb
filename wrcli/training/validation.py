"""Validation: the ×2 output from the low-res view against two high-resolution backbone targets.

For each held-out image (size S): the upsampler takes the features of the S/2 view (h×h tokens) to 2h×2h.
Targets on that grid: ``full``, the backbone's own 2h×2h features of the S×S image; ``tiles``, the features
of the image's four S/2 quadrants, each seen at the low-res view's size (the recipe's local-crop targets,
tiling the image). Reported per target: the mean cosine similarity over pixels and the MSE over all values,
for the model and for bilinear ×2 (align_corners=False) on the same features, and per image the contrast
(:func:`wrcli.training.affinity.mean_pairwise_cosine`, lower is more contrast) of the model's output, of
bilinear's and of both targets: an output whose pixels regress towards a common direction has a higher value
than its target. Ranks split the images and sum their statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from wrcli.backbones import Backbone
from wrcli.precision import autocast

from .affinity import mean_pairwise_cosine
from .cache import read_val_entry
from .data import ImageRef, decode
from .targets import val_targets

TARGETS = ("full", "tiles")
CONTRASTS = ("model", "bilinear", *TARGETS)  # the maps whose contrast is reported, per image
Sample = tuple[Tensor, Tensor, Tensor, Tensor]  # (uint8 low-res view, its features, full, tiles), one image


class _Decode(Dataset):
    def __init__(self, images: Sequence[ImageRef], size: int, patch: int) -> None:
        self.images, self.size, self.patch = images, size, patch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        return decode(self.images[i], self.size, self.patch)


def in_memory(images: Sequence[ImageRef], backbone: Backbone, device: torch.device, *, size: int, batch: int,
              workers: int, precision: str = "fp32") -> list[Sample]:
    """The validation samples of ``images``, computed once (the backbone at ``precision``,
    :func:`wrcli.precision.autocast`) and kept on the CPU in float32 (≈3.5 MB per image for ViT-S at 448)."""
    loader = DataLoader(_Decode(images, size, backbone.patch_size), batch_size=batch, num_workers=workers)
    samples: list[Sample] = []
    for pixels in loader:
        with autocast(device, precision):
            targets = val_targets(backbone, pixels.to(device))
        samples.extend(zip(*(t.cpu() for t in targets)))
    return samples


def from_cache(paths: Sequence[Path]) -> Callable[[int], Sample]:
    """A reader of validation samples from cache entries, by index."""
    return lambda i: read_val_entry(paths[i])


def agreement_sums(pred: Tensor, target: Tensor) -> Tensor:
    """[Σ cosine over pixels, pixel count, Σ squared error, value count] (float64)."""
    cos = F.cosine_similarity(pred.float(), target.float(), dim=1)
    sq = (pred.float() - target.float()).square()
    return torch.tensor([cos.sum().item(), cos.numel(), sq.sum().item(), sq.numel()], dtype=torch.float64)


@torch.no_grad()
def validate(model: nn.Module, normalize: Callable[[Tensor], Tensor], sample: Callable[[int], Sample], count: int,
             device: torch.device, *, batch: int, rank: int = 0, world: int = 1) -> dict:
    """{"images", "model": {"full": {"cos", "mse"}, "tiles": {"cos", "mse"}}, "bilinear": {…}, "contrast": {"model",
    "bilinear", "full", "tiles": the mean over images, "per_image": {the same names: one value per image}}} over
    samples 0..count-1 (this rank takes every ``world``-th one; the sums are all-reduced). The model runs in
    eval mode, float32."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, 2, 4, dtype=torch.float64)  # (model, bilinear) × (full, tiles) × agreement_sums
    contrast = torch.zeros(count, len(CONTRASTS), dtype=torch.float64)  # per image, zero where another rank's
    mine = list(range(rank, count, world))
    for start in range(0, len(mine), batch):
        indices = mine[start : start + batch]
        lr, lr_feats, *targets = (torch.stack(t).to(device) for t in zip(*(sample(i) for i in indices)))
        out = model(lr_feats, normalize(lr))
        bilinear = F.interpolate(lr_feats, scale_factor=2, mode="bilinear", align_corners=False)
        for m, pred in enumerate((out, bilinear)):
            for t, target in enumerate(targets):
                totals[m, t] += agreement_sums(pred, target)
        maps = (out, bilinear, *targets)
        contrast[indices] = torch.stack([mean_pairwise_cosine(x).double().cpu() for x in maps], dim=1)
    model.train(was_training)
    if world > 1:
        both = torch.cat([totals.flatten(), contrast.flatten()]).to(device)
        dist.all_reduce(both)
        totals, contrast = both[: totals.numel()].view_as(totals).cpu(), both[totals.numel() :].view_as(contrast).cpu()
    result: dict = {"images": count}
    for name, rows in zip(("model", "bilinear"), totals.tolist()):
        result[name] = {
            target: {"cos": cos / max(pixels, 1), "mse": sq / max(values, 1)}
            for target, (cos, pixels, sq, values) in zip(TARGETS, rows)
        }
    result["contrast"] = {name: float(column.mean()) if count else 0.0 for name, column in zip(CONTRASTS, contrast.T)}
    result["contrast"]["per_image"] = {name: column.tolist() for name, column in zip(CONTRASTS, contrast.T)}
    return result


def describe(result: dict) -> str:
    """One line: model and bilinear side by side, per target."""
    m, b, c = result["model"], result["bilinear"], result["contrast"]
    return f"validation ({result['images']} images): " + " | ".join(
        f"{t}: model cos {m[t]['cos']:.4f} mse {m[t]['mse']:.4f}, bilinear cos {b[t]['cos']:.4f} mse {b[t]['mse']:.4f}"
        for t in TARGETS
    ) + " | contrast (mean pairwise cosine) " + ", ".join(f"{name} {c[name]:.4f}" for name in CONTRASTS)
