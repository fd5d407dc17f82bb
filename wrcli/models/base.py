"""The interface every upsampler implements, and the one public call that reaches any output size."""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wrcli.errors import WrcError
from wrcli.ops.backend import compiled, forced

from . import memory
from .blocks import fold_batchnorm
from .memory import check_memory

_REDUCED = (torch.float16, torch.bfloat16)


def resize(x: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Resize (B,C,h,w) to ``size`` in one interpolation.

    ``mode`` "nearest" uses PyTorch's ``nearest-exact`` (pixel-centre aligned, equal to plain nearest for
    integer upscaling); "bilinear"/"bicubic" use align_corners=False and antialias when either side
    shrinks. Antialiased kernels have no fp16/bf16 CPU implementation: there the resize runs in float32
    and the result is cast back.
    """
    size = (int(size[0]), int(size[1]))
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest-exact")
    if mode not in ("bilinear", "bicubic"):
        raise ValueError(f"unknown interpolation mode {mode!r}")
    shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    if shrinking and x.device.type == "cpu" and x.dtype in _REDUCED:
        return F.interpolate(x.float(), size=size, mode=mode, align_corners=False, antialias=True).to(x.dtype)
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=shrinking)


def run_pass(model: "Upsampler", x: Tensor, guide: Tensor | None, tile: int | None) -> Tensor:
    """One native pass of ``model`` (in ``tile``-sized tiles when not None): the unit the ``compiled`` backend
    compiles."""
    return model(x, guide) if tile is None else model(x, guide, tile=tile)


def _as_size(size: Any) -> tuple[int, int]:
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        size = (size, size)
    try:
        h, w = size
    except (TypeError, ValueError):
        raise ValueError(f"size must be an int or an (height, width) pair, got {size!r}") from None
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"size must hold positive integers, got {size!r}")
    return int(h), int(w)


class Upsampler(nn.Module):
    """Base class: maps backbone patch features (B,C,h,w) — optionally guided by the image the
    backbone saw — to a denser grid.

    Class attributes:
        name: registry name (set per instance by the registry).
        native_scale: the factor of one ``forward`` pass (2 for the learned ×2 layers); None for
            parameter-free interpolations, which reach any size in one step.
        guided: whether ``forward`` needs the (normalised) backbone input image.
        learned: whether it has trainable parameters (an uncheckpointed one is untrained).
        channel_agnostic: whether any channel count is accepted (interpolations).
        tile_sizes: the output tile sides a pass can run in, largest first (``forward(..., tile=T)`` and
            ``pass_elements(..., tile=T)`` accept them; empty: ``forward`` runs in one piece).

    ``forward(features, image)`` is one native pass; ``upsample(...)`` is the public call.
    """

    name: str = "upsampler"
    tile_sizes: tuple[int, ...] = ()
    native_scale: int | None = 2
    guided: bool = False
    learned: bool = True
    channel_agnostic: bool = False

    def __init__(self, channels: int | None, patch_size: int | None = None, **options: Any) -> None:
        super().__init__()
        if not self.channel_agnostic and (
            isinstance(channels, bool) or not isinstance(channels, numbers.Integral) or channels < 1
        ):
            raise ValueError(f"{type(self).__name__} needs a positive channel count, got {channels!r}")
        self.channels = None if channels is None else int(channels)
        self.patch_size = None if patch_size is None else int(patch_size)
        self.options: dict[str, Any] = dict(options)  # keyword options that rebuild it through the registry
        self.backbone_info: dict[str, Any] | None = None  # {"name", "arch"} of the backbone it belongs to
        self.provenance: dict[str, Any] | None = None  # training information (from a checkpoint)
        self.checkpoint: Path | None = None  # the file the weights were loaded from
        self._trained_parameters: int | None = None  # set when BatchNorm is folded: the count before folding

    # -- description ---------------------------------------------------------------------------
    @property
    def solver(self) -> str | None:
        return None

    @property
    def centre(self) -> str | None:
        return None

    @property
    def batchnorm_folded(self) -> bool:
        return self._trained_parameters is not None

    def num_parameters(self) -> int:
        """Parameters of the model as trained (before any BatchNorm folding)."""
        return self._trained_parameters if self.batchnorm_folded else sum(p.numel() for p in self.parameters())

    @property
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this upsampler (plus descriptive fields), JSON-serialisable."""
        return {
            "architecture": self.name,
            "solver": self.solver,
            "centre": self.centre,
            "scale": self.native_scale,
            "guided": self.guided,
            "channels": self.channels,
            "patch_size": self.patch_size,
            "options": dict(self.options),
            "backbone": None if self.backbone_info is None else dict(self.backbone_info),
            "parameters": self.num_parameters(),
        }

    # -- inference ---------------------------------------------------------------------------------
    def fold_batchnorm(self) -> Upsampler:
        """Switch to eval mode and fold each BatchNorm into the convolution before it, in place (see
        :func:`wrcli.models.blocks.fold_batchnorm`): the same outputs to rounding, faster. For inference only:
        a folded upsampler can be neither trained nor saved. Returns self."""
        if not self.batchnorm_folded:
            count = self.num_parameters()
            fold_batchnorm(self.eval())
            self._trained_parameters = count
        return self

    def train(self, mode: bool = True) -> Upsampler:
        if mode and self.batchnorm_folded:
            raise WrcError(f"upsampler {self.name!r} had its BatchNorm folded for inference and cannot be trained; "
                           "load it again to train it")
        return super().train(mode)

    # -- the public call -----------------------------------------------------------------------
    def check_inputs(self, features: Tensor, image: Tensor | None) -> None:
        """Raise ValueError with a clear message when the inputs cannot go through this upsampler."""
        if not isinstance(features, Tensor) or features.dim() != 4:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"features must be a (B, C, h, w) tensor, got {shape}")
        if not self.channel_agnostic and features.shape[1] != self.channels:
            raise ValueError(
                f"upsampler '{self.name}' expects {self.channels}-channel features, got {features.shape[1]} "
                f"channels; use an upsampler built for this backbone"
            )
        if self.guided:
            if image is None:
                raise ValueError(f"upsampler '{self.name}' is image-guided: pass the backbone's input image")
            if not isinstance(image, Tensor) or image.dim() != 4 or image.shape[1] != 3:
                shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
                raise ValueError(f"image must be a (B, 3, H, W) tensor, got {shape}")
            if image.shape[0] != features.shape[0]:
                raise ValueError(f"image batch {image.shape[0]} does not match features batch {features.shape[0]}")

    @staticmethod
    def target_size(hw: tuple[int, int], scale: float | None, size: Any) -> tuple[int, int]:
        """The output (height, width) from exactly one of ``scale`` (≥ 1) or ``size``."""
        if (scale is None) == (size is None):
            raise ValueError("give exactly one of scale= or size=")
        if size is not None:
            return _as_size(size)
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not scale >= 1:
            raise ValueError(f"scale must be a number ≥ 1, got {scale!r}")
        return max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale))

    def passes(
        self, hw: tuple[int, int], guide_hw: tuple[int, int] | None, target: tuple[int, int]
    ) -> Iterator[tuple[tuple[int, int], tuple[int, int] | None]]:
        """The (grid, guidance size) each native pass of ``upsample`` to ``target`` runs on: grids grow ×s
        until they cover the target, the guidance grows ×s before every pass after the first. Nothing for
        interpolations, which make no pass."""
        s = self.native_scale
        if s is None:
            return
        first = True
        while hw[0] < target[0] or hw[1] < target[1]:
            if not first and guide_hw is not None:
                guide_hw = (guide_hw[0] * s, guide_hw[1] * s)
            yield hw, guide_hw
            hw, first = (hw[0] * s, hw[1] * s), False

    def pass_elements(self, batch: int, hw: tuple[int, int], guide_hw: tuple[int, int] | None) -> int:
        """An upper bound on the elements of the largest tensor one native pass on a (batch, C, h, w) grid holds
        (``guide_hw``: the guidance image's size): here its output, B·C·(s·h)·(s·w). Models with
        ``tile_sizes`` take ``tile`` too and bound everything the pass holds at once."""
        s = self.native_scale or 1
        return batch * (self.channels or 1) * s * hw[0] * s * hw[1]

    def peak_bytes(self, features: Tensor, image: Tensor | None, target: tuple[int, int], tile: int | None = None) -> int:
        """An over-estimate of the bytes ``upsample`` to ``target`` needs at once, its passes run in ``tile``
        tiles (None: in one piece): the largest of its passes' (:meth:`pass_elements`) and of the final
        B·C·H·W, at ≥ 4 bytes an element (the solve runs in float32). Pure arithmetic on the shapes: nothing
        is allocated."""
        b, c, h, w = features.shape
        guide = (int(image.shape[-2]), int(image.shape[-1])) if self.guided and image is not None else None
        largest, tiles = b * c * target[0] * target[1], {} if tile is None else {"tile": tile}
        for hw, guide_hw in self.passes((int(h), int(w)), guide, target):
            largest = max(largest, self.pass_elements(b, hw, guide_hw, **tiles))
        return largest * max(4, features.element_size())

    def plan_tile(self, features: Tensor, image: Tensor | None, target: tuple[int, int], budget: int | None) -> int | None:
        """The tile side the passes run in: the largest of ``tile_sizes`` whose :meth:`peak_bytes` fits in
        ``budget`` bytes (None: no limit), else the smallest; None for a model without tiles or in training
        (BatchNorm's batch statistics span the whole map)."""
        if not self.tile_sizes or self.training:
            return None
        fits = [t for t in self.tile_sizes if budget is None or self.peak_bytes(features, image, target, t) <= budget]
        return fits[0] if fits else self.tile_sizes[-1]

    def upsample(
        self, features: Tensor, image: Tensor | None = None, *, scale: float | None = None, size: Any = None,
        max_memory: int | None = None,
    ) -> Tensor:
        """Upsample (B,C,h,w) features by ``scale`` (×2, ×4, ×8, any real ≥ 1) or to ``size`` (h, w).

        Learned ×s models run native passes until the grid covers the target (the guidance image is
        bilinearly enlarged ×s before every pass after the first, like the authors' iterative helper),
        then one bilinear resize (antialiased when shrinking) to the exact size. A target no larger
        than the input takes no pass. Interpolations go to the size in one step.
        Under the ``compiled`` backend (:mod:`wrcli.ops.backend`) each inference pass runs through
        ``torch.compile`` (one compile per input size, for batch 1 and for any larger batch, then fused elementwise
        work around the convolutions; eager if compiling fails); training passes stay eager.
        Memory: the budget is ``max_memory`` bytes, capped by the device's free memory
        (:func:`wrcli.models.memory.available_bytes`); models with ``tile_sizes`` run their passes in the
        largest tiles that fit it (:meth:`plan_tile`), with the same outputs to float rounding. A target whose
        estimate (:meth:`peak_bytes`) exceeds the budget even so is refused up front with a WrcError
        (:func:`wrcli.models.memory.check_memory`). Returns the features' dtype, in the contiguous (NCHW) layout
        whatever the model's memory format.
        """
        self.check_inputs(features, image)
        target = self.target_size(tuple(features.shape[-2:]), scale, size)
        budget = min((b for b in (memory.available_bytes(features.device), max_memory) if b is not None), default=None)
        tile = self.plan_tile(features, image, target, budget)
        check_memory(f"upsampling features {tuple(features.shape)} to {target[0]}×{target[1]}",
                     self.peak_bytes(features, image, target, tile), features.device, max_memory)
        x, guide = features, image if self.guided else None
        plan = list(self.passes(tuple(x.shape[-2:]), None if guide is None else tuple(guide.shape[-2:]), target))
        use_compiled = plan and forced() == "compiled" and not self.training
        step = compiled(run_pass, dynamic=False, any_batch=True) if use_compiled else run_pass
        for _, guide_hw in plan:
            if guide is not None and tuple(guide.shape[-2:]) != guide_hw:
                guide = F.interpolate(guide, size=guide_hw, mode="bilinear", align_corners=False)
            x = step(self, x, guide, tile)
        if tuple(x.shape[-2:]) != target:
            x = resize(x, target, getattr(self, "mode", "bilinear") if self.native_scale is None else "bilinear")
        return x.contiguous()  # one layout conversion when the model runs channels-last

    def forward(self, features: Tensor, image: Tensor | None = None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
