"""The WRC layer (parameters only; the maths is in :mod:`wrcli.ops`) and the published WRC upsampler."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wrcli.ops.interpolate import bilinear

from .base import Upsampler
from .blocks import (
    Bottleneck,
    ConvNorm,
    Geometry,
    bottlenecks,
    conv1x1,
    geometry,
    out_length,
    receptive,
    tiled,
)

SOLVERS = ("official", "exact", "converse")
CENTRES = ("image", "kernel")
SOLVER_NAMES = {"official": "wrc", "exact": "wrc-exact", "converse": "wrc-converse"}  # registry names


class WRCLayer(nn.Module):
    """Weighted Reverse Convolution, ×``scale``, depthwise on ``channels``: (B,C,h,w) → (B,C,s·h,s·w).

    Parameters:
        weight (1,C,k,k): the per-channel degradation kernel, initialised to softmax(randn) over its k² taps;
        bias (1,C,1,1): zeros; the prior weight is λ = softplus(bias) + eps (Converse2D: sigmoid(bias − 9) + eps);
        w_conv_low, w_conv_high: dense C→C 3×3 convolutions without bias that produce the low- and
            high-resolution weight maps W = log1p(conv(·)²) (absent for ``solver="converse"``).

    ``solver``: "official" (the authors' Fourier-domain weighting), "exact" (the true minimiser of the
    spatially weighted objective) or "converse" (Converse2D in the WRC slot, as in the paper's ablation).
    ``centre``: None for the solver's default, or "image" / "kernel" (see :func:`wrcli.ops.wrc_layer`).
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 2,
        scale: int = 2,
        padding: int = 2,
        eps: float = 1e-5,
        solver: str = "official",
        centre: str | None = None,
    ) -> None:
        super().__init__()
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(SOLVERS)}; got {solver!r}")
        if centre is not None and centre not in CENTRES:
            raise ValueError(f"centre must be None or one of {', '.join(CENTRES)}; got {centre!r}")
        self.channels, self.kernel_size, self.scale = channels, kernel_size, scale
        self.padding, self.eps, self.solver, self.centre = padding, eps, solver, centre
        taps = torch.softmax(torch.randn(1, channels, kernel_size * kernel_size), dim=-1)
        self.weight = nn.Parameter(taps.view(1, channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        if solver != "converse":
            self.w_conv_low = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
            self.w_conv_high = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)

    def forward(self, y: Tensor, chunk: int | None = None) -> Tensor:
        """``chunk``: solve that many channels at a time (see :func:`wrcli.ops.wrc_layer`; Converse2D: ignored)."""
        from wrcli.ops import converse_layer, wrc_layer

        kernel, bias = self.weight[0], self.bias.view(-1)
        if self.solver == "converse":
            return converse_layer(
                y, kernel, bias, scale=self.scale, padding=self.padding, eps=self.eps, centre=self.centre or "kernel"
            )
        return wrc_layer(
            y, kernel, bias, self.w_conv_low.weight, self.w_conv_high.weight, scale=self.scale,
            padding=self.padding, eps=self.eps, solver=self.solver, centre=self.centre, chunk=chunk,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, kernel_size={self.kernel_size}, scale={self.scale}, padding={self.padding}, "
            f"solver={self.solver!r}, centre={self.centre!r}"
        )


class WRCUpsampler(Upsampler):
    """The published WRC feature upsampler (×2 per pass), image-guided.

    With C backbone channels and G guidance channels (32), M = (C + G) // 2:

        image (B,3,H,W) → image_stem (1×1 conv 3→G, BN, ReLU) → image_branch1 (Bottlenecks, strides 2,1,2,1)
              → to the 2× token grid (2h,2w): used as is when it already has that size; otherwise bilinear
                resize to (4h,4w) unless already there, then max-pool 2                       = g1
              → image_branch2 (Bottlenecks, strides 2,1) → (h,w)                              = g2
        features (B,C,h,w) ⊕ g2 → fuse (Bottleneck C+G→M, Bottleneck M→M) → WRC layer on M channels (×2)
              ⊕ g1 → refine (Bottleneck M+G→C//2) → head (1×1 conv with bias, C//2→C)    → (B,C,2h,2w)

    For patch 8, 14 and 16 at image size patch·(h,w) this is exactly the authors' network (their fixed
    per-patch-size adapter); the size rule generalises it to any image size.
    ``skip=True`` (not in the paper) adds the bilinear ×2 of the features to the head's output and starts
    the head at zero, so an untrained model is bilinear and training learns a correction to it.
    ``skip_map=True`` (with ``skip``) passes the skipped features through a per-pixel affine channel map first,
    f + A·f + b (a 1×1 convolution, C→C with bias, starting at zero), the channel correction that a least-squares
    fit can set in closed form (:mod:`wrcli.training.skipfit`). Bilinear interpolation commutes with it (its
    weights sum to one), so it runs on the low-resolution grid.
    ``forward(features, image)``: ``image`` is the normalised backbone input. Computes in the
    parameters' dtype and returns the features' dtype.
    """

    guided = True
    tile_sizes = (64, 32, 16)  # below 16 the halo costs more than the tile saves: the kept tensors dominate

    def __init__(
        self,
        in_channels: int,
        patch_size: int | None = None,
        solver: str = "official",
        centre: str | None = None,
        guidance_channels: int = 32,
        skip: bool = False,
        skip_map: bool = False,
    ) -> None:
        if skip_map and not skip:
            raise ValueError("skip_map=True needs skip=True: the map acts on the bilinear skip")
        super().__init__(in_channels, patch_size, centre=centre, guidance_channels=guidance_channels, skip=bool(skip),
                         skip_map=bool(skip_map))
        if solver not in SOLVER_NAMES:
            raise ValueError(f"solver must be one of {', '.join(SOLVERS)}; got {solver!r}")
        self.name = SOLVER_NAMES[solver]
        c, g = self.channels, int(guidance_channels)
        mid = self.layer_channels(c, g)
        self.guidance_channels, self.mid_channels = g, mid
        self.image_stem = ConvNorm(conv1x1(3, g), act=True)
        self.image_branch1 = bottlenecks(g, (2, 1, 2, 1))
        self.image_branch2 = bottlenecks(g, (2, 1))
        self.fuse = nn.Sequential(Bottleneck(c + g, mid), Bottleneck(mid, mid))
        self.wrc = WRCLayer(mid, kernel_size=2, scale=2, padding=2, eps=1e-5, solver=solver, centre=centre)
        self.refine = Bottleneck(mid + g, c // 2)
        self.head = conv1x1(c // 2, c, bias=True)
        self.skip = bool(skip)
        if self.skip:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        if skip_map:
            self.skip_map = conv1x1(c, c, bias=True)
            nn.init.zeros_(self.skip_map.weight)
            nn.init.zeros_(self.skip_map.bias)

    @staticmethod
    def layer_channels(in_channels: int, guidance_channels: int = 32) -> int:
        """M = (C + G) // 2, the width the WRC layer (and so its solve) runs on."""
        return (in_channels + guidance_channels) // 2

    @property
    def solver(self) -> str:
        return self.wrc.solver

    @property
    def centre(self) -> str | None:
        return self.wrc.centre

    def pass_elements(
        self, batch: int, hw: tuple[int, int], guide_hw: tuple[int, int] | None, tile: int | None = None
    ) -> int:
        """An over-estimate of the elements one pass holds at once: every tensor that outlives its stage (the
        input B·C·h·w, the guidance B·3·H·W, the image branch's output at H/4·W/4, g1 on (4h,4w) and (2h,2w), the
        WRC layer's output, refine's input and the output; with ``skip_map`` the mapped input too), plus the largest
        stage's intermediates: the image branch ~3·G·(its input: the guidance, or one tile's window of 4T + field
        pixels a side), the WRC solve: x0 M·s(h+2p)·s(w+2p) and ~16 maps of that size per channel solved at once
        (:meth:`layer_chunk`; the solve is global, so it is chunked over channels, never tiled), refine + head
        ~3·(M+G+C)·(2h·2w, or a tile's window of T + field a side)."""
        (h, w), s, p = hw, self.wrc.scale, self.wrc.padding
        c, m, g = self.channels, self.mid_channels, self.guidance_channels
        image_layers = self._image_layers()
        (ki, si, _), (kr, _, _) = receptive(image_layers), receptive(self._refine_layers())
        gh, gw = guide_hw or (2 * s * h, 2 * s * w)
        high = s * h * s * w
        kept = c * h * w + 3 * gh * gw + g * out_length(image_layers, gh) * out_length(image_layers, gw)
        kept += g * 5 * high + (2 * m + g + c) * high + (c * h * w if hasattr(self, "skip_map") else 0)
        win_i, win_r = (max(gh, gw), max(s * h, s * w)) if tile is None else (si * tile + ki, tile + kr)
        image = 3 * g * min(gh, win_i) * min(gw, win_i)
        refine = 3 * (m + g + c) * min(s * h, win_r) * min(s * w, win_r)
        padded = s * (h + 2 * p) * s * (w + 2 * p)
        solve = (m + 16 * min(m, self.layer_chunk(hw, tile) or m)) * padded
        return batch * (kept + max(image, solve, refine))

    def layer_chunk(self, hw: tuple[int, int], tile: int | None) -> int | None:
        """Channels the WRC layer solves at once in a pass on ``hw`` tiled by ``tile``: as many as hold about the
        elements of one refine tile's window, (M+G+C)·(T + field)², in their s(h+2p)·s(w+2p) maps, at least one;
        None (all) untiled."""
        if tile is None:
            return None
        (h, w), s, p = hw, self.wrc.scale, self.wrc.padding
        window = (self.mid_channels + self.guidance_channels + self.channels) * (tile + receptive(self._refine_layers())[0]) ** 2
        return max(1, window // (s * (h + 2 * p) * s * (w + 2 * p)))

    def _image_layers(self) -> list[Geometry]:
        return geometry(self.image_stem) + geometry(self.image_branch1)

    def _refine_layers(self) -> list[Geometry]:
        return geometry(self.refine) + geometry(self.head)

    @staticmethod
    def to_double_grid(g: Tensor, h: int, w: int) -> Tensor:
        """Bring image-branch features to the 2× token grid (2h, 2w)."""
        if tuple(g.shape[-2:]) == (2 * h, 2 * w):
            return g
        if tuple(g.shape[-2:]) != (4 * h, 4 * w):
            g = bilinear(g, (4 * h, 4 * w), align_corners=False)
        return F.max_pool2d(g, 2)

    def forward(self, features: Tensor, image: Tensor | None = None, tile: int | None = None) -> Tensor:
        """One ×2 pass; ``tile``: run the image branch (at the guidance size) and refine + head in tiles of
        ``tile``×``tile`` output pixels (:func:`wrcli.models.blocks.tiled`: the same outputs to float rounding,
        in eval mode only, where BatchNorm has no batch statistics); None: in one piece."""
        if image is None:
            raise ValueError(f"upsampler '{self.name}' is image-guided: pass the backbone's input image")
        if tile is not None and self.training:
            raise ValueError("tiles need eval mode: in training BatchNorm normalises with statistics over the whole map")
        dtype = self.head.weight.dtype
        x, img = features.to(dtype), image.to(dtype)
        h, w = x.shape[-2:]
        g = tiled(lambda t: self.image_branch1(self.image_stem(t)), img, self._image_layers(), tile)
        g1 = self.to_double_grid(g, h, w)
        del g
        g2 = self.image_branch2(g1)
        x = self.fuse(torch.cat([x, g2], dim=1))
        x = torch.cat([self.wrc(x, chunk=self.layer_chunk((h, w), tile)), g1], dim=1)
        x = tiled(lambda t: self.head(self.refine(t)), x, self._refine_layers(), tile)
        if self.skip:
            skipped = features.to(dtype)
            if hasattr(self, "skip_map"):
                skipped = skipped + self.skip_map(skipped)
            x = x + bilinear(skipped, (2 * h, 2 * w), align_corners=False)
        return x.to(features.dtype)
