"""Decoding and the resize policy: any image file → (H, W, 3) uint8 RGB at patch-multiple sides, or a reason.

``load_image`` in order:

1. ``stat``: a missing file, broken symlink, folder, special file or zero-byte file fails without being opened.
2. Pillow opens the header lazily. Above ``MAX_IMAGE_PIXELS`` (or Pillow's own ``Image.MAX_IMAGE_PIXELS``, whose
   warning counts as an error here) the image fails as a decompression bomb; below the policy's minimum side it
   fails as too small. Truncated files fail (``ImageFile.LOAD_TRUNCATED_IMAGES`` is left off).
3. JPEGs decode at a reduced DCT scale (``draft``) that still leaves ``DRAFT_GAP`` × the pixels the resize needs.
4. The EXIF orientation is applied; ``orig_hw`` is the upright size of the full-resolution image.
5. To RGB: anything with alpha or a transparent colour (RGBA, LA, PA, P/L/RGB with ``transparency``) is
   composited over white (``ALPHA_BACKGROUND``); CMYK, including Adobe's inverted CMYK JPEGs, through Pillow;
   16-bit greyscale scaled by 255/65535 (not clipped); 32-bit integer images whose values fit in 0..65535 as
   16-bit, floats in 0..1 times 255, other integer and float images stretched from their min..max to 0..255.
   Animated GIF/WebP/APNG: the first frame. Pillow's UserWarnings about metadata (e.g. corrupt EXIF) are muted.
6. Antialiased bicubic resize (``reducing_gap``) to ``policy.input_hw``; with ``crop`` the centre square of the
   image is resized (``resize(box=...)``), which equals resizing and then centre-cropping.

``load_image_bytes`` decodes an image held in memory (a tar member, a table's bytes cell) from step 2 on; an empty
one fails as a zero-byte file. :class:`ImageDataset` decodes files in DataLoader workers, :class:`EncodedDataset`
the bytes that :class:`Prefetched` reads ahead in the main process.
"""

from __future__ import annotations

import io
import math
import os
import queue
import re
import stat
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from wrcli.data.names import printable
from wrcli.data.sources import Encoded
from wrcli.errors import WrcError

MAX_IMAGE_PIXELS: int | None = Image.MAX_IMAGE_PIXELS  # decompression-bomb limit of load_image (tests lower it)
ALPHA_BACKGROUND: tuple[int, int, int] = (255, 255, 255)  # transparent pixels become white
RESAMPLE = Image.Resampling.BICUBIC
REDUCING_GAP = 3.0  # ≥ 3 is indistinguishable from a plain antialiased resize, and faster for big reductions
DRAFT_GAP = 2.0  # JPEG draft keeps at least this × the resized size (as Image.thumbnail does)
_ORIENTATION = 0x0112
_SWAPS_SIDES = frozenset({5, 6, 7, 8})  # EXIF orientations that transpose the image
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


@dataclass(frozen=True)
class ResizePolicy:
    """How an image of any size becomes the backbone's input: both sides multiples of ``patch``.

    The short side goes to ``size`` (rounded to a patch multiple) unless that would push the long side past
    ``max_side`` (default ``2 * size``), in which case the long side goes to ``max_side`` (rounded down to a patch
    multiple) and the short side follows the aspect ratio. Each side is then rounded to the nearest patch
    multiple, at least one patch. With ``crop`` the input is the centre square of side ``size``.
    Images whose original short side is below ``min_side`` (default ``patch``) are refused.
    """

    size: int = 448
    patch: int = 14
    crop: bool = False
    max_side: int | None = None
    min_side: int | None = None

    def __post_init__(self) -> None:
        if self.size < 1 or self.patch < 1:
            raise WrcError(f"resize size and patch must be positive (got size={self.size}, patch={self.patch})")
        if self.max_side is not None and self.max_side < self.patch:
            raise WrcError(f"max side {self.max_side} is smaller than one patch ({self.patch} px); raise it")
        if self.min_side is not None and self.min_side < 1:
            raise WrcError(f"min side must be at least 1 px (got {self.min_side})")

    @property
    def short_side(self) -> int:
        """Target short side: ``size`` rounded to a patch multiple, at least one patch."""
        return max(self.patch, round(self.size / self.patch) * self.patch)

    @property
    def long_cap(self) -> int:
        """Longest side any input gets: ``max_side`` (default ``2 * size``) rounded down to a patch multiple."""
        limit = 2 * self.size if self.max_side is None else self.max_side
        return max(self.patch, limit // self.patch * self.patch)

    @property
    def smallest_side(self) -> int:
        """Smallest original short side accepted."""
        return self.patch if self.min_side is None else self.min_side

    def input_hw(self, orig_hw: tuple[int, int]) -> tuple[int, int]:
        """The (H, W) fed to the backbone for an upright image of ``orig_hw`` pixels."""
        h, w = orig_hw
        if h < 1 or w < 1:
            raise ValueError(f"image sides must be positive, got {orig_hw}")
        p = self.patch
        if self.crop:
            side = min(self.short_side, self.long_cap)
            return side, side
        k = min(self.short_side / min(h, w), self.long_cap / max(h, w))
        return max(p, round(h * k / p) * p), max(p, round(w * k / p) * p)

    def max_input_hw(self) -> tuple[int, int]:
        """The largest (H, W) ``input_hw`` can return, per side (for sizing stores)."""
        side = min(self.short_side, self.long_cap) if self.crop else self.long_cap
        return side, side

    def to_dict(self) -> dict[str, Any]:
        """The policy with defaults resolved, plus the decoding choices that affect the pixels (for metadata)."""
        return {
            "size": self.size,
            "patch": self.patch,
            "crop": self.crop,
            "max_side": 2 * self.size if self.max_side is None else self.max_side,
            "min_side": self.smallest_side,
            "resample": RESAMPLE.name.lower(),
            "reducing_gap": REDUCING_GAP,
            "jpeg_draft_gap": DRAFT_GAP,
            "alpha_background": list(ALPHA_BACKGROUND),
            "exif_orientation": True,
        }


class ImageError(Exception):
    """An image that cannot be used. ``reason`` is the one line the store records; ``orig_hw`` is set when known."""

    def __init__(self, reason: str, orig_hw: tuple[int, int] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.orig_hw = orig_hw


def load_image(fs_path: str, policy: ResizePolicy) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode ``fs_path`` → ((H, W, 3) uint8 RGB at ``policy.input_hw(orig_hw)``, ``orig_hw`` after EXIF rotation).

    Raises ImageError (and nothing else) for a file that cannot be used.
    """
    _check_file(fs_path)
    return _load(fs_path, policy)


def load_image_bytes(data: bytes, policy: ResizePolicy) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`load_image` for an encoded image in memory (a tar member, a table's bytes cell)."""
    if not data:
        raise ImageError("zero-byte file")
    return _load(io.BytesIO(data), policy)


def _load(fp: str | io.BytesIO, policy: ResizePolicy) -> tuple[np.ndarray, tuple[int, int]]:
    fmt = "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module="PIL")  # e.g. "Corrupt EXIF data"
            with Image.open(fp) as img:
                fmt = img.format or fmt
                return _decode(img, policy)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        pixels = re.search(r"\d+", str(exc))
        raise ImageError(f"decompression bomb ({pixels[0] if pixels else '?'} pixels > {Image.MAX_IMAGE_PIXELS})") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageError("not an image (unknown format or damaged header)") from exc
    except MemoryError as exc:
        raise ImageError("out of memory while decoding") from exc
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise many types for damaged files
        raise ImageError(_failure_reason(fmt, exc)) from exc


def _check_file(fs_path: str) -> None:
    if not fs_path:
        raise ImageError("no path given")
    try:
        st = os.stat(fs_path)
    except FileNotFoundError as exc:
        raise ImageError("broken symlink" if os.path.islink(fs_path) else "file not found") from exc
    except OSError as exc:
        raise ImageError(f"unreadable: {exc.strerror}") from exc
    if stat.S_ISDIR(st.st_mode):
        raise ImageError("a folder, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ImageError("not a regular file")
    if st.st_size == 0:
        raise ImageError("zero-byte file")


def _decode(img: Image.Image, policy: ResizePolicy) -> tuple[np.ndarray, tuple[int, int]]:
    w, h = img.size
    if MAX_IMAGE_PIXELS is not None and w * h > MAX_IMAGE_PIXELS:
        raise ImageError(f"decompression bomb ({w * h} pixels > {MAX_IMAGE_PIXELS})")
    orig_hw = (w, h) if img.getexif().get(_ORIENTATION) in _SWAPS_SIDES else (h, w)
    if min(orig_hw) < policy.smallest_side:
        what = "one patch" if policy.smallest_side == policy.patch else "the minimum side"
        raise ImageError(f"smaller than {what} ({orig_hw[1]}x{orig_hw[0]} < {policy.smallest_side})", orig_hw)
    th, tw = policy.input_hw(orig_hw)
    k = max(th / orig_hw[0], tw / orig_hw[1]) * DRAFT_GAP  # scale of the full image before any crop, with margin
    img.draft("RGB", (math.ceil(w * k), math.ceil(h * k)))  # a no-op except for JPEG
    ImageOps.exif_transpose(img, in_place=True)
    rgb = _to_rgb(img)
    box = None
    if policy.crop:
        s = min(rgb.size)
        box = ((rgb.width - s) / 2, (rgb.height - s) / 2, (rgb.width + s) / 2, (rgb.height + s) / 2)
    out = rgb.resize((tw, th), RESAMPLE, box=box, reducing_gap=REDUCING_GAP)
    return np.array(out), orig_hw


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, ALPHA_BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img), img.mode)).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Greyscale of any depth → uint8: 16-bit by its full scale, floats in 0..1 ×255, otherwise min..max."""
    a = np.nan_to_num(a.astype(np.float64))
    lo, hi = float(a.min()), float(a.max())
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        lo, hi = 0.0, 65535.0
    elif mode == "F" and lo >= 0 and hi <= 1:
        lo, hi = 0.0, 1.0
    return np.rint((a - lo) * (255 / (hi - lo) if hi > lo else 0.0)).astype(np.uint8)


def _failure_reason(fmt: str, exc: Exception) -> str:
    msg = str(exc).split("\n", 1)[0].strip()
    if "truncated" in msg.lower():
        return "truncated file"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"unreadable: {exc.strerror}"
    if not msg or msg.startswith("broken data stream"):
        return f"corrupt {fmt} data"
    return f"corrupt {fmt} data ({msg[:100]})"


def file_stat(fs_path: str) -> tuple[int, int]:
    """``(size in bytes, st_mtime_ns)`` of the file at ``fs_path`` (symlinks followed); (-1, -1) if it cannot be
    stat'ed. What a store records of each image, and a rerun compares (one ``stat``, no read)."""
    try:
        st = os.stat(fs_path)
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return -1, -1
    return st.st_size, st.st_mtime_ns


class ImageDataset(torch.utils.data.Dataset):
    """Decodes ``items`` of ``(global index, fs_path)`` in DataLoader workers; never raises for a bad image.

    Each item is ``{"index", "pixels": uint8 (3, H, W) or None, "orig_hw": (h, w) or None, "error": str or None,
    "file_stat": (size, mtime_ns)}``, the file stat'ed before it is read (so that a change while it is read shows).
    """

    def __init__(self, items: Sequence[tuple[int, str]], policy: ResizePolicy):
        self.items = items
        self.policy = policy

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index, fs_path = self.items[i]
        stat = file_stat(fs_path)
        try:
            array, orig_hw = load_image(fs_path, self.policy)
        except ImageError as exc:
            return _failed(index, exc, stat)
        return _item(index, array, orig_hw, stat)


def _item(index: int, array: np.ndarray, orig_hw: tuple[int, int], stat: tuple[int, int]) -> dict[str, Any]:
    pixels = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    return {"index": index, "pixels": pixels, "orig_hw": orig_hw, "error": None, "file_stat": stat}


def _failed(index: int, exc: ImageError, stat: tuple[int, int]) -> dict[str, Any]:
    return {"index": index, "pixels": None, "orig_hw": exc.orig_hw, "error": printable(exc.reason), "file_stat": stat}


class EncodedDataset(torch.utils.data.Dataset):
    """Decodes images handed over in memory, as :class:`ImageDataset` decodes files: the "index" of each item is an
    :class:`Encoded` (the sampler, :class:`Prefetched`, reads the bytes in the main process), the item the same dict."""

    def __init__(self, policy: ResizePolicy):
        self.policy = policy

    def __getitem__(self, encoded: Encoded) -> dict[str, Any]:
        if encoded.error:
            return _failed(encoded.index, ImageError(encoded.error), encoded.stat)
        try:
            array, orig_hw = load_image_bytes(encoded.data, self.policy)
        except ImageError as exc:
            return _failed(encoded.index, exc, encoded.stat)
        return _item(encoded.index, array, orig_hw, encoded.stat)


class Prefetched(torch.utils.data.Sampler):
    """The :class:`Encoded` images ``read(indices)`` yields, in order, read ahead by a background thread into a bounded
    queue (so that a slow stream overlaps the compute). The thread starts on the first item (after the DataLoader
    has forked its workers) and stops when the iteration ends or is abandoned."""

    def __init__(self, read: Callable[[Sequence[int]], Iterator[Encoded]], indices: Sequence[int], ahead: int = 64):
        self.read, self.indices, self.ahead = read, indices, ahead

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[Encoded]:
        items: queue.Queue = queue.Queue(maxsize=self.ahead)
        stop = threading.Event()

        def produce() -> None:
            reading = self.read(self.indices)
            try:
                for encoded in reading:
                    while not stop.is_set():
                        try:
                            items.put(encoded, timeout=0.2)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                items.put(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                items.put(exc)
            finally:
                reading.close()  # ends a stream left early (a pipe's command is stopped)

        thread = threading.Thread(target=produce, daemon=True, name="wrc-reader")
        thread.start()
        try:
            while (item := items.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join(timeout=1)
