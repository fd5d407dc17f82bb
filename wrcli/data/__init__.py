"""Image discovery (folder, glob, list file, stdin), decoding and the resize policy.

Names are imported lazily: ``discover`` needs no torch, ``ImageDataset`` does.
"""

from __future__ import annotations

__all__ = [
    "IMAGE_EXTENSIONS", "Source", "discover", "is_image_name",
    "ResizePolicy", "ImageError", "load_image", "ImageDataset",
]

_LAZY = {
    "IMAGE_EXTENSIONS": "wrcli.data.sources",
    "Source": "wrcli.data.sources",
    "discover": "wrcli.data.sources",
    "is_image_name": "wrcli.data.sources",
    "ResizePolicy": "wrcli.data.images",
    "ImageError": "wrcli.data.images",
    "load_image": "wrcli.data.images",
    "ImageDataset": "wrcli.data.images",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'wrcli.data' has no attribute {name!r}")
