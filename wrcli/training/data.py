"""Training data: which images (readable ones, split into train/validation), in which order, as which tensors.

The order is a pure function of (seed, epoch): epoch e is a seeded permutation of the training images and
step s takes the next batch·world positions of it (rank r the r-th block of ``batch``); every random choice
for a sample (crop offsets, cached crop set, augmentation) is seeded by (seed, epoch, position). So any
step can be rebuilt from scratch, in any process or DataLoader worker, which makes resuming exact.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from wrcli.data.images import ImageError, ResizePolicy, load_image
from wrcli.data.sources import discover
from wrcli.errors import WrcError
from wrcli.files import file_sha256

from . import recipe

Item = tuple[int, int]  # (image index, sample seed)


@dataclass(frozen=True)
class ImageRef:
    name: str  # as discovered (relative to the folder for a folder source): hashed for the split and the list sha
    path: str  # what is opened
    sha256: str = ""  # of the file's bytes; only filled when a cache needs it


def list_images(src: str | Sequence[str]) -> list[ImageRef]:
    """A folder, glob, list file or image (see :func:`wrcli.data.sources.discover`), or a sequence of paths."""
    if isinstance(src, (str, os.PathLike)):
        return [ImageRef(name, path) for name, path in discover(os.fspath(src)).items]
    if not src:
        raise WrcError("the image list is empty; give a folder, a list file, a glob or at least one path")
    return [ImageRef(os.fspath(p), os.fspath(p)) for p in src]


def held_out(name: str, fraction: float) -> bool:
    """Whether image ``name`` is in the validation split: the first 8 bytes of sha256(name), read as a
    fraction of 2**64, fall below ``fraction`` (stable under adding, removing or reordering images)."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def list_sha256(images: Sequence[ImageRef]) -> str:
    """Identifies an ordered image list by its names."""
    digest = hashlib.sha256()
    for image in images:
        digest.update(image.name.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()


def decode(image: ImageRef, size: int, patch: int) -> Tensor:
    """The size×size training image, uint8 (3,S,S): short side resized to ``size`` (antialiased), centre crop.

    Raises :class:`wrcli.data.images.ImageError` for a file that cannot be used.
    """
    array, _ = load_image(image.path, ResizePolicy(size=size, patch=patch, crop=True))
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class _Scan(Dataset):
    def __init__(self, images: Sequence[ImageRef], size: int, patch: int, hash_files: bool) -> None:
        self.images, self.size, self.patch, self.hash_files = images, size, patch, hash_files

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[int, str | None, str]:
        image = self.images[i]
        try:
            decode(image, self.size, self.patch)
            sha = file_sha256(image.path) if self.hash_files else ""
        except ImageError as e:
            return i, e.reason, ""
        except OSError as e:
            return i, f"unreadable: {e.strerror}", ""
        return i, None, sha


def readable(images: Sequence[ImageRef], size: int, patch: int, *, workers: int, hash_files: bool, what: str) -> list[ImageRef]:
    """The images that decode, in order (with their file sha256 when ``hash_files``); one warning names the rest."""
    loader = DataLoader(_Scan(images, size, patch, hash_files), batch_size=None, num_workers=workers)
    good, bad = [], []
    for i, reason, sha in loader:
        if reason is None:
            good.append(ImageRef(images[i].name, images[i].path, sha))
        else:
            bad.append(f"{images[i].name} ({reason})")
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        warnings.warn(f"skipping {len(bad)} unreadable {what} image(s): {', '.join(bad[:5])}{more}", stacklevel=2)
    return good


@dataclass(frozen=True)
class ImageSplit:
    """The readable training and validation images of a run."""

    train: list[ImageRef]
    val: list[ImageRef]
    skipped: int  # unreadable training images left out
    split: dict[str, Any]  # how the validation images were chosen ("kind", ...) and how many are readable


def split_images(src: str | Sequence[str], val: float | str | Sequence[str] | None, *, size: int, patch: int,
                 workers: int, hash_files: bool, need: int) -> ImageSplit:
    """IMAGES less the validation images (see :func:`validation_images`), each list reduced to the readable
    images; WrcError when fewer than ``need`` training images remain (one step's worth)."""
    every = list_images(src)
    held_images, split = validation_images(every, val)
    held = {os.path.realpath(i.path) for i in held_images}
    train = [i for i in every if os.path.realpath(i.path) not in held]
    kept = readable(train, size, patch, workers=workers, hash_files=hash_files, what="training")
    skipped = len(train) - len(kept)
    val_kept = readable(held_images, size, patch, workers=workers, hash_files=hash_files, what="validation")
    if len(kept) < need:
        raise WrcError(
            f"only {len(kept)} readable training image(s) ({skipped} skipped, {len(held_images)} held out for "
            f"validation); a step needs batch_size × processes = {need}: add images or lower the batch size"
        )
    return ImageSplit(kept, val_kept, skipped, {**split, "images": len(val_kept)})


def validation_images(every: list[ImageRef], val: float | str | Sequence[str] | None) -> tuple[list[ImageRef], dict[str, Any]]:
    """The validation images and how they were chosen: None (none), a fraction of ``every`` held out by name
    (:func:`held_out`; a string that is not an existing path is read as a fraction), or images of their own."""
    if isinstance(val, str) and not os.path.exists(val):
        try:
            val = float(val)
        except ValueError:
            pass
    if val is None:
        return [], {"kind": "none"}
    if isinstance(val, (int, float)):
        if not 0 <= val < 1:
            raise WrcError(f"a validation fraction must be in [0, 1), got {val}")
        return [i for i in every if held_out(i.name, val)], {"kind": "fraction", "fraction": float(val)}
    images = list_images(val)
    return images, {"kind": "list", "list_sha256": list_sha256(images)}


# --------------------------------------------------------------------------------------------------
# order
# --------------------------------------------------------------------------------------------------
def epoch_order(count: int, seed: int, epoch: int) -> list[int]:
    """The permutation of the training images for ``epoch``."""
    generator = torch.Generator().manual_seed(recipe.mix_seed("order", seed, epoch))
    return torch.randperm(count, generator=generator).tolist()


class StepSampler(Sampler[list[Item]]):
    """Batch sampler: for steps ``start``..``end``-1, this rank's batch of (image index, sample seed)."""

    def __init__(self, count: int, batch: int, seed: int, start: int, end: int, rank: int = 0, world: int = 1) -> None:
        self.count, self.batch, self.seed, self.start, self.end = count, batch, seed, start, end
        self.rank, self.world = rank, world
        self.per_epoch = count // (batch * world)  # steps per epoch; the last partial batch of each epoch is dropped

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def __iter__(self) -> Iterator[list[Item]]:
        epoch, order = -1, []
        for step in range(self.start, self.end):
            e, i = divmod(step, self.per_epoch)
            if e != epoch:
                epoch, order = e, epoch_order(self.count, self.seed, e)
            first = (i * self.world + self.rank) * self.batch
            yield [(order[pos], recipe.mix_seed(self.seed, e, pos)) for pos in range(first, first + self.batch)]


def samples_seen(count: int, batch: int, seed: int, steps: int, world: int = 1, variants: int | None = None) -> dict[str, int]:
    """{"draws", "distinct"} of steps 0..steps-1 over all ranks: draws = steps·batch·world; distinct counts the
    different (image, cached crop set) pairs drawn with a cache of ``variants`` crop sets per image (the crop set
    is chosen as :class:`wrcli.training.samples.CachedSamples` does), and every draw without one (``variants``
    None: fresh random crops each time). The augmentation is drawn afresh either way and not counted."""
    draws = steps * batch * world
    if variants is None:
        return {"draws": draws, "distinct": draws}
    pairs = {
        (index, recipe.mix_seed(sample_seed, "variant") % variants)
        for rank in range(world)
        for items in StepSampler(count, batch, seed, 0, steps, rank, world)
        for index, sample_seed in items
    }
    return {"draws": draws, "distinct": len(pairs)}
