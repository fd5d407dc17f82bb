"""Convolutional building blocks shared by the learned upsamplers."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

Geometry = tuple[int, int, int]  # (kernel, stride, padding) of a convolution along either spatial axis


def conv1x1(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """Pointwise convolution (no padding needed)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=bias)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """3×3 convolution with 'same' zero padding (output ⌈H/stride⌉ × ⌈W/stride⌉)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=bias)


class ConvNorm(nn.Sequential):
    """convolution → BatchNorm (→ ReLU when ``act``); submodules ``conv``, ``norm`` (and ``act``)."""

    norm_pairs = (("conv", "norm"),)  # (convolution, the BatchNorm after it): see fold_batchnorm

    def __init__(self, conv: nn.Conv2d, act: bool = False) -> None:
        super().__init__()
        self.conv = conv
        self.norm = nn.BatchNorm2d(conv.out_channels)
        if act:
            self.act = nn.ReLU()


class Bottleneck(nn.Module):
    """ResNet-style residual block at constant width:

        out = ReLU( BN(1×1(ReLU(BN(3×3/stride(ReLU(BN(1×1(x)))))))) + shortcut(x) )

    The first two convolutions keep ``in_channels``; the last one maps to ``out_channels``. The
    shortcut is the identity, or a strided 1×1 projection + BN when the stride or the width changes.
    Spatial output: ⌈H/stride⌉ × ⌈W/stride⌉.
    """

    norm_pairs = (("conv_in", "norm_in"), ("conv_mid", "norm_mid"), ("conv_out", "norm_out"))

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.conv_in = conv1x1(in_channels, in_channels)
        self.norm_in = nn.BatchNorm2d(in_channels)
        self.conv_mid = conv3x3(in_channels, in_channels, stride)
        self.norm_mid = nn.BatchNorm2d(in_channels)
        self.conv_out = conv1x1(in_channels, out_channels)
        self.norm_out = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = ConvNorm(conv1x1(in_channels, out_channels, stride)) if needs_projection else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu(self.norm_in(self.conv_in(x)))
        h = self.relu(self.norm_mid(self.conv_mid(h)))
        h = self.norm_out(self.conv_out(h))
        return self.relu(h + self.shortcut(x))

    def extra_repr(self) -> str:
        return f"{self.in_channels} → {self.out_channels}, stride={self.stride}"


def bottlenecks(channels: int, strides: list[int] | tuple[int, ...]) -> nn.Sequential:
    """A chain of constant-width Bottlenecks with the given strides."""
    return nn.Sequential(*(Bottleneck(channels, channels, s) for s in strides))


def geometry(module: nn.Module) -> list[Geometry]:
    """The (kernel, stride, padding) along each spatial axis of every convolution on ``module``'s path from
    input to output, in order; pointwise maps (BatchNorm, ReLU, Identity) add none. A Bottleneck is its
    main path (its shortcut, a strided 1×1, reads only pixels inside the 3×3 window of ``conv_mid``).
    TypeError for a module whose spatial footprint is not known here."""
    if isinstance(module, nn.Conv2d):
        (k, kw), (s, sw), pad = module.kernel_size, module.stride, module.padding
        if isinstance(pad, str) or k != kw or s != sw or pad[0] != pad[1] or module.dilation != (1, 1):
            raise TypeError(f"no single geometry for {module}")
        return [(k, s, pad[0])]
    if isinstance(module, Bottleneck):
        return geometry(module.conv_in) + geometry(module.conv_mid) + geometry(module.conv_out)
    if isinstance(module, nn.Sequential):
        return [g for child in module for g in geometry(child)]
    if isinstance(module, (nn.BatchNorm2d, nn.ReLU, nn.Identity)):
        return []
    raise TypeError(f"no geometry for {type(module).__name__}")


def receptive(layers: list[Geometry]) -> Geometry:
    """The chain as one convolution: output o reads input [o·s − p, o·s − p + k). Composing (k1,s1,p1) then
    (k2,s2,p2) gives (k1 + (k2 − 1)·s1, s1·s2, p1 + p2·s1)."""
    k, s, p = 1, 1, 0
    for k2, s2, p2 in layers:
        k, s, p = k + (k2 - 1) * s, s * s2, p + p2 * s
    return k, s, p


def out_length(layers: list[Geometry], n: int) -> int:
    """Output length of the chain on an input of length n: ⌊(n + 2p − k)/s⌋ + 1 per layer."""
    for k, s, p in layers:
        n = (n + 2 * p - k) // s + 1
    return n


def _span(a: int, b: int, field: Geometry, n: int) -> tuple[int, int]:
    """Input [lo, hi) that output [a, b) of a chain with ``field`` reads, lo floored to a multiple of its stride
    (so that every layer sees the tile on its own sampling grid), clipped to [0, n)."""
    k, s, p = field
    return max(0, (a * s - p) // s * s), min(n, (b - 1) * s - p + k)


def tiled(fn: Callable[[Tensor], Tensor], x: Tensor, layers: list[Geometry], tile: int | None) -> Tensor:
    """``fn(x)`` for (B,C,H,W) ``x``, computed on ``tile``×``tile`` output tiles (None: in one piece).

    ``fn`` must be a chain of zero-padded convolutions with geometry ``layers`` (see :func:`geometry`) and
    pointwise maps, with no statistics over space (BatchNorm in eval mode). Each tile's input is the window its
    outputs read (:func:`receptive`), starting on a multiple of the chain's stride; the rows and columns at its
    cut edges that saw the tile's zero padding instead of their neighbours fall outside the kept output. So every
    output pixel is the same sum of the same products as in one piece; only the summation order may differ with
    the convolution algorithm chosen for the tile's shape (float rounding). Peak: one tile's intermediates plus
    the output.
    """
    H, W = x.shape[-2:]
    oh, ow = out_length(layers, H), out_length(layers, W)
    if tile is None or (oh <= tile and ow <= tile):
        return fn(x)
    field, out = receptive(layers), None
    for a0 in range(0, oh, tile):
        b0 = min(a0 + tile, oh)
        r0, r1 = _span(a0, b0, field, H)
        for a1 in range(0, ow, tile):
            b1 = min(a1 + tile, ow)
            c0, c1 = _span(a1, b1, field, W)
            y = fn(x[..., r0:r1, c0:c1])
            if out is None:
                out = y.new_empty(*y.shape[:-2], oh, ow)
            dr, dc = r0 // field[1], c0 // field[1]
            out[..., a0:b0, a1:b1] = y[..., a0 - dr : b0 - dr, a1 - dc : b1 - dc]
    return out


def folded_conv(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """One convolution computing ``norm(conv(x))`` for a BatchNorm in eval mode (running statistics):

        γ (W∗x + b − μ) / √(σ² + ε) + β = (s W)∗x + s (b − μ) + β,   s = γ / √(σ² + ε) per output channel.

    Formed in float64, stored in the convolution's dtype.
    """
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, bias=True, padding_mode=conv.padding_mode, device=conv.weight.device,
                    dtype=conv.weight.dtype)
    s = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
    b = conv.bias.double() if conv.bias is not None else torch.zeros_like(s)
    with torch.no_grad():
        out.weight.copy_(conv.weight.double() * s.view(-1, 1, 1, 1))
        out.bias.copy_((b - norm.running_mean.double()) * s + norm.bias.double())
    return out


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold the BatchNorm after each convolution of the blocks above (their ``norm_pairs``) into that
    convolution, in place; the norm becomes an identity. For inference only: the outputs are the same to
    rounding, with one pass over the activations (one kernel launch on a GPU) fewer per convolution. In
    training BatchNorm normalises with the batch's statistics, so ``model`` must be in eval mode.
    """
    if model.training:
        raise ValueError("fold BatchNorm in eval mode only: in training it normalises with batch statistics")
    for block in list(model.modules()):
        for conv_name, norm_name in getattr(block, "norm_pairs", ()):
            norm = getattr(block, norm_name)
            if isinstance(norm, nn.BatchNorm2d):
                setattr(block, conv_name, folded_conv(getattr(block, conv_name), norm))
                setattr(block, norm_name, nn.Identity())
    return model
