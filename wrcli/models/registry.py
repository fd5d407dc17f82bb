"""Upsampler registry: names → factories, and ``load_upsampler`` (a registry name or a checkpoint path)."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from wrcli.checkpoints import shipped_checkpoint
from wrcli.defaults import DEFAULT_UPSAMPLER
from wrcli.errors import WrcError

from .base import Upsampler, feature_channels
from .baselines import Converse2dUpsampler, Interpolation, TransposedUpsampler
from .wrc import WRCUpsampler

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt")

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
    try:
        return _REGISTRY[name]
    except KeyError:
        raise WrcError(f"unknown upsampler {name!r}; known: {', '.join(_REGISTRY)}") from None


def list_upsamplers() -> dict[str, str]:
    """Registered names → one-line descriptions, in registration order."""
    return {name: entry.description for name, entry in _REGISTRY.items()}


@register("wrc", "WRC upsampler (published architecture, authors' solver), ×2 per pass, image-guided", learned=True, guided=True)
def _wrc(channels, patch_size=None, **options):
    return WRCUpsampler(channels, patch_size, solver="official", **options)


@register("wrc-exact", "WRC upsampler with the exact spatially weighted solve, ×2 per pass, image-guided", learned=True, guided=True)
def _wrc_exact(channels, patch_size=None, **options):
    return WRCUpsampler(channels, patch_size, solver="exact", **options)


@register("wrc-converse", "WRC architecture with Converse2D in the WRC slot (ablation), ×2 per pass, image-guided", learned=True, guided=True)
def _wrc_converse(channels, patch_size=None, **options):
    return WRCUpsampler(channels, patch_size, solver="converse", **options)


@register("nearest", "nearest-neighbour interpolation, any size, no parameters", learned=False)
def _nearest(channels=None, patch_size=None):
    return Interpolation("nearest", channels, patch_size)


@register("bilinear", "bilinear interpolation (antialiased when shrinking), any size, no parameters", learned=False)
def _bilinear(channels=None, patch_size=None):
    return Interpolation("bilinear", channels, patch_size)


@register("bicubic", "bicubic interpolation (antialiased when shrinking), any size, no parameters", learned=False)
def _bicubic(channels=None, patch_size=None):
    return Interpolation("bicubic", channels, patch_size)


@register("transposed", "learned 2x2 transposed convolution, ×2 per pass (starts as nearest)", learned=True)
def _transposed(channels, patch_size=None):
    return TransposedUpsampler(channels, patch_size)


@register("converse2d", "learned Converse2D layer on the backbone channels, ×2 per pass", learned=True)
def _converse2d(channels, patch_size=None, **options):
    return Converse2dUpsampler(channels, patch_size, **options)


def create_upsampler(name: str, channels: int | None = None, patch_size: int | None = None, **options: Any) -> Upsampler:
    """A fresh (untrained, for learned ones) upsampler from the registry, in training mode."""
    entry = registry_entry(name)
    if entry.learned and channels is None:
        raise WrcError(f"upsampler {name!r} needs the feature channel count: pass a backbone or channels=")
    try:
        model = entry.factory(channels, patch_size, **options)
    except TypeError as e:
        raise WrcError(f"bad options for upsampler {name!r}: {e}") from None
    except ValueError as e:
        raise WrcError(f"cannot build upsampler {name!r}: {e}") from None
    model.name = name
    return model


def _looks_like_path(name_or_path: str | os.PathLike) -> bool:
    if isinstance(name_or_path, os.PathLike):
        return True
    p = Path(name_or_path)
    return p.is_file() or name_or_path.lower().endswith(CHECKPOINT_SUFFIXES)


def default_upsampler(backbone: Any = None) -> str:
    """What ``"default"`` means for ``backbone``: "wrc" when a checkpoint ships for its architecture,
    else "bilinear"."""
    return "wrc" if shipped_checkpoint("wrc", getattr(backbone, "arch", None)) is not None else "bilinear"


def load_upsampler(
    name_or_path: str | os.PathLike = DEFAULT_UPSAMPLER,
    backbone: Any = None,
    *,
    channels: int | None = None,
    patch_size: int | None = None,
    strict: bool = True,
) -> Upsampler:
    """An upsampler ready for inference (eval mode), from a registry name or a checkpoint file.

    A path that exists (or ends in .safetensors / .pth / .pt) is loaded as a checkpoint and validated
    against ``backbone`` (a :class:`wrcli.backbones.Backbone`) and the explicit ``channels`` /
    ``patch_size``: channel count and patch size must match, and so must the backbone architecture
    unless ``strict=False``. The authors' official .pth files are read too (weights only, never
    unpickled). Otherwise ``name_or_path`` is a registry name: the checkpoint shipped with wrcli for
    that name and backbone architecture when there is one (see :mod:`wrcli.checkpoints`), else a fresh
    model whose channels and patch size come from ``backbone`` or the keywords — untrained for a
    learned one (a warning says so). ``"default"`` (the default) is :func:`default_upsampler`.
    ``model.checkpoint`` is the file the weights came from, or None.
    """
    from .checkpoint import load_checkpoint

    if name_or_path == DEFAULT_UPSAMPLER:  # the name, never a file called "default"
        name_or_path = default_upsampler(backbone)
    if _looks_like_path(name_or_path):
        model = load_checkpoint(name_or_path, backbone, channels=channels, patch_size=patch_size, strict=strict)
        model.checkpoint = Path(name_or_path)
        return model.eval()

    name = str(name_or_path)
    if name not in _REGISTRY:
        hint = " (no such file)" if os.sep in name or "/" in name else ""
        raise WrcError(f"unknown upsampler {name!r}{hint}; known: {', '.join(_REGISTRY)}, or a checkpoint path")
    shipped = shipped_checkpoint(name, getattr(backbone, "arch", None))
    if shipped is not None and channels in (None, feature_channels(backbone)):
        model = load_checkpoint(shipped, backbone, channels=channels, patch_size=patch_size, strict=strict)
        model.checkpoint = shipped
        return model.eval()
    if backbone is not None:
        bb_channels, bb_patch = feature_channels(backbone), getattr(backbone, "patch_size", None)
        if channels is not None and bb_channels is not None and channels != bb_channels:
            raise WrcError(f"channels={channels} disagrees with backbone {backbone.name!r} ({bb_channels} channels)")
        if patch_size is not None and bb_patch is not None and patch_size != bb_patch:
            raise WrcError(f"patch_size={patch_size} disagrees with backbone {backbone.name!r} (patch {bb_patch})")
        channels = channels if channels is not None else bb_channels
        patch_size = patch_size if patch_size is not None else bb_patch
    model = create_upsampler(name, channels, patch_size)
    if backbone is not None:
        model.backbone_info = {"name": getattr(backbone, "name", None), "arch": getattr(backbone, "arch", None)}
    if model.learned:
        warnings.warn(
            f"upsampler {name!r} has no checkpoint and is untrained: its output is not meaningful; "
            f"pass a trained checkpoint path (or train one with `wrc train`)",
            UserWarning,
            stacklevel=2,
        )
    return model.eval()
