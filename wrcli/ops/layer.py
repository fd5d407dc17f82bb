"""The WRC and Converse2D layers as functions of their parameters (the nn.Modules in
:mod:`wrcli.models` only hold the parameters)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .interpolate import bilinear
from .precision import compute_dtype, full_precision, upcast
from .sampling import Centre, circular_pad
from .solvers import converse, exact, official

Solver = Literal["official", "exact"]
SOLVERS = {"official": official, "exact": exact}
DEFAULT_CENTRE: dict[str, Centre] = {"official": "image", "exact": "kernel", "converse": "kernel"}

# Clamp of the weight-conv output in the authors' CUDA path (keeps log1p(v²) finite in low precision).
CONV_CLAMP = 1e4


def weight_map(x: Tensor, conv_weight: Tensor) -> Tensor:
    """W = log1p(clamp(conv3×3(x), ±10⁴)²) ≥ 0, a dense C→C 3×3 convolution with zero padding."""
    return torch.log1p(F.conv2d(x, conv_weight, padding=conv_weight.shape[-1] // 2).clamp(-CONV_CLAMP, CONV_CLAMP).square())


def _pad(y: Tensor, padding: int, mode: str) -> Tensor:
    if padding == 0:
        return y
    if mode == "circular":
        return circular_pad(y, padding)
    return F.pad(y, (padding,) * 4, mode=mode)


def _crop(x: Tensor, margin: int) -> Tensor:
    H, W = x.shape[-2:]
    return x[..., margin : H - margin, margin : W - margin]


def wrc_layer(
    y: Tensor, kernel: Tensor, bias: Tensor, conv_low: Tensor, conv_high: Tensor, *, scale: int = 2,
    padding: int = 2, eps: float = 1e-5, solver: Solver = "official", centre: Centre | None = None,
    chunk: int | None = None,
) -> Tensor:
    """Weighted Reverse Convolution, ×``scale``: (B,C,h,w) → (B,C,s·h,s·w).

    y_p = circular pad of y by ``padding``; W_L = weight_map(y_p, conv_low);
    x0 = bilinear (align_corners) ×s of y_p; W_H = weight_map(x0, conv_high); λ = softplus(bias) + eps;
    x = solver(y_p, x0, W_L, W_H, kernel, λ) cropped by padding·s on each side.

    ``solver="official"`` reproduces the published layer (kernel rolled by half the image unless
    ``centre="kernel"``); ``"exact"`` minimises the same objective exactly (kernel ≤ scale).
    kernel (C,kh,kw), bias (C,), conv_low/conv_high (C,C,3,3). Runs in float32, returns y's dtype.
    ``chunk``: solve ``chunk`` output channels at a time (None: all at once). Exact: both solves are per channel
    (depthwise kernel, per-channel λ) and output channel c of each weight map reads all of y_p or x0 either way;
    only the weight convolutions' summation order may change with their output width (float rounding).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {solver!r}")
    dtype, channels = compute_dtype(y), y.shape[1]
    step = channels if chunk is None else max(1, chunk)
    with full_precision(y.device):
        yp, kernel, bias, conv_low, conv_high = upcast(dtype, _pad(y, padding, "circular"), kernel, bias, conv_low, conv_high)
        x0 = bilinear(yp, scale_factor=scale, align_corners=True)
        lam = F.softplus(bias) + eps
        parts = []
        for start in range(0, channels, step):
            c = slice(start, start + step)
            x = SOLVERS[solver](
                yp[:, c], x0[:, c], weight_map(yp, conv_low[c]), weight_map(x0, conv_high[c]), kernel[c], lam[c],
                scale=scale, centre=centre or DEFAULT_CENTRE[solver],
            )
            parts.append(_crop(x, padding * scale).to(y.dtype))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def converse_layer(
    y: Tensor, kernel: Tensor, bias: Tensor, *, scale: int = 2, padding: int = 2, eps: float = 1e-5,
    padding_mode: str = "circular", prior: Literal["nearest", "bilinear"] = "nearest", centre: Centre = "kernel",
) -> Tensor:
    """Converse2D (ConverseNet), ×``scale``: λ = sigmoid(bias − 9) + eps, x0 = ``prior`` upsampling of the
    padded y, x = argmin ‖y_p − A x‖² + λ‖x − x0‖² (exact), cropped by padding·s.
    """
    dtype = compute_dtype(y)
    with full_precision(y.device):
        yp, kernel, bias = upcast(dtype, _pad(y, padding, padding_mode), kernel, bias)
        if prior == "nearest":
            x0 = F.interpolate(yp, scale_factor=scale, mode="nearest")
        elif prior == "bilinear":
            x0 = bilinear(yp, scale_factor=scale, align_corners=True)
        else:
            raise ValueError(f"prior must be 'nearest' or 'bilinear', got {prior!r}")
        x = converse(yp, x0, kernel, torch.sigmoid(bias - 9) + eps, scale=scale, centre=centre)
    return _crop(x, padding * scale).to(y.dtype)
