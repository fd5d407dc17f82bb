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

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from wrcli.data.images import ImageError, ResizePolicy, load_image
from wrcli.data.sources import discover
from wrcli.errors import WrcError

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
            sha = _file_sha256(image.path) if self.hash_files else ""
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


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
