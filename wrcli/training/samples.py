"""Per-sample tensors for the training loop, decoded live or read from the feature cache.

Every random choice is seeded by the sample seed that :class:`wrcli.training.data.StepSampler` hands out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from wrcli.data.images import ImageError
from wrcli.errors import WrcError

from . import recipe
from .cache import read_train_entry
from .data import ImageRef, Item, decode


class LiveSamples(Dataset):
    """Decoded samples for a run without cache: the low-res view, its augmented copy, the K crops and offsets."""

    def __init__(self, images: Sequence[ImageRef], size: int, patch: int, crops: int) -> None:
        self.images, self.size, self.patch, self.crops = images, size, patch, crops
        self.pipeline = recipe.photometric_augmentation()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: Item) -> dict[str, Tensor]:
        index, seed = item
        image = self.images[index]
        try:
            pixels = decode(image, self.size, self.patch)
        except ImageError as e:
            raise WrcError(f"training image {image.name} became unreadable during training ({e.reason})") from None
        generator = torch.Generator().manual_seed(recipe.mix_seed(seed, "crops"))
        offsets = recipe.crop_offsets(generator, self.crops, self.size, self.patch)
        lr = recipe.half_view(pixels)
        return {
            "lr": lr,
            "aug": recipe.augment(lr, recipe.mix_seed(seed, "aug"), self.pipeline),
            "crops": recipe.crop_views(pixels, offsets),
            "offsets": offsets,
        }


class CachedSamples(Dataset):
    """Samples read from cache entries: the backbone outputs come from disk (one of the cached crop sets)."""

    def __init__(self, entries: Sequence[Path], variants: int) -> None:
        self.entries, self.variants = entries, variants
        self.pipeline = recipe.photometric_augmentation()

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, item: Item) -> dict[str, Tensor]:
        index, seed = item
        sample = read_train_entry(self.entries[index], recipe.mix_seed(seed, "variant") % self.variants)
        sample["aug"] = recipe.augment(sample["lr"], recipe.mix_seed(seed, "aug"), self.pipeline)
        return sample
