"""Convolutional building blocks shared by the learned upsamplers."""

from __future__ import annotations

import torch
from torch import Tensor, nn


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
