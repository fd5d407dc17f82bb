"""The WRC layer (parameters only; the maths is in :mod:`wrcli.ops`) and the published WRC upsampler."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wrcli.ops.interpolate import bilinear

from .base import Upsampler
from .blocks import Bottleneck, ConvNorm, bottlenecks, conv1x1

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

    def forward(self, y: Tensor) -> Tensor:
        from wrcli.ops import converse_layer, wrc_layer

        kernel, bias = self.weight[0], self.bias.view(-1)
        if self.solver == "converse":
            return converse_layer(
                y, kernel, bias, scale=self.scale, padding=self.padding, eps=self.eps, centre=self.centre or "kernel"
            )
        return wrc_layer(
            y, kernel, bias, self.w_conv_low.weight, self.w_conv_high.weight, scale=self.scale,
            padding=self.padding, eps=self.eps, solver=self.solver, centre=self.centre,
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
    ``forward(features, image)``: ``image`` is the normalised backbone input. Computes in the
    parameters' dtype and returns the features' dtype.
    """

    guided = True

    def __init__(
        self,
        in_channels: int,
        patch_size: int | None = None,
        solver: str = "official",
        centre: str | None = None,
        guidance_channels: int = 32,
        skip: bool = False,
    ) -> None:
        super().__init__(in_channels, patch_size, centre=centre, guidance_channels=guidance_channels, skip=bool(skip))
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

    def pass_elements(self, batch: int, hw: tuple[int, int], guide_hw: tuple[int, int] | None) -> int:
        """The largest of: the image branch at the guidance size, B·G·H·W (or at (4h, 4w)); the WRC layer's
        complex spectra on its padded ×s grid, B·M·2·s(h+2p)·s(w+2p); the refine input plus the output,
        B·(M+G+C)·sh·sw."""
        (h, w), (gh, gw) = hw, guide_hw or (0, 0)
        s, p = self.wrc.scale, self.wrc.padding
        m, g = self.mid_channels, self.guidance_channels
        image = g * max(gh * gw, 16 * h * w)
        spectra = 2 * m * s * (h + 2 * p) * s * (w + 2 * p)
        return batch * max(image, spectra, (m + g + self.channels) * s * h * s * w)

    @staticmethod
    def to_double_grid(g: Tensor, h: int, w: int) -> Tensor:
        """Bring image-branch features to the 2× token grid (2h, 2w)."""
        if tuple(g.shape[-2:]) == (2 * h, 2 * w):
            return g
        if tuple(g.shape[-2:]) != (4 * h, 4 * w):
            g = bilinear(g, (4 * h, 4 * w), align_corners=False)
        return F.max_pool2d(g, 2)

    def forward(self, features: Tensor, image: Tensor | None = None) -> Tensor:
        if image is None:
            raise ValueError(f"upsampler '{self.name}' is image-guided: pass the backbone's input image")
        dtype = self.head.weight.dtype
        x, img = features.to(dtype), image.to(dtype)
        h, w = x.shape[-2:]
        g1 = self.to_double_grid(self.image_branch1(self.image_stem(img)), h, w)
        g2 = self.image_branch2(g1)
        x = self.fuse(torch.cat([x, g2], dim=1))
        x = self.wrc(x)
        x = self.head(self.refine(torch.cat([x, g1], dim=1)))
        if self.skip:
            x = x + bilinear(features.to(dtype), (2 * h, 2 * w), align_corners=False)
        return x.to(features.dtype)
