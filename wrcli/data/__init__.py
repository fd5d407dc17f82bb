"""Image discovery (folder, glob, list file, stdin), file names as text, decoding and the resize policy.

Names are imported lazily: ``discover`` needs no torch, ``ImageDataset`` does.
"""

from __future__ import annotations

from wrcli.lazy import lazy_getattr

__all__ = [
    "IMAGE_EXTENSIONS", "Source", "discover", "is_image_name",
    "ResizePolicy", "ImageError", "load_image", "ImageDataset", "name_text", "name_bytes", "printable",
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
    "name_text": "wrcli.data.names",
    "name_bytes": "wrcli.data.names",
    "printable": "wrcli.data.names",
}


__getattr__ = lazy_getattr(__name__, _LAZY)
