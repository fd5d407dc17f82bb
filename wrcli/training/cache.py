"""The feature cache: the frozen backbone's outputs per image, computed once, for CPU training.

One float16 safetensors file per image and role, ``DIR/ab/<image sha256>.val.safetensors`` and
``DIR/ab/<image sha256>.train<V>.safetensors`` for V cached crop sets (so caches with other counts live side by
side; a train entry written before the count was in its name, ``….train.safetensors``, is adopted by
:func:`prepare` when its key matches):

- role ``train``: ``lr`` (uint8 low-res view, for guidance and on-the-fly augmentation), ``lr_feats``,
  ``down_feats`` (targets of the down term) and ``variants`` crop sets ``crops.<v>`` (K crop features) with
  ``offsets.<v>`` (their pixel offsets, drawn from the image's sha256, not from the training seed);
- role ``val``: ``lr``, ``lr_feats`` and the two 2× targets ``hr_feats`` (features of the full-size image) and
  ``tile_feats`` (the tiled features of its four quadrants, see :func:`wrcli.training.targets.val_targets`).

The metadata key ``wrcli-cache`` holds the entry's key (format, role, size, crop count, crop sets, backbone
config with its weights hash, image sha256); an entry whose key differs is stale and is rebuilt. Files are
written whole (temporary file, then rename), so an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from wrcli.backbones import Backbone
from wrcli.files import atomic_write
from wrcli.precision import autocast
from wrcli.progress import Progress
from wrcli.runtime import Rank, wait_until

from . import recipe
from .data import ImageRef, ImageSplit, decode
from .targets import train_targets, val_targets

FORMAT = 1
KEY = "wrcli-cache"


@dataclass(frozen=True)
class Entry:
    path: Path
    key: str
    image_path: str
    image_sha256: str
    role: str  # "train" | "val"


def entry(root: str | os.PathLike, image_path: str, image_sha256: str, role: str, *, identity: dict, size: int,
          crops: int, variants: int, precision: str = "fp32") -> Entry:
    """Where the cache entry of one image lives and the key it must carry (``precision``: of the backbone)."""
    fields = {"format": FORMAT, "role": role, "size": size, "backbone": identity, "image_sha256": image_sha256,
              "precision": precision}
    if role == "train":
        fields.update(crops=crops, variants=variants)
    else:
        fields.update(targets=["hr_feats", "tile_feats"])
    name = f"{image_sha256}.train{variants}" if role == "train" else f"{image_sha256}.{role}"
    path = Path(root) / image_sha256[:2] / f"{name}.safetensors"
    return Entry(path, json.dumps(fields, sort_keys=True), image_path, image_sha256, role)


def adopt_legacy(e: Entry) -> bool:
    """Move a train entry from its older name ``<sha256>.train.safetensors`` (no crop-set count) to ``e.path``
    when that file carries ``e``'s key and ``e.path`` does not exist yet; whether it did."""
    legacy = e.path.with_name(f"{e.image_sha256}.train.safetensors")
    if e.role != "train" or e.path.exists() or not is_valid(replace(e, path=legacy)):
        return False
    os.replace(legacy, e.path)
    return True


def ready(e: Entry) -> bool:
    """Whether ``e`` can be read as it is, after adopting it from its older name (:func:`adopt_legacy`)."""
    return adopt_legacy(e) or is_valid(e)


def is_valid(e: Entry) -> bool:
    """Whether the entry's file exists, reads, and carries the expected key."""
    try:
        with safe_open(str(e.path), framework="pt") as f:
            return (f.metadata() or {}).get(KEY) == e.key
    except Exception:  # noqa: BLE001 - missing, truncated or foreign file: rebuild it
        return False


def variant_offsets(image_sha256: str, variants: int, crops: int, size: int, patch: int) -> Tensor:
    """The cached crop sets' pixel offsets (variants, crops, 2), a pure function of the image's content."""
    return torch.stack(
        [
            recipe.crop_offsets(torch.Generator().manual_seed(recipe.mix_seed("cache", image_sha256, v)), crops, size, patch)
            for v in range(variants)
        ]
    )


def read_train_entry(path: Path, variant: int) -> dict[str, Tensor]:
    """One training sample from a train entry: lr view, features (float32), crop set ``variant`` and its offsets."""
    with safe_open(str(path), framework="pt") as f:
        return {
            "lr": f.get_tensor("lr"),
            "lr_feats": f.get_tensor("lr_feats").float(),
            "down_feats": f.get_tensor("down_feats").float(),
            "crop_feats": f.get_tensor(f"crops.{variant}").float(),
            "offsets": f.get_tensor(f"offsets.{variant}"),
        }


def read_val_entry(path: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(lr view, lr features, full-size features, tiled quadrant features) of a val entry, features as float32."""
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("lr"), *(f.get_tensor(k).float() for k in ("lr_feats", "hr_feats", "tile_feats"))


class _Decode(Dataset):
    def __init__(self, entries: Sequence[Entry], size: int, patch: int) -> None:
        self.entries, self.size, self.patch = entries, size, patch

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> tuple[int, Tensor]:
        e = self.entries[i]
        return i, decode(ImageRef(e.image_path, e.image_path), self.size, self.patch)


def prepare(root: str | os.PathLike, images: ImageSplit, backbone: Backbone, device: torch.device, *, identity: dict,
            size: int, crops: int, variants: int, workers: int, progress: bool,
            rank: Rank, precision: str = "fp32") -> tuple[list[Entry], list[Entry]]:
    """The (training, validation) entries of ``images`` under ``root``, built where missing or stale: process
    ``rank.rank`` builds every ``rank.world``-th of them, then waits until the other processes' are valid."""
    common = {"identity": identity, "size": size, "crops": crops, "variants": variants, "precision": precision}
    train = [entry(root, i.path, i.sha256, "train", **common) for i in images.train]
    val = [entry(root, i.path, i.sha256, "val", **common) for i in images.val]
    everything = train + val
    mine = [e for n, e in enumerate(everything) if n % rank.world == rank.rank and not ready(e)]
    build(mine, backbone, device, size=size, crops=crops, variants=variants, workers=workers, progress=progress,
          precision=precision)
    if rank.world > 1:
        wait_until(lambda: all(map(is_valid, everything)), timeout=7 * 86400.0, poll=2.0,
                   what=f"the other processes to build the feature cache in {root}")
    return train, val


def build(entries: Sequence[Entry], backbone: Backbone, device: torch.device, *, size: int, crops: int, variants: int,
          workers: int, progress: bool, precision: str = "fp32") -> None:
    """Compute and write ``entries`` (stale or missing ones; the caller picks them), one image at a time, the
    backbone at ``precision`` (:func:`wrcli.precision.autocast`; the entries' key says which)."""
    if not entries:
        return
    loader = DataLoader(_Decode(entries, size, backbone.patch_size), batch_size=None, num_workers=workers)
    bar = Progress(len(entries), "feature cache", enabled=progress)
    try:
        for i, pixels in loader:
            e = entries[i]
            pixels = pixels.to(device)
            with autocast(device, precision):
                if e.role == "train":
                    tensors = _train_tensors(backbone, pixels, variant_offsets(e.image_sha256, variants, crops, size,
                                                                               backbone.patch_size))
                else:
                    tensors = _val_tensors(backbone, pixels)
            _write(e, tensors)
            bar.advance()
    finally:
        bar.close()


def _train_tensors(backbone: Backbone, pixels: Tensor, offsets: Tensor) -> dict[str, Tensor]:
    """A train entry's tensors from the uint8 training image (3,S,S) and its crop sets' offsets (V,K,2)."""
    views = torch.cat([recipe.crop_views(pixels, o) for o in offsets])
    lr = recipe.half_view(pixels)
    lr_feats, crop_feats, down_feats = train_targets(backbone, lr[None], views)
    tensors = {"lr": lr, "lr_feats": lr_feats[0], "down_feats": down_feats[0]}
    for v, feats in enumerate(crop_feats.split(offsets.shape[1])):
        tensors[f"crops.{v}"], tensors[f"offsets.{v}"] = feats, offsets[v]
    return tensors


def _val_tensors(backbone: Backbone, pixels: Tensor) -> dict[str, Tensor]:
    """A val entry's tensors from the uint8 training-size image (3,S,S)."""
    lr, lr_feats, hr_feats, tile_feats = val_targets(backbone, pixels[None])
    return {"lr": lr[0], "lr_feats": lr_feats[0], "hr_feats": hr_feats[0], "tile_feats": tile_feats[0]}


def _write(e: Entry, tensors: dict[str, Tensor]) -> None:
    stored = {k: (v.half() if v.is_floating_point() else v).cpu().contiguous() for k, v in tensors.items()}
    with atomic_write(e.path) as tmp:
        save_file(stored, str(tmp), metadata={KEY: e.key})
