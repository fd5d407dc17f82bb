"""The skip map of a WRC upsampler (``skip_map=True``) set in closed form: a ridge least-squares fit.

The upsampler's output is o = n(f, I) + bilinear(f + A·f + b) (n: the network, f: the low-res features, I: the
guidance image), and bilinear interpolation commutes with the per-pixel affine map (its weights sum to one), so
with u = bilinear(f) and z = [u; 1] per output pixel the output is linear in θ = [Aᵀ + I; bᵀ] − [I; 0]:

    o = n + u + zᵀθ.

With the rest of the network fixed, the MSE part of the training objective — the down term (weight ``down_weight``,
a mean over the output's pixels) plus the local term (weight 1, a mean over the crop windows' pixels) — is a
quadratic in θ, and

    θ* = argmin_θ Σ_samples Σ_terms (w_term / P_term) Σ_pixels ‖r − zᵀθ‖² + ρ·N·‖θ‖²,   r = t − n − u,

with N samples and ρ = ``ridge`` (shrinking A and b towards zero, i.e. the plain bilinear skip) solves the normal
equations (G + ρN·I) θ = X, G = Σ w zzᵀ and X = Σ w z rᵀ, accumulated in float64. The cosine part of the
objective is left out: it is not quadratic. It is the least-squares optimum of the layer a gradient method reaches
only slowly — a channel correction of the whole output that one linear map captures (model card of
``wrc_dinov2_vits14``, "What the collapse is").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from wrcli.models.registry import create_upsampler
from wrcli.models.wrc import WRCUpsampler
from wrcli.ops.interpolate import bilinear

from .recipe import crop_windows


@dataclass
class NormalEquations:
    """Σ w zzᵀ (C+1, C+1), Σ w z rᵀ (C+1, C) and Σ w ‖r‖² over the fitted pixels, float64; ``samples``: N."""

    gram: Tensor
    cross: Tensor
    residual: float = 0.0
    samples: int = 0
    pixels: dict[str, int] = field(default_factory=lambda: {"down": 0, "local": 0})

    @classmethod
    def zeros(cls, channels: int) -> NormalEquations:
        return cls(torch.zeros(channels + 1, channels + 1, dtype=torch.float64),
                   torch.zeros(channels + 1, channels, dtype=torch.float64))

    def add(self, u: Tensor, residual: Tensor, weight: float) -> None:
        """Add the pixels of maps (B,C,H,W): ``u`` the bilinear skip, ``residual`` r, each pixel weighted ``weight``."""
        z = design(u)
        r = residual.permute(0, 2, 3, 1).reshape(-1, residual.shape[1]).double()
        self.gram += weight * (z.T @ z)
        self.cross += weight * (z.T @ r)
        self.residual += weight * r.square().sum().item()

    def objective(self, theta: Tensor) -> float:
        """Σ w ‖r − zᵀθ‖² (without the ridge term) for θ (C+1, C)."""
        theta = theta.double()
        return self.residual - 2 * (theta * self.cross).sum().item() + (theta * (self.gram @ theta)).sum().item()


def design(u: Tensor) -> Tensor:
    """(B,C,H,W) → (B·H·W, C+1) float64: each pixel's channels and a 1."""
    pixels = u.permute(0, 2, 3, 1).reshape(-1, u.shape[1]).double()
    return torch.cat([pixels, pixels.new_ones(len(pixels), 1)], dim=1)


def solve(normal: NormalEquations, ridge: float) -> Tensor:
    """θ* (C+1, C) float64 of the normal equations with ridge ρ = ``ridge`` per sample (module docstring)."""
    if ridge < 0:
        raise ValueError(f"ridge must be ≥ 0, got {ridge}")
    eye = torch.eye(len(normal.gram), dtype=torch.float64)
    return torch.linalg.solve(normal.gram + ridge * normal.samples * eye, normal.cross)


def theta_of(model: WRCUpsampler) -> Tensor:
    """The skip map's θ = [Aᵀ; bᵀ] (C+1, C), float64."""
    conv = skip_map_of(model)
    return torch.cat([conv.weight[:, :, 0, 0].T, conv.bias[None]]).detach().double().cpu()


def set_theta(model: WRCUpsampler, theta: Tensor) -> None:
    """Write θ (C+1, C) into the skip map (A = θ[:C]ᵀ, b = θ[C]), in the map's dtype and device."""
    conv = skip_map_of(model)
    with torch.no_grad():
        conv.weight.copy_(theta[:-1].T[:, :, None, None].to(conv.weight))
        conv.bias.copy_(theta[-1].to(conv.bias))


def skip_map_of(model: nn.Module) -> nn.Conv2d:
    conv = getattr(model, "skip_map", None)
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"{type(model).__name__} has no skip map: build it with skip=True, skip_map=True")
    return conv


@torch.no_grad()
def normal_equations(model: WRCUpsampler, batches: Iterable[tuple[Tensor, Tensor, Tensor, Tensor, Tensor]], *,
                     patch: int, down_weight: float = 1.0) -> NormalEquations:
    """Accumulate the normal equations over ``batches`` of (features (B,C,h,w), normalised guidance (B,3,H,W),
    down-term targets (B,C,2h,2w), crop features (B·K,C,h,w), crop offsets (B,K,2) in pixels), with the model as
    it is (eval mode: BatchNorm's running statistics, as at inference; the mode is restored)."""
    was_training = model.training
    model.eval()
    normal = NormalEquations.zeros(model.channels)
    theta = theta_of(model)
    try:
        for feats, image, down, crop_feats, offsets in batches:
            u = bilinear(feats.double(), tuple(down.shape[-2:]), align_corners=False)
            # n + u: the output without the map's contribution zᵀθ (float64 from here on)
            rest = model(feats, image).double() - (design(u) @ theta.to(u.device)).view(
                u.shape[0], *u.shape[2:], -1).permute(0, 3, 1, 2)
            windows_rest, windows_u = crop_windows(rest, offsets, patch), crop_windows(u, offsets, patch)
            normal.add(u, down.double() - rest, down_weight / (down.shape[-2] * down.shape[-1]))
            normal.add(windows_u, crop_feats.double() - windows_rest,
                       1.0 / (offsets.shape[1] * crop_feats.shape[-2] * crop_feats.shape[-1]))  # local term: weight 1
            normal.samples += feats.shape[0]
            normal.pixels["down"] += down.shape[0] * down.shape[-2] * down.shape[-1]
            normal.pixels["local"] += crop_feats.shape[0] * crop_feats.shape[-2] * crop_feats.shape[-1]
    finally:
        model.train(was_training)
    return normal


def summary(normal: NormalEquations, ridge: float, down_weight: float, fitted: tuple[Tensor, Tensor] | None = None) -> dict:
    """What a provenance records of a fit: samples, pixels, ridge, down weight and, for ``fitted`` = (θ before, θ
    after), the objective per sample at each."""
    record = {"samples": normal.samples, "pixels": dict(normal.pixels), "ridge": ridge, "down_weight": down_weight}
    if fitted is None:
        return record
    before, after = fitted
    return {**record, "objective_before": normal.objective(before) / normal.samples,
            "objective_after": normal.objective(after) / normal.samples}


def fit(model: WRCUpsampler, batches: Iterable[tuple[Tensor, ...]], *, patch: int, ridge: float,
        down_weight: float = 1.0) -> dict:
    """Set ``model``'s skip map to θ* over ``batches`` (see :func:`normal_equations`), in place; its
    :func:`summary`. With no batch the map is left as it was (and the summary has no objective)."""
    normal = normal_equations(model, batches, patch=patch, down_weight=down_weight)
    if not normal.samples:
        return summary(normal, ridge, down_weight)
    before, theta = theta_of(model), solve(normal, ridge)
    set_theta(model, theta)
    return summary(normal, ridge, down_weight, (before, theta))


def with_skip_map(model: WRCUpsampler) -> WRCUpsampler:
    """``model`` itself when it has a skip map, else a copy with a zero one added (the same outputs), its weights,
    dtype, device, mode, provenance and backbone record kept."""
    if hasattr(model, "skip_map"):
        return model
    if not model.skip:
        raise ValueError(f"upsampler {model.name!r} has no bilinear skip for a skip map to act on")
    options = {**model.options, "skip_map": True}
    copy = create_upsampler(model.name, model.channels, model.patch_size, **options)
    missing, unexpected = copy.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("skip_map.") for k in missing), (missing, unexpected)
    copy.backbone_info, copy.provenance, copy.checkpoint = model.backbone_info, model.provenance, model.checkpoint
    like = next(model.parameters())
    return copy.to(device=like.device, dtype=like.dtype).train(model.training)
