"""Baseline upsamplers: parameter-free interpolations and two learned, unguided ×2 layers."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Upsampler, resize
from .wrc import WRCLayer


class Interpolation(Upsampler):
    """Parameter-free resize of the features (any channel count, any output size in one step).

    ``mode``: "nearest" (PyTorch ``nearest-exact``), "bilinear" or "bicubic" (align_corners=False,
    antialiased when shrinking). ``forward`` is ×2; ``upsample`` goes straight to the requested size.
    """

    native_scale = None
    learned = False
    channel_agnostic = True

    def __init__(self, mode: str, channels: int | None = None, patch_size: int | None = None) -> None:
        if mode not in ("nearest", "bilinear", "bicubic"):
            raise ValueError(f"mode must be nearest, bilinear or bicubic; got {mode!r}")
        super().__init__(channels, patch_size)
        self.mode = self.name = mode

    def forward(self, features: Tensor, image: Tensor | None = None) -> Tensor:
        h, w = features.shape[-2:]
        return resize(features, (2 * h, 2 * w), self.mode)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class TransposedUpsampler(Upsampler):
    """A learned ×2 transposed convolution (kernel 2, stride 2, dense C→C, with bias).

    Initialised to the identity per 2×2 output block, so that untrained it equals nearest ×2.
    """

    name = "transposed"

    def __init__(self, channels: int, patch_size: int | None = None) -> None:
        super().__init__(channels, patch_size)
        c = self.channels
        self.deconv = nn.ConvTranspose2d(c, c, kernel_size=2, stride=2)
        with torch.no_grad():
            self.deconv.weight.zero_()
            self.deconv.weight[torch.arange(c), torch.arange(c)] = 1.0
            self.deconv.bias.zero_()

    def forward(self, features: Tensor, image: Tensor | None = None) -> Tensor:
        dtype = self.deconv.weight.dtype
        return self.deconv(features.to(dtype)).to(features.dtype)


class Converse2dUpsampler(Upsampler):
    """A learned ×2 Converse2D layer (ConverseNet) applied directly to the backbone channels.

    Kernel 2×2 per channel and the prior weight λ = sigmoid(bias − 9) + eps are the only parameters.
    """

    name = "converse2d"

    def __init__(self, channels: int, patch_size: int | None = None, centre: str | None = None) -> None:
        super().__init__(channels, patch_size, centre=centre)
        self.layer = WRCLayer(self.channels, kernel_size=2, scale=2, padding=2, eps=1e-5, solver="converse", centre=centre)

    @property
    def solver(self) -> str:
        return "converse"

    @property
    def centre(self) -> str | None:
        return self.layer.centre

    def pass_elements(self, batch: int, hw: tuple[int, int], guide_hw: tuple[int, int] | None) -> int:
        """The Converse2D layer's complex spectra on its padded ×s grid: B·C·2·s(h+2p)·s(w+2p)."""
        s, p = self.layer.scale, self.layer.padding
        return batch * self.channels * 2 * s * (hw[0] + 2 * p) * s * (hw[1] + 2 * p)

    def forward(self, features: Tensor, image: Tensor | None = None) -> Tensor:
        return self.layer(features)
