"""Upsampler modules (WRC and baselines), their registry, and checkpoint load/save.

>>> from wrcli.models import load_upsampler, list_upsamplers
>>> up = load_upsampler("bilinear")
>>> dense = up.upsample(feats, scale=4)
"""

from .base import Upsampler
from .checkpoint import load_checkpoint, read_checkpoint_config, save_upsampler
from .registry import create_upsampler, default_upsampler, list_upsamplers, load_upsampler, register
from .wrc import WRCLayer, WRCUpsampler

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
