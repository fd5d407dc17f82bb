"""Upsampler modules (WRC and baselines), their registry, and checkpoint load/save.

>>> from wrcli.models import load_upsampler, list_upsamplers
>>> up = load_upsampler("bilinear")
>>> dense = up.upsample(feats, scale=4)

Layers, each importing only those below it: ``registry`` (names → modules, ``create_upsampler``) →
``checkpoint`` (files) → ``factory`` (``load_upsampler``). The two upper ones load on first use, so that the
registry can be imported alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wrcli.lazy import lazy_getattr

from .base import Upsampler
from .registry import create_upsampler, list_upsamplers, register
from .wrc import WRCLayer, WRCUpsampler

if TYPE_CHECKING:
    from .checkpoint import load_checkpoint, read_checkpoint_config, save_upsampler
    from .factory import default_upsampler, load_upsampler

__all__ = [
    "Upsampler",
    "WRCUpsampler",
    "WRCLayer",
    "create_upsampler",
    "default_upsampler",
    "load_upsampler",
    "save_upsampler",
    "list_upsamplers",
    "register",
    "load_checkpoint",
    "read_checkpoint_config",
]

_UPPER_LAYERS = {
    "load_checkpoint": f"{__name__}.checkpoint",
    "read_checkpoint_config": f"{__name__}.checkpoint",
    "save_upsampler": f"{__name__}.checkpoint",
    "default_upsampler": f"{__name__}.factory",
    "load_upsampler": f"{__name__}.factory",
}
__getattr__ = lazy_getattr(__name__, _UPPER_LAYERS)
