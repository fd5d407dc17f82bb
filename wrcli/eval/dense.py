"""Dense per-pixel features for the matching protocols, and the part of a task over image pairs that the
correspondence protocols (:mod:`wrcli.eval.keypoints`, :mod:`wrcli.eval.stereo`) share.

Features. The backbone sees each image once; every upsampler then maps the token grid (B,C,h,w) to
``scale`` × that grid, the result is L2-normalised per pixel, f̂ = f/‖f‖₂, and bilinearly resized
(align_corners=False) to the image size: F = R(f̂). This is the published protocol (WRC's and LiFT's
``eval_spair.py``: ×2 WRC, normalise, resize to imsize); ``scale`` = the patch size gives F at image
resolution directly, ``scale`` = 1 gives the raw backbone row of the tables.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from wrcli.errors import WrcError
from wrcli.precision import autocast

from .task import Bars, Measurement

if TYPE_CHECKING:
    from wrcli.backbones import Backbone
    from wrcli.models import Upsampler
    from wrcli.session import Session

FEATURES = ("backbone tokens; upsampler to scale x token grid; per-pixel L2 normalisation; "
            "bilinear resize (align_corners=False) to the image size")

# pixels uint8 (B,3,H,W) → (label, F (B,C,H,W)) for each upsampler in turn
Features = Callable[[Tensor], Iterator[tuple[str, Tensor]]]


def normalise_and_resize(features: Tensor, size: tuple[int, int]) -> Tensor:
    """F = R(f / ‖f‖₂): per-pixel L2 normalisation over channels, then bilinear resize to ``size``.

    (B,C,h,w) → (B,C,H,W); R is the identity when (h, w) = ``size``.
    """
    features = F.normalize(features.float(), dim=1)
    if tuple(features.shape[-2:]) == tuple(size):
        return features
    return F.interpolate(features, size=tuple(size), mode="bilinear", align_corners=False)


def feature_maps(backbone: Backbone, upsamplers: Mapping[str, Upsampler], scale: int, device: torch.device,
                 precision: str = "fp32") -> Features:
    """pixels uint8 (B,3,H,W) → (label, F (B,C,H,W)) for each upsampler in turn (see the top): one backbone
    pass, then one upsampler's maps at a time; both at ``precision`` (:func:`wrcli.precision.autocast`), F float32."""

    @torch.inference_mode()
    def tokens_of(pixels: Tensor) -> tuple[Tensor, Tensor]:
        images = backbone.normalize(pixels.to(device))
        with autocast(device, precision):
            return images, backbone(images)

    @torch.inference_mode()
    def dense(upsampler: Upsampler, tokens: Tensor, images: Tensor) -> Tensor:
        with autocast(device, precision):
            maps = upsampler.upsample(tokens, images, scale=scale)
        return normalise_and_resize(maps, tuple(images.shape[-2:]))

    def run(pixels: Tensor) -> Iterator[tuple[str, Tensor]]:
        images, tokens = tokens_of(pixels)
        for label, upsampler in upsamplers.items():
            yield label, dense(upsampler, tokens, images)

    return run


class PairTask(ABC):
    """A correspondence task (``wrc eval corr``) over pairs of images at side ``imsize``: the pairs read once,
    each pair through the backbone once, every upsampler's maps F scored on it.

    A subclass gives ``metrics`` and the methods below; ``score`` counts ``self.points``.
    """

    kind = "corr"
    metrics: Sequence[str] = ()

    def __init__(self, name: str, path: str, imsize: int, scale: int, limit: int | None) -> None:
        if imsize < 1 or scale < 1:
            raise WrcError("--imsize and --scale must be at least 1")
        self.name, self.path, self.imsize, self.scale, self.limit = name, path, imsize, scale, limit
        self.pairs: Sequence[Any] = ()
        self.points = 0

    @abstractmethod
    def read_pairs(self) -> Sequence[Any]:
        """The pairs of the dataset at ``self.path`` (all of them; the limit is applied after)."""

    @abstractmethod
    def score(self, features: Features, session: Session, advance: Callable[[], None]) -> Measurement:
        """Every upsampler's results over ``self.pairs``; ``advance()`` once per pair."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """This protocol's part of the report's protocol section (resize, matching, metric)."""

    def notes(self) -> dict[str, Any]:
        """This protocol's part of the report's dataset section."""
        return {}

    def read(self) -> None:
        pairs = self.read_pairs()
        self.pairs = pairs[:self.limit] if self.limit else pairs

    def features(self, session: Session, bars: Bars) -> AbstractContextManager[Features]:
        patch = session.backbone.patch_size
        if self.imsize % patch:
            raise WrcError(f"--imsize {self.imsize} is not a multiple of the patch size {patch}")
        return nullcontext(feature_maps(session.backbone, session.upsamplers, self.scale, session.device,
                                        session.precision))

    def measure(self, session: Session, features: Features, bars: Bars) -> Measurement:
        bar = bars(len(self.pairs), f"eval corr {self.name}", unit="pair")
        try:
            return self.score(features, session, bar.advance)
        finally:
            bar.close()

    def protocol(self, session: Session) -> dict[str, Any]:
        return {"dataset": self.name, "imsize": self.imsize, "scale": self.scale, "features": FEATURES,
                **self.settings()}

    def dataset(self) -> dict[str, Any]:
        return {"kind": self.name, "path": str(self.path), "pairs": len(self.pairs), "points": self.points,
                "limit": self.limit, **self.notes()}
