"""``wrc eval vos``: semi-supervised video object segmentation by label propagation (the DINO protocol as WRC
and LiFT run it), scored with the DAVIS region J and boundary F (:mod:`wrcli.eval.davis_metrics`).

Per sequence of frames 0 … n−1 with the object ids of frame 0 given:

1. **input**: every frame resized (bicubic) to ``imsize``² (``protocol="square"``, WRC's ``eval_davis.py``) or to
   its own size with each side rounded to the nearest multiple of the patch size (``protocol="native"``: the
   480p aspect kept, 854×480 → 854×476, as NAF / RaysUp keep it);
2. **features**: the backbone's tokens of each frame, computed once (cached on disk, shared by all upsamplers);
   each upsampler maps them to ``scale`` × the token grid (h, w) and each cell is L2-normalised, f̂ = f/‖f‖₂;
3. **labels of frame 0**: its id map, nearest-resized to (h, w) (PIL), one-hot over ids 0 … K (0 = background);
4. **propagation** (:func:`propagate`): for t = 1 … n−1 the context is frame 0 with its one-hot labels and
   frames t−c … t−1 (c = ``context``, default 7) with their *predicted soft* labels. For a query cell q of
   frame t, the candidates are the context cells k within the Chebyshev window |Δy|, |Δx| ≤ ``radius`` (cells
   of the upsampled grid), taken jointly over all context frames; s_k = ⟨f̂_t(q), f̂(k)⟩; the ``topk`` largest
   (ties with the k-th kept) get w_k = exp(s_k/τ) / Σ exp(s_j/τ), τ = ``temperature``; the soft label is
   ℓ_t(q) = Σ_k w_k ℓ(k);
5. **output** (:func:`frame_labels`): ℓ_t bilinearly resized to the frame's input size, each channel min–max
   normalised (DINO's ``norm_mask``), argmax, nearest-resized (PIL) to the original size.

Memory: the affinity is computed in blocks of 8 × 8 query cells (:func:`block_size`), each against the
context cells within ``radius`` of the block only ((8 + 2·radius)² cells per context frame): one block of
similarities holds 4 · 64 · (c+1) · 32² bytes (2.1 MB with c = 7, radius 12) whatever the grid, at most
``budget`` (64 MiB; smaller blocks otherwise), and propagation needs a few such blocks plus the context (c+1
feature maps of C × h × w float32: 154 MB at 784 ×2), never the dense (hw) × (c+1)·hw affinity (5 GB at
784 ×2). Without a window (``radius`` 0) the blocks are whole rows of at most ``budget`` bytes.

Layouts (annotations are PNGs of object ids, 0 = background, 255 = void; a mode-L annotation whose first frame
holds only 0 and 255 is a DAVIS-2016 binary mask, 255 = the one object)::

    DAVIS/                                     (ROOT is this folder or holds it)
        JPEGImages/480p/<seq>/00000.jpg …
        Annotations/480p/<seq>/00000.png …
        ImageSets/2017/val.txt                 (the sequences, one per line; without it: every folder)

    <seq>/frames/<frame>.<image>  <seq>/masks/<frame>.png      (generic; ROOT holds the sequence folders)

A sequence with no first-frame mask, a single frame, fewer masks than frames, or a frame without its mask is
left out with a one-line reason in the report (``errors``), and the run goes on. Void (255) counts as
background in the first-frame labels and in the scoring, as the DAVIS benchmark reads the annotations.

Report: ``results`` label → {"J&F", "J", "F", "J-Recall", "J-Decay", "F-Recall", "F-Decay" (percent, means over
all objects), "seconds" (propagation and scoring)}; ``sequences`` label → sequence → {"J", "F", "J&F",
"objects", "frames" (scored), "per_object"}; ``errors`` sequence → reason. ``masks_out``: the predicted ids as
DAVIS palette PNGs ``<masks_out>/<label>/<seq>/<frame>.png`` at the original size (frame 0: the given mask),
each ``<masks_out>/<label>`` a results folder for the official evaluator. The tokens are cached per sequence in
``cache`` (``vos-<seq>-<key>/``, key: the frame files, the input size, the backbone), or in a temporary folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from wrcli.data.sources import is_image_name
from wrcli.defaults import DEFAULT_BACKBONE, DEFAULT_UPSAMPLER
from wrcli.errors import WrcError, first_line
from wrcli.precision import autocast

from . import davis_metrics as dm
from .datasets import file_key, read_rgb
from .dense import normalise_and_resize
from .features import BACKBONE_BATCH, cached_count, open_arrays, write_meta
from .probes import upsampled
from .task import Bars, Measurement, RunOptions, run_task

if TYPE_CHECKING:
    from wrcli.backbones import Backbone
    from wrcli.models import Upsampler
    from wrcli.session import Session

log = logging.getLogger(__name__)

PROTOCOLS = ("square", "native")
CACHE_FORMAT = 1
AFFINITY_BUDGET = 64 << 20  # bytes of one block of similarities
TILE = 8  # query cells per side of a block
METRICS = ("J&F", "J", "F")


# -- maths -------------------------------------------------------------------------------------------------

def one_hot(ids: Tensor, classes: int) -> Tensor:
    """(h, w) integer ids in 0 … classes−1 → (classes, h, w) float one-hot."""
    return F.one_hot(ids.long(), classes).permute(2, 0, 1).float()


def block_size(h: int, w: int, frames: int, radius: int, budget: int = AFFINITY_BUDGET, tile: int = TILE
               ) -> tuple[int, int]:
    """(rows, cols) of the query blocks. With a window, ``tile``² cells (fewer when 4 · tile² · frames ·
    (tile + 2·radius)² bytes of similarities exceed ``budget``), each against the context cells within ``radius``
    of the block only, so the block's size does not depend on the grid; without (``radius`` 0), whole rows: the
    most n with 4 · n·w · frames·h·w ≤ ``budget``. At least one cell."""
    if radius <= 0:
        rows = max(1, min(h, budget // (4 * w * frames * h * w)))
        return rows, w
    side = max(1, tile)
    while side > 1 and 4 * side * side * frames * (side + 2 * radius) ** 2 > budget:
        side -= 1
    return min(side, h), min(side, w)


def propagate(query: Tensor, keys: Tensor, labels: Tensor, *, topk: int = 5, temperature: float = 0.1,
              radius: int = 12, budget: int = AFFINITY_BUDGET) -> Tensor:
    """One step of label propagation (step 4 of the module docstring).

    query (C, h, w) and keys (T, C, h, w): unit feature maps of the target and the T context frames; labels
    (T, K, h, w) their soft labels → (K, h, w). ``radius`` 0: no window. Computed in the query blocks of
    :func:`block_size`, each against the context cells that can fall in its window.
    """
    n_ctx, _, h, w = keys.shape
    k_labels = labels.shape[1]
    rows, cols = block_size(h, w, n_ctx, radius, budget)
    out = torch.empty(k_labels, h, w, dtype=labels.dtype, device=labels.device)
    reach = h + w if radius <= 0 else radius
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        k0, k1 = max(0, r0 - reach), min(h, r1 + reach)
        for c0 in range(0, w, cols):
            c1 = min(w, c0 + cols)
            l0, l1 = max(0, c0 - reach), min(w, c1 + reach)
            q = query[:, r0:r1, c0:c1].flatten(1)  # (C, nq)
            ctx = keys[:, :, k0:k1, l0:l1].permute(1, 0, 2, 3).flatten(1)  # (C, T·kh·kw), frame-major
            sim = q.T @ ctx  # (nq, T·kh·kw)
            if radius > 0:
                dy = (torch.arange(r0, r1, device=q.device)[:, None] - torch.arange(k0, k1, device=q.device)[None])
                dx = (torch.arange(c0, c1, device=q.device)[:, None] - torch.arange(l0, l1, device=q.device)[None])
                inside = ((dy.abs() <= radius)[:, None, :, None] & (dx.abs() <= radius)[None, :, None, :])
                sim.masked_fill_(~inside.reshape(len(q.T), -1).repeat(1, n_ctx), float("-inf"))
            kth = sim.topk(min(topk, sim.shape[1]), dim=1).values[:, -1:]
            weights = torch.exp((sim - sim.amax(dim=1, keepdim=True)) / temperature)
            weights = torch.where(sim >= kth, weights, torch.zeros((), dtype=weights.dtype, device=weights.device))
            weights /= weights.sum(dim=1, keepdim=True)
            ctx_labels = labels[:, :, k0:k1, l0:l1].permute(0, 2, 3, 1).reshape(-1, k_labels)  # (T·kh·kw, K)
            out[:, r0:r1, c0:c1] = (weights @ ctx_labels).T.reshape(k_labels, r1 - r0, c1 - c0)
    return out


def propagate_sequence(maps: Iterable[Tensor], first_labels: Tensor, *, context: int = 7, topk: int = 5,
                       temperature: float = 0.1, radius: int = 12, budget: int = AFFINITY_BUDGET) -> Iterator[Tensor]:
    """Soft labels (K, h, w) of frames 1, 2, … from the unit maps (C, h, w) of frames 0, 1, … and frame 0's
    labels: the context of frame t is frame 0 and the last ``context`` frames with their predicted labels."""
    frames = iter(maps)
    first = next(frames)
    recent: deque[tuple[Tensor, Tensor]] = deque(maxlen=context)
    for target in frames:
        keys = torch.stack([first, *(f for f, _ in recent)])
        labels = torch.stack([first_labels, *(soft for _, soft in recent)])
        soft = propagate(target, keys, labels, topk=topk, temperature=temperature, radius=radius, budget=budget)
        if context > 0:
            recent.append((target, soft))
        yield soft


def norm_mask(soft: Tensor) -> Tensor:
    """(K, H, W) → each channel whose maximum is positive min–max normalised to [0, 1] (a constant one → 0); the
    others unchanged. (DINO's ``norm_mask``, which gives NaN for a constant positive channel.)"""
    low = soft.amin(dim=(1, 2), keepdim=True)
    span = soft.amax(dim=(1, 2), keepdim=True) - low
    scaled = torch.where(span > 0, (soft - low) / span.clamp_min(torch.finfo(soft.dtype).tiny), torch.zeros_like(soft))
    return torch.where(soft.amax(dim=(1, 2), keepdim=True) > 0, scaled, soft)


def frame_labels(soft: Tensor, input_hw: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """Soft labels (K, h, w) → ids (H0, W0) uint8: bilinear (align_corners=False) to ``input_hw``,
    :func:`norm_mask`, argmax, nearest (PIL) to ``out_hw``."""
    up = F.interpolate(soft[None].float(), size=input_hw, mode="bilinear", align_corners=False)[0]
    ids = norm_mask(up).argmax(dim=0).to(torch.uint8).cpu().numpy()
    if ids.shape == tuple(out_hw):
        return ids
    return np.asarray(Image.fromarray(ids).resize((out_hw[1], out_hw[0]), Image.Resampling.NEAREST))


def input_hw(orig_hw: tuple[int, int], protocol: str, imsize: int, patch: int) -> tuple[int, int]:
    """The backbone input size of a frame: (imsize, imsize) for "square"; for "native" each side rounded to the
    nearest multiple of ``patch`` (at least one patch)."""
    if protocol == "square":
        return imsize, imsize
    return tuple(max(patch, round(s / patch) * patch) for s in orig_hw)  # type: ignore[return-value]


def davis_palette() -> np.ndarray:
    """The DAVIS (PASCAL VOC) palette, (256, 3) uint8: the bits of index i spread over R, G, B from the top bit."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, rgb = i, [0, 0, 0]
        for bit in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((c >> channel) & 1) << bit
            c >>= 3
        palette[i] = rgb
    return palette


# -- data reader --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VideoSequence:
    """A sequence's frame files in order and the annotation of each frame stem that has one."""

    name: str
    frames: tuple[Path, ...]
    masks: dict[str, Path] = field(default_factory=dict)

    def problem(self) -> str | None:
        """Why this sequence cannot be evaluated (one line), or None."""
        if not self.frames:
            return "no frames"
        if self.frames[0].stem not in self.masks:
            return f"no first-frame mask ({self.frames[0].stem}.png)"
        if len(self.frames) == 1:
            return "nothing to propagate: a single frame"
        if len(self.masks) != len(self.frames):
            return f"frame count mismatch: {len(self.frames)} frames but {len(self.masks)} masks"
        missing = [f.stem for f in self.frames if f.stem not in self.masks]
        if missing:
            return f"missing annotation for frame {missing[0]} ({len(missing)} frames without one)"
        if len(self.frames) < 3:
            return "too short to score: the benchmark scores frames 1..n-2, and 2 frames leave none"
        return None

    def fingerprint(self) -> list:
        return [self.name, *(file_key(str(f)) for f in self.frames)]


def find_sequences(root: str | Path) -> tuple[str, list[VideoSequence], dict[str, str]]:
    """(layout "davis" | "generic", the sequences, sequence → why it was left out) of ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise WrcError(f"video data {root} is not a folder (expected DAVIS/ or <seq>/frames + <seq>/masks)")
    davis = next((d for d in (root, root / "DAVIS") if (d / "JPEGImages" / "480p").is_dir()), None)
    if davis is not None:
        return "davis", *_davis_sequences(davis)
    folders = sorted(p for p in root.iterdir() if (p / "frames").is_dir())
    if not folders:
        raise WrcError(f"no video sequences in {root}: expected DAVIS/JPEGImages/480p/<seq>/ or <seq>/frames/")
    sequences = [_sequence(p.name, p / "frames", p / "masks", any_image=True) for p in folders]
    return "generic", sequences, {}


def _davis_sequences(davis: Path) -> tuple[list[VideoSequence], dict[str, str]]:
    images, annotations = davis / "JPEGImages" / "480p", davis / "Annotations" / "480p"
    listing = davis / "ImageSets" / "2017" / "val.txt"
    if listing.is_file():
        names = list(dict.fromkeys(line.strip() for line in listing.read_text().splitlines() if line.strip()))
    else:
        names = sorted(p.name for p in images.iterdir() if p.is_dir())
    errors = {n: f"listed in {listing.name} but {images / n} is missing" for n in names if not (images / n).is_dir()}
    sequences = [_sequence(n, images / n, annotations / n, any_image=False) for n in names if n not in errors]
    return sequences, errors


def _sequence(name: str, frames: Path, masks: Path, any_image: bool) -> VideoSequence:
    files = sorted(p for p in frames.iterdir() if p.is_file() and (
        is_image_name(p.name) if any_image else p.suffix.lower() in (".jpg", ".jpeg")))
    annotations = {p.stem: p for p in sorted(masks.glob("*.png"))} if masks.is_dir() else {}
    return VideoSequence(name, tuple(files), annotations)


def is_binary(path: Path) -> bool:
    """Whether an annotation is a DAVIS-2016 binary mask: not a palette PNG, and only the values 0 and 255."""
    with Image.open(path) as img:
        return img.mode != "P" and set(np.unique(np.asarray(img)).tolist()) <= {0, 255}


def read_annotation(path: Path, binary: bool) -> np.ndarray:
    """Object ids (H, W) uint8 of one annotation, void (255) as background; ``binary``: ≥ 128 → object 1."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "1"):
                raise WrcError(f"annotation {path} has mode {img.mode}; object-id PNGs are single-channel (L or P)")
            ids = np.asarray(img.convert("L") if img.mode == "1" else img, dtype=np.uint8)
    except OSError as e:
        raise WrcError(f"cannot read the annotation {path}: {first_line(e)}") from None
    return (ids >= 128).astype(np.uint8) if binary else dm.read_objects(ids)


# -- per-frame features -------------------------------------------------------------------------------------

@dataclass
class SequenceData:
    """One sequence's cached input frames (T, H, W, 3) uint8 and backbone tokens (T, C, h', w') float16, with
    its original size and whether its masks are binary."""

    sequence: VideoSequence
    orig_hw: tuple[int, int]
    binary: bool
    images: np.ndarray
    tokens: np.ndarray


def _encode_sequence(seq: VideoSequence, folder: Path, orig_hw: tuple[int, int], size: tuple[int, int],
                     backbone: Backbone, device: torch.device, key: dict[str, Any], advance: Callable[[int], None]
                     ) -> dict[str, np.ndarray]:
    """The cached arrays of ``seq`` in ``folder`` (built, resumed after the last finished batch, or reused);
    a frame whose size is not ``orig_hw`` stops it with its reason."""
    n, (hh, ww), p = len(seq.frames), size, backbone.patch_size
    shapes = {"images": ((n, hh, ww, 3), np.uint8), "tokens": ((n, backbone.channels, hh // p, ww // p), np.float16)}
    meta = folder / "meta.json"
    done = cached_count(meta, key, [folder / f"{name}.npy" for name in shapes])
    if done == n:
        advance(n)
        return {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in shapes}
    arrays = open_arrays(folder, shapes, resume=done > 0)
    write_meta(meta, key, done)
    advance(done)
    for start in range(done, n, BACKBONE_BATCH):
        batch = []
        for frame in seq.frames[start:start + BACKBONE_BATCH]:
            img = read_rgb(frame)
            if (img.height, img.width) != orig_hw:
                raise WrcError(f"frame {frame.name} is {img.width}x{img.height}, not {orig_hw[1]}x{orig_hw[0]} "
                               "like the first")
            batch.append(np.asarray(img.resize((ww, hh), Image.Resampling.BICUBIC)))
        pixels = np.stack(batch)
        with torch.inference_mode():
            x = backbone.normalize(torch.from_numpy(pixels).permute(0, 3, 1, 2).to(device))
            arrays["tokens"][start:start + len(batch)] = backbone(x).to(torch.float16).cpu().numpy()
        arrays["images"][start:start + len(batch)] = pixels
        for arr in arrays.values():
            arr.flush()
        write_meta(meta, key, start + len(batch))
        advance(len(batch))
    return arrays


def cache_sequence(root: Path, seq: VideoSequence, protocol: str, imsize: int, backbone: Backbone,
                   device: torch.device, advance: Callable[[int], None] = lambda n: None,
                   precision: str = "fp32") -> SequenceData:
    """Decode, resize and encode one sequence once under ``root`` (``<root>/vos-<seq>-<key>/``), keyed by the
    frames' files, the input size, the backbone and the compute precision (the caller's autocast)."""
    with Image.open(seq.frames[0]) as img:
        orig_hw = (img.height, img.width)
    size = input_hw(orig_hw, protocol, imsize, backbone.patch_size)
    key = {"format": CACHE_FORMAT, "task": "vos", "frames": hashlib.sha256(json.dumps(seq.fingerprint()).encode()
                                                                          ).hexdigest(),
           "n": len(seq.frames), "size": list(size), "resize": "bicubic", "backbone": backbone.config(),
           "precision": precision}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    with autocast(device, precision):
        arrays = _encode_sequence(seq, root / f"vos-{seq.name}-{digest}", orig_hw, size, backbone, device, key, advance)
    binary = is_binary(seq.masks[seq.frames[0].stem])
    return SequenceData(seq, orig_hw, binary, arrays["images"], arrays["tokens"])


def unit_maps(data: SequenceData, upsampler: Upsampler, backbone: Backbone, scale: int, device: torch.device,
              precision: str = "fp32") -> Iterator[Tensor]:
    """The upsampled (at ``precision``), per-cell L2-normalised float32 feature map (C, scale·h', scale·w') of each
    frame in turn."""
    _, _, h, w = data.tokens.shape
    for t in range(len(data.tokens)):
        tokens = torch.from_numpy(np.array(data.tokens[t:t + 1])).to(device).float()
        pixels = torch.from_numpy(np.array(data.images[t:t + 1])).permute(0, 3, 1, 2).to(device)
        dense = upsampled(upsampler, backbone, pixels, tokens, (scale * h, scale * w), precision)
        yield normalise_and_resize(dense, (scale * h, scale * w))[0]


# -- the metric ---------------------------------------------------------------------------------------------

@dataclass
class SequenceResult:
    """Per-frame J and F (objects, scored frames) of one upsampler on one sequence."""

    j: np.ndarray
    f: np.ndarray

    def summary(self) -> dict[str, Any]:
        jm = [dm.statistics(row).mean for row in self.j]
        fm = [dm.statistics(row).mean for row in self.f]
        j, f = 100 * float(np.mean(jm)), 100 * float(np.mean(fm))
        return {"J": j, "F": f, "J&F": (j + f) / 2, "objects": len(jm), "frames": self.j.shape[1],
                "per_object": {str(k + 1): {"J": 100 * a, "F": 100 * b} for k, (a, b) in enumerate(zip(jm, fm))}}


def overall(results: Sequence[SequenceResult]) -> dict[str, float]:
    """The benchmark's global numbers, in percent: means over all objects of all sequences of the per-object
    mean (J, F), recall and decay; J&F = (J + F) / 2."""
    j = [dm.statistics(row) for r in results for row in r.j]
    f = [dm.statistics(row) for r in results for row in r.f]
    jm, fm = 100 * float(np.mean([s.mean for s in j])), 100 * float(np.mean([s.mean for s in f]))
    return {"J&F": (jm + fm) / 2, "J": jm, "F": fm,
            "J-Recall": 100 * float(np.mean([s.recall for s in j])), "J-Decay": 100 * float(np.mean([s.decay for s in j])),
            "F-Recall": 100 * float(np.mean([s.recall for s in f])), "F-Decay": 100 * float(np.mean([s.decay for s in f]))}


def write_palette_png(path: Path, ids: np.ndarray) -> None:
    """Object ids (H, W) uint8 as an indexed PNG with the DAVIS palette."""
    img = Image.fromarray(ids)
    img.putpalette(davis_palette().ravel().tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")


# -- the task -----------------------------------------------------------------------------------------------

class VosTask:
    """DAVIS J&F of label propagation with every upsampler's features (see the module docstring)."""

    kind = "vos"
    metrics: Sequence[str] = METRICS

    def __init__(self, path: str, *, imsize: int = 448, scale: int = 2, context: int = 7, topk: int = 5,
                 radius: int = 12, temperature: float = 0.1, protocol: str = "square", limit: int | None = None,
                 masks_out: str | None = None, cache: str | None = None) -> None:
        if protocol not in PROTOCOLS:
            raise WrcError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        if imsize < 1 or scale < 1 or topk < 1:
            raise WrcError("--imsize, --scale and --topk must be at least 1")
        if context < 0 or radius < 0:
            raise WrcError("--context and --radius must be at least 0 (radius 0: no window)")
        if not temperature > 0:
            raise WrcError(f"--temperature must be positive, got {temperature}")
        self.path, self.imsize, self.scale, self.context, self.topk = path, imsize, scale, context, topk
        self.radius, self.temperature, self.protocol_name, self.limit = radius, temperature, protocol, limit
        self.masks_out, self.cache = masks_out, cache
        self.layout = ""
        self.sequences: list[VideoSequence] = []
        self.errors: dict[str, str] = {}
        self.scored: dict[str, int] = {}  # sequence → scored frames, of the sequences that were scored

    def read(self) -> None:
        self.layout, sequences, self.errors = find_sequences(self.path)
        for seq in sequences:
            reason = seq.problem()
            if reason:
                self.errors[seq.name] = reason
            else:
                self.sequences.append(seq)
        if self.limit:
            self.sequences = self.sequences[:self.limit]
        for name, reason in self.errors.items():
            log.warning("sequence %s left out: %s", name, reason)
        if not self.sequences:
            first = next(iter(self.errors.items()), None)
            raise WrcError(f"no sequence in {self.path} can be evaluated"
                           + (f" ({first[0]}: {first[1]})" if first else ""))

    @contextmanager
    def features(self, session: Session, bars: Bars) -> Iterator[list[SequenceData]]:
        """Every sequence's cached frames and tokens, in ``cache`` or in a temporary folder removed afterwards."""
        if self.protocol_name == "square" and self.imsize % session.backbone.patch_size:
            raise WrcError(f"--imsize {self.imsize} is not a multiple of the patch size {session.backbone.patch_size}")
        with tempfile.TemporaryDirectory(prefix="wrc-vos-") if self.cache is None else nullcontext(self.cache) as root:
            bar = bars(sum(len(s.frames) for s in self.sequences), "features vos", unit="frame")
            data = []
            for seq in self.sequences:
                try:
                    data.append(cache_sequence(Path(root), seq, self.protocol_name, self.imsize, session.backbone,
                                               session.device, bar.advance, session.precision))
                except (WrcError, OSError, ValueError) as e:
                    self.errors[seq.name] = first_line(e)
                    log.warning("sequence %s left out: %s", seq.name, self.errors[seq.name])
            bar.close()
            yield data

    def measure(self, session: Session, features: list[SequenceData], bars: Bars) -> Measurement:
        labels = list(session.upsamplers)
        per_seq: dict[str, dict[str, SequenceResult]] = {label: {} for label in labels}
        seconds = dict.fromkeys(labels, 0.0)
        bar = bars(sum(len(d.tokens) - 1 for d in features) * len(labels), "eval vos", unit="frame")
        for data in features:
            name = data.sequence.name
            try:
                gts, objects = self._annotations(data)
            except (WrcError, OSError, ValueError) as e:
                self.errors[name] = first_line(e)
                bar.advance((len(data.tokens) - 1) * len(labels))
                continue
            for label, upsampler in session.upsamplers.items():
                began = time.monotonic()
                preds = self._propagate(data, upsampler, session, gts[0], objects, label, bar.advance)
                seconds[label] += time.monotonic() - began
                frames = dm.scored_frames(len(gts))
                j, f = dm.sequence_scores([preds[t - 1] for t in frames], [gts[t] for t in frames], objects)
                per_seq[label][name] = SequenceResult(j, f)
                self.scored[name] = len(frames)
        bar.close()
        if not self.scored:
            raise WrcError("no sequence could be evaluated: " + "; ".join(f"{k}: {v}" for k, v in self.errors.items()))
        results = {label: {**overall(list(per_seq[label].values())), "seconds": round(seconds[label], 2)}
                   for label in labels}
        sequences = {label: {name: r.summary() for name, r in per_seq[label].items()} for label in labels}
        return Measurement(results, {"sequences": sequences, "errors": dict(self.errors)})

    def _annotations(self, data: SequenceData) -> tuple[list[np.ndarray], int]:
        """Every frame's object ids at the original size, and the number of objects of the first frame."""
        gts = []
        for frame in data.sequence.frames:
            ids = read_annotation(data.sequence.masks[frame.stem], data.binary)
            if ids.shape != data.orig_hw:
                raise WrcError(f"annotation {frame.stem}.png is {ids.shape[1]}x{ids.shape[0]}, the frames "
                               f"{data.orig_hw[1]}x{data.orig_hw[0]}")
            gts.append(ids)
        objects = int(gts[0].max())
        if objects == 0:
            raise WrcError("the first-frame mask holds no object")
        return gts, objects

    def _propagate(self, data: SequenceData, upsampler: Upsampler, session: Session, first: np.ndarray,
                   objects: int, label: str, advance: Callable[[], None]) -> list[np.ndarray]:
        """The predicted ids of frames 1 … n−1 at the original size (written as palette PNGs with masks_out)."""
        grid = (self.scale * data.tokens.shape[2], self.scale * data.tokens.shape[3])
        small = Image.fromarray(first).resize((grid[1], grid[0]), Image.Resampling.NEAREST)
        first_labels = one_hot(torch.from_numpy(np.array(small)), objects + 1).to(session.device)
        size = tuple(data.images.shape[1:3])
        out = Path(self.masks_out) / label / data.sequence.name if self.masks_out else None
        if out is not None:
            write_palette_png(out / f"{data.sequence.frames[0].stem}.png", first)
        preds = []
        maps = unit_maps(data, upsampler, session.backbone, self.scale, session.device, session.precision)
        steps = propagate_sequence(maps, first_labels, context=self.context, topk=self.topk,
                                   temperature=self.temperature, radius=self.radius)
        for t, soft in enumerate(steps, start=1):
            ids = frame_labels(soft, size, data.orig_hw)
            if out is not None:
                write_palette_png(out / f"{data.sequence.frames[t].stem}.png", ids)
            preds.append(ids)
            advance()
        return preds

    def protocol(self, session: Session) -> dict[str, Any]:
        resize = ("frames warped to imsize x imsize (bicubic)" if self.protocol_name == "square" else
                  "native size, each side rounded to the nearest patch multiple (bicubic)")
        return {
            "protocol": self.protocol_name, "imsize": self.imsize if self.protocol_name == "square" else None,
            "resize": resize, "scale": self.scale, "context": self.context, "topk": self.topk,
            "radius": self.radius, "temperature": self.temperature,
            "features": "backbone tokens; upsampler to scale x token grid; per-cell L2 normalisation",
            "first_labels": "first-frame ids nearest-resized (PIL) to the feature grid, one-hot (void as background)",
            "propagation": "context = first frame (given labels) + last `context` frames (predicted soft labels); "
                           "cosine affinity in a +-radius Chebyshev window of the feature grid, top-k jointly over "
                           "all context cells (ties kept), softmax with temperature over the top-k",
            "output": "soft labels bilinear to the input frame, per-channel min-max, argmax, nearest to the original size",
            "metric": "DAVIS semi-supervised: J (IoU) and boundary F (tolerance 0.008 x diagonal) per object over "
                      "frames 1..n-2, means over objects of all sequences; J&F = (J + F) / 2; percent",
        }

    def dataset(self) -> dict[str, Any]:
        frames = {s.name: len(s.frames) for s in self.sequences}
        return {"kind": self.layout, "path": str(self.path), "sequences": len(self.scored),
                "frames": sum(frames[n] for n in self.scored), "scored_frames": sum(self.scored.values()),
                "left_out": len(self.errors), "limit": self.limit,
                "masks_out": str(self.masks_out) if self.masks_out else None}


def vos_task(path: str, *, imsize: int = 448, scale: int = 2, context: int = 7, topk: int = 5, radius: int = 12,
             temperature: float = 0.1, protocol: str = "square", limit: int | None = None,
             masks_out: str | None = None, cache: str | None = None) -> VosTask:
    """The DAVIS label-propagation task (settings in the module docstring)."""
    return VosTask(path, imsize=imsize, scale=scale, context=context, topk=topk, radius=radius,
                   temperature=temperature, protocol=protocol, limit=limit, masks_out=masks_out, cache=cache)


def run_vos(path: str, *, upsamplers: str | Sequence[str] = f"bilinear,{DEFAULT_UPSAMPLER}",
            backbone: str = DEFAULT_BACKBONE, backbone_weights: str | None = None, device: str = "auto",
            progress: bool = True, command: str | None = None, **settings: Any) -> dict[str, Any]:
    """Every upsampler on the same sequences; the report. ``settings`` are :func:`vos_task`'s."""
    task = vos_task(path, **settings)
    return run_task(task, RunOptions(upsamplers, backbone, backbone_weights, device, progress), command)
