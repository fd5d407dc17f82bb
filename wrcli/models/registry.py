"""Upsampler registry: names → factories, and ``create_upsampler`` (a fresh model by name).

The bottom layer of the upsampler API: it knows the modules, never files. Checkpoints
(:mod:`wrcli.models.checkpoint`) build on it, and ``load_upsampler`` (:mod:`wrcli.models.factory`) on both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wrcli.errors import WrcError, first_line

from .base import Upsampler
from .baselines import Converse2dUpsampler, Interpolation, TransposedUpsampler
from .wrc import WRCUpsampler

Factory = Callable[..., Upsampler]


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    factory: Factory  # factory(channels, patch_size, **options) -> Upsampler
    description: str
    learned: bool
    guided: bool


_REGISTRY: dict[str, RegistryEntry] = {}


def register(name: str, description: str, *, learned: bool, guided: bool = False) -> Callable[[Factory], Factory]:
    """Decorator: register ``factory(channels, patch_size, **options) -> Upsampler`` under ``name``."""

    def deco(factory: Factory) -> Factory:
        if name in _REGISTRY:
            raise ValueError(f"upsampler {name!r} is already registered")
        _REGISTRY[name] = RegistryEntry(name, factory, description, learned, guided)
        return factory

    return deco


def registry_entry(name: str) -> RegistryEntry:
    """The entry registered under ``name``; WrcError listing the known names for another."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise WrcError(f"unknown upsampler {name!r}; known: {', '.join(_REGISTRY)}") from None


def list_upsamplers() -> dict[str, str]:
    """Registered names → one-line descriptions, in registration order."""
    return {name: entry.description for name, entry in _REGISTRY.items()}


@register("wrc", "WRC upsampler (published architecture, authors' solver), ×2 per pass, image-guided", learned=True, guided=True)
def _wrc(channels: int, patch_size: int | None = None, **options: Any) -> Upsampler:
    return WRCUpsampler(channels, patch_size, solver="official", **options)


@register("wrc-exact", "WRC upsampler with the exact spatially weighted solve, ×2 per pass, image-guided", learned=True, guided=True)
def _wrc_exact(channels: int, patch_size: int | None = None, **options: Any) -> Upsampler:
    return WRCUpsampler(channels, patch_size, solver="exact", **options)


@register("wrc-converse", "WRC architecture with Converse2D in the WRC slot (ablation), ×2 per pass, image-guided", learned=True, guided=True)
def _wrc_converse(channels: int, patch_size: int | None = None, **options: Any) -> Upsampler:
    return WRCUpsampler(channels, patch_size, solver="converse", **options)


@register("nearest", "nearest-neighbour interpolation, any size, no parameters", learned=False)
def _nearest(channels: int | None = None, patch_size: int | None = None) -> Upsampler:
    return Interpolation("nearest", channels, patch_size)


@register("bilinear", "bilinear interpolation (antialiased when shrinking), any size, no parameters", learned=False)
def _bilinear(channels: int | None = None, patch_size: int | None = None) -> Upsampler:
    return Interpolation("bilinear", channels, patch_size)


@register("bicubic", "bicubic interpolation (antialiased when shrinking), any size, no parameters", learned=False)
def _bicubic(channels: int | None = None, patch_size: int | None = None) -> Upsampler:
    return Interpolation("bicubic", channels, patch_size)


@register("transposed", "learned 2x2 transposed convolution, ×2 per pass (starts as nearest)", learned=True)
def _transposed(channels: int, patch_size: int | None = None) -> Upsampler:
    return TransposedUpsampler(channels, patch_size)


@register("converse2d", "learned Converse2D layer on the backbone channels, ×2 per pass", learned=True)
def _converse2d(channels: int, patch_size: int | None = None, **options: Any) -> Upsampler:
    return Converse2dUpsampler(channels, patch_size, **options)


def create_upsampler(name: str, channels: int | None = None, patch_size: int | None = None, **options: Any) -> Upsampler:
    """A fresh (untrained, for learned ones) upsampler from the registry, in training mode."""
    entry = registry_entry(name)
    if entry.learned and channels is None:
        raise WrcError(f"upsampler {name!r} needs the feature channel count: pass a backbone or channels=")
    try:
        model = entry.factory(channels, patch_size, **options)
    except TypeError as e:
        raise WrcError(f"bad options for upsampler {name!r}: {first_line(e)}") from None
    except ValueError as e:
        raise WrcError(f"cannot build upsampler {name!r}: {first_line(e)}") from None
    model.name = name
    return model
