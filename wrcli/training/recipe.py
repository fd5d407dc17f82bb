"""The training recipe as pure functions: views, crops, windows, the loss, the schedule, the augmentation.

Geometry (size S, default 448, backbone patch p, default 14): the training image is S×S; the low-res view is
S/2 × S/2 (h = S/(2p) tokens a side), which the upsampler takes to 2h = S/p tokens, the token grid of the S×S
image. A local crop is an S/2 × S/2 window of the S×S image at a pixel offset that is a multiple of 2p; its
backbone features (h×h) are the target for the output window that starts at offset/p.
"""

from __future__ import annotations

import hashlib
import io
import math

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
from PIL import Image
from torch import Tensor


def mix_seed(*parts: object) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (ints and strings), independent of PYTHONHASHSEED."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def half_view(image: Tensor) -> Tensor:
    """uint8 (…,3,S,S) → uint8 (…,3,S/2,S/2): antialiased bilinear ×½ in float, rounded back to uint8.

    The low-res view is kept in uint8 so the guidance image, the backbone input and the augmented copy
    are the same pixels with or without a feature cache.
    """
    batched = image if image.dim() == 4 else image.unsqueeze(0)
    size = (batched.shape[-2] // 2, batched.shape[-1] // 2)
    out = F.interpolate(batched.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    out = out.round_().clamp_(0, 255).to(torch.uint8)
    return out if image.dim() == 4 else out[0]


def down_view(normalised_lr: Tensor) -> Tensor:
    """Input of the down term: the normalised low-res view enlarged ×2, bilinear, align_corners=True.

    Interpolation commutes with the per-channel affine normalisation, so enlarging the normalised view
    equals normalising the enlarged one (the authors enlarge their normalised tensor too).
    """
    return F.interpolate(normalised_lr, scale_factor=2, mode="bilinear", align_corners=True)


def crop_positions(size: int, patch: int) -> int:
    """Number of allowed crop offsets per axis: multiples of 2·patch in [0, size/2]."""
    return (size - size // 2) // (2 * patch) + 1


def crop_offsets(generator: torch.Generator, count: int, size: int, patch: int) -> Tensor:
    """``count`` random (top, left) pixel offsets (count, 2), multiples of 2·patch, for size/2 crops of a size² image."""
    steps = torch.randint(0, crop_positions(size, patch), (count, 2), generator=generator)
    return steps * (2 * patch)


def crop_views(image: Tensor, offsets: Tensor) -> Tensor:
    """uint8 (3,S,S) and pixel offsets (K,2) → the K crops (K,3,S/2,S/2) (top-left at each offset)."""
    side = image.shape[-1] // 2
    return torch.stack([image[:, top : top + side, left : left + side] for top, left in offsets.tolist()])


def crop_windows(output: Tensor, offsets: Tensor, patch: int) -> Tensor:
    """Windows of the upsampled output that the local crops' features must match.

    output (B,C,2h,2w) on the token grid of the S×S image (one cell = ``patch`` pixels); offsets (B,K,2) in
    pixels → (B·K,C,h,w) where window (b,k) starts at row top/patch, column left/patch.
    """
    h, w = output.shape[-2] // 2, output.shape[-1] // 2
    cells = (offsets // patch).tolist()
    return torch.stack(
        [output[b, :, top : top + h, left : left + w] for b, rows in enumerate(cells) for top, left in rows]
    )


def tile(images: Tensor) -> Tensor:
    """(B,C,2h,2w) → its four quadrants (4B,C,h,w), ordered image by image: top-left, top-right,
    bottom-left, bottom-right."""
    B, C, H, W = images.shape
    q = images.reshape(B, C, 2, H // 2, 2, W // 2).permute(0, 2, 4, 1, 3, 5)
    return q.reshape(4 * B, C, H // 2, W // 2)


def untile(quadrants: Tensor, batch: int) -> Tensor:
    """The inverse of :func:`tile`: (4B,C,h,w) → (B,C,2h,2w)."""
    _, C, h, w = quadrants.shape
    q = quadrants.reshape(batch, 2, 2, C, h, w).permute(0, 3, 1, 4, 2, 5)
    return q.reshape(batch, C, 2 * h, 2 * w)


def cosine_mse(pred: Tensor, target: Tensor, eps: float = 1e-6, *, normalise: bool = True) -> Tensor:
    """Cosine_MSE between (N,C,H,W) maps, computed in float32.

    With p, t the C-vectors at one pixel and m = min(t), M = max(t) over channels::

        loss = mean_pixels(1 − cos(p, t)) + mean_all(((p − m)/(M − m + eps) − (t − m)/(M − m + eps))²)

    i.e. a cosine-embedding loss plus an MSE after min–max normalising both maps by the TARGET's per-pixel
    range (the authors' loss); the second term equals mean(((p − t)/(M − m + eps))²).
    ``normalise=False``: the plain MSE mean((p − t)²) instead, which weighs every value alike.
    """
    pred, target = pred.float(), target.float()
    cos = F.cosine_similarity(pred, target, dim=1)
    if not normalise:
        return (1 - cos).mean() + (pred - target).square().mean()
    span = target.amax(dim=1, keepdim=True) - target.amin(dim=1, keepdim=True) + eps
    return (1 - cos).mean() + ((pred - target) / span).square().mean()


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Multiplier of the base learning rate for 0-based ``step``: linear warm-up over ``warmup`` steps
    ((step+1)/warmup), then a cosine from 1 down towards 0 at ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def photometric_augmentation() -> T.Compose:
    """Photometric-only augmentation of a uint8 (3,H,W) view → float (3,H,W) in 0..1 (no geometry).

    The authors' list, applied here to the low-res uint8 view: they augment the 448 image and then resize, so
    the 5×5 blur and the noise act at twice the relative scale here. Probabilities are the ones their
    ``RandomApply`` wrappers name; their inner transforms keep torchvision's own p=0.5 (autocontrast, equalize,
    sharpness, posterize, solarize, invert), which halves those rates in their runs, and their colour group
    also holds a ``RandomPhotometricDistort`` that is left out here. Their solarize threshold (0.9) is meant
    for float images but meets uint8 ones, where it inverts nearly every pixel; 0.9·255 is used here.
    """
    return T.Compose(
        [
            T.RandomApply([T.ColorJitter(0.2, 0.2, 0.3, 0.05)], p=0.5),
            T.RandomGrayscale(p=0.1),
            T.RandomApply([T.GaussianBlur(kernel_size=5, sigma=(0.3, 1.5))], p=0.35),
            T.RandomChoice([JpegRoundTrip(q) for q in (95, 80, 60, 40)], p=[0.25, 0.35, 0.25, 0.15]),
            T.RandomAutocontrast(p=0.2),
            T.RandomEqualize(p=0.15),
            T.RandomAdjustSharpness(1.5, p=0.2),
            T.RandomPosterize(bits=5, p=0.1),
            T.RandomSolarize(threshold=round(0.9 * 255), p=0.05),
            T.RandomInvert(p=0.02),
            T.ToDtype(torch.float32, scale=True),
            T.RandomApply([T.GaussianNoise(sigma=0.03, clip=True)], p=0.6),
        ]
    )


class JpegRoundTrip:
    """uint8 (3,H,W) → the same image after JPEG encoding at ``quality`` and decoding, with Pillow
    (torchvision's ``JPEG`` transform does the same through its deprecated image codecs)."""

    def __init__(self, quality: int) -> None:
        self.quality = quality

    def __call__(self, image: Tensor) -> Tensor:
        buffer = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=self.quality)
        decoded = np.asarray(Image.open(buffer).convert("RGB"))
        return torch.from_numpy(decoded.copy()).permute(2, 0, 1)


def augment(view: Tensor, seed: int, pipeline: T.Compose) -> Tensor:
    """``pipeline`` applied to ``view`` with the global torch RNG seeded by ``seed`` and restored afterwards,
    so the result is a pure function of (view, seed) whichever process or worker computes it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return pipeline(view)
