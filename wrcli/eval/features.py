"""The probes' feature cache: each image of a split is decoded, resized and passed through the frozen backbone once.

One folder per split, ``<cache>/<dataset>-<split>-<key>/``:

- ``images.npy`` (N, S, S, 3) uint8: the backbone input after the protocol's resize (kept for image-guided
  upsamplers, which take the normalised image);
- ``targets.npy`` (N, S, S): class indices (uint8) or depth in metres (float32), resized by nearest neighbour
  (none for a split cached without targets);
- ``feats.npy`` (N, C, S/p, S/p) float16: the backbone's low-resolution patch features;
- ``flipped.npy`` (only when the protocol flips): the features of the mirrored images, so that the random
  horizontal flip (applied before the backbone, as in the reference code) costs no backbone pass either;
- ``meta.json``: the key and how many images are done.

The key covers the format, dataset, split, every sample's files (path, size, mtime), the size, the flip, the
backbone (config and weights hash) and the precision it runs at (``fp32`` or ``bf16``). A
folder with the same key is reused, and an interrupted build resumes after its last finished batch. Every upsampler then reads the same arrays and upsamples on the fly.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from wrcli.backbones import Backbone
from wrcli.errors import WrcError, first_line
from wrcli.files import remove_stale_tmps, write_text_atomic
from wrcli.precision import autocast
from wrcli.progress import Progress

from .datasets import IGNORE, Sample, Split

FORMAT = 1
BACKBONE_BATCH = 8
Shapes = dict[str, tuple[tuple[int, ...], Any]]  # array name → (shape, dtype)


def centre_square(image: Image.Image, target: np.ndarray | None, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize the short side to ``size`` and centre-crop ``size × size`` (Resize(size) + CenterCrop(size)).

    Done as one resize of the centre square, which gives the same pixels up to the rounding of the crop offset:
    the image bilinear and antialiased (Pillow, like torchvision's default), the target by nearest neighbour at
    pixel centres (torch's ``nearest-exact``), so that labels and measured depths keep their values.
    Returns (size, size, 3) uint8 and (size, size) of the target's dtype (uint8 or float32), or None without one.
    """
    w, h = image.size
    if target is not None and target.shape != (h, w):
        raise ValueError(f"target map {target.shape[1]}x{target.shape[0]} does not match the {w}x{h} image")
    s = min(w, h)
    box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    pixels = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, box=box))
    if target is None:
        return pixels, None
    resized = Image.fromarray(target).resize((size, size), Image.Resampling.NEAREST, box=box)
    return pixels, np.asarray(resized, dtype=target.dtype)


class _Decoded(Dataset):
    """Samples ``start..`` of a split, decoded and resized in DataLoader workers; a failure comes back as text.
    With ``classes``, a label outside 0..classes−1 that is not 255 (ignore) is a failure."""

    def __init__(self, samples: tuple[Sample, ...], start: int, size: int, dtype: np.dtype | None,
                 classes: int | None) -> None:
        self.samples, self.start, self.size, self.dtype, self.classes = samples, start, size, dtype, classes

    def __len__(self) -> int:
        return len(self.samples) - self.start

    def __getitem__(self, i: int) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
        sample = self.samples[self.start + i]
        try:
            image, target = sample.load()
            if self.classes is not None:
                bad = np.unique(target[(target >= self.classes) & (target != IGNORE)])
                if bad.size:
                    raise ValueError(f"label values {bad[:5].tolist()} are not classes 0..{self.classes - 1} or {IGNORE} (ignore)")
            pixels, target = centre_square(image, None if self.dtype is None else target.astype(self.dtype, copy=False),
                                           self.size)
        except Exception as e:  # noqa: BLE001 - Pillow, h5py and numpy raise many types for a bad file
            return None, None, f"cannot read sample {sample.name}: {first_line(e)}"
        return pixels, target, None


@dataclass
class SplitCache:
    """The cached arrays of one split (memory-mapped)."""

    images: np.ndarray
    targets: np.ndarray | None  # None: cached without targets (object discovery has only boxes)
    feats: np.ndarray
    flipped: np.ndarray | None

    @classmethod
    def of(cls, arrays: dict[str, np.ndarray]) -> SplitCache:
        return cls(arrays["images"], arrays.get("targets"), arrays["feats"], arrays.get("flipped"))

    def __len__(self) -> int:
        return len(self.feats)

    def batch(self, index: Tensor, flip: Tensor | None, device: torch.device) -> tuple[Tensor, Tensor, Tensor | None]:
        """Images (B, 3, S, S) uint8, features (B, C, h, w) float32 and targets (B, S, S) (None if not cached) of
        samples ``index``, those with ``flip`` mirrored (image, target, and the features of the mirrored image)."""
        idx = index.numpy()
        pixels = torch.from_numpy(self.images[idx]).permute(0, 3, 1, 2).contiguous()
        feats = torch.from_numpy(self.feats[idx])
        targets = None if self.targets is None else torch.from_numpy(self.targets[idx])
        if flip is not None and bool(flip.any()):
            if self.flipped is None:
                raise ValueError("this split was cached without the mirrored features")
            pixels[flip] = pixels[flip].flip(-1)
            if targets is not None:
                targets[flip] = targets[flip].flip(-1)
            feats[flip] = torch.from_numpy(self.flipped[idx[flip.numpy()]])
        return pixels.to(device), feats.to(device).float(), None if targets is None else targets.to(device)


def cache_key(dataset: str, split: Split, size: int, flip: bool, backbone: Backbone, target_dtype: np.dtype | None,
              classes: int | None, precision: str = "fp32") -> dict[str, Any]:
    """Everything the cached arrays depend on."""
    samples = hashlib.sha256(json.dumps([s.fingerprint() for s in split.samples]).encode()).hexdigest()
    return {"format": FORMAT, "dataset": dataset, "split": split.name, "images": len(split.samples), "samples": samples,
            "size": size, "flip": flip, "target_dtype": None if target_dtype is None else np.dtype(target_dtype).name, "classes": classes,
            "backbone": backbone.config(), "precision": precision}


def build_cache(root: str | os.PathLike, dataset: str, split: Split, *, size: int, flip: bool, backbone: Backbone,
                device: torch.device, target_dtype: np.dtype | None, classes: int | None = None, workers: int = 0,
                progress: bool = True, precision: str = "fp32") -> SplitCache:
    """Decode, resize and encode ``split`` once under ``root`` (or reuse/resume a folder with the same key).
    ``target_dtype`` None: no target maps are kept (the samples' ``load`` may give None for them);
    ``classes``: the number of classes the label maps must fit (segmentation); ``precision``: of the backbone
    (:func:`wrcli.precision.autocast`), part of the key."""
    if size % backbone.patch_size:
        raise WrcError(f"image size {size} is not a multiple of the backbone's {backbone.patch_size}-pixel patch")
    key = cache_key(dataset, split, size, flip, backbone, target_dtype, classes, precision)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(root) / f"{dataset}-{split.name}-{digest}"
    shapes = _shapes(len(split.samples), size, backbone.channels, size // backbone.patch_size, target_dtype, flip)
    meta = folder / "meta.json"
    done = cached_count(meta, key, [folder / f"{name}.npy" for name in shapes])
    if done == len(split.samples):
        return SplitCache.of({name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in shapes})
    arrays = open_arrays(folder, shapes, resume=done > 0)
    write_meta(meta, key, done)
    dtype = None if target_dtype is None else np.dtype(target_dtype)
    loader = DataLoader(_Decoded(split.samples, done, size, dtype, classes), batch_size=BACKBONE_BATCH,
                        num_workers=workers, collate_fn=list)
    bar = Progress(len(split.samples) - done, f"features {dataset} {split.name}", enabled=progress)
    with torch.inference_mode(), autocast(device, precision):
        for batch in loader:
            done = _encode(batch, arrays, done, backbone, device)
            write_meta(meta, key, done)
            bar.advance(len(batch))
    bar.close()
    return SplitCache.of(arrays)


def _shapes(n: int, size: int, channels: int, grid: int, target_dtype: np.dtype | None, flip: bool) -> Shapes:
    """name → (shape, dtype) of the cached arrays of ``n`` images (see the module docstring)."""
    shapes: Shapes = {"images": ((n, size, size, 3), np.uint8), "feats": ((n, channels, grid, grid), np.float16)}
    if target_dtype is not None:
        shapes["targets"] = ((n, size, size), target_dtype)
    if flip:
        shapes["flipped"] = shapes["feats"]
    return shapes


def open_arrays(folder: Path, shapes: Shapes, resume: bool) -> dict[str, np.memmap]:
    """The cache files memory-mapped for writing: kept when resuming, else created (a killed writer's temporary
    metadata file is removed)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_tmps(folder / "meta.json")
        mode = "r+" if resume else "w+"
        return {name: open_memmap(folder / f"{name}.npy", mode=mode, dtype=dt, shape=shape)
                for name, (shape, dt) in shapes.items()}
    except OSError as e:
        raise WrcError(f"cannot create the feature cache in {folder}: {e.strerror or e}") from None


def _encode(batch: list[tuple[np.ndarray | None, np.ndarray | None, str | None]], arrays: dict[str, np.memmap],
            start: int, backbone: Backbone, device: torch.device) -> int:
    """Write one decoded batch at rows ``start..`` (images, targets, features, mirrored features) and flush it;
    the rows done after it. A sample that failed to decode stops the build with its reason."""
    errors = [err for *_, err in batch if err]
    if errors:
        raise WrcError(errors[0])
    a, b = start, start + len(batch)
    pixels = np.stack([p for p, _, _ in batch])
    x = backbone.normalize(torch.from_numpy(pixels).permute(0, 3, 1, 2).to(device))
    arrays["images"][a:b] = pixels
    if "targets" in arrays:
        arrays["targets"][a:b] = np.stack([t for _, t, _ in batch])
    arrays["feats"][a:b] = backbone(x).to(torch.float16).cpu().numpy()
    if "flipped" in arrays:
        arrays["flipped"][a:b] = backbone(x.flip(-1)).to(torch.float16).cpu().numpy()
    for arr in arrays.values():
        arr.flush()
    return b


def cached_count(meta_path: Path, key: dict, files: list[Path]) -> int:
    """Images already cached under ``key`` (0 when the folder is new, partial files are missing or the key differs)."""
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return 0
    return int(meta.get("done", 0)) if meta.get("key") == key and all(f.is_file() for f in files) else 0


def write_meta(path: Path, key: dict, done: int) -> None:
    write_text_atomic(path, json.dumps({"key": key, "done": done}, indent=1))
