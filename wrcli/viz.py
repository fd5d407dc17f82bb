"""Pictures of upsampled features: PCA-RGB and query-point similarity maps, several upsamplers side by side.

One PNG per image. Columns: the image, then one per upsampler. Rows: the PCA-RGB of the features, then
one similarity map per query point (the point is ringed on every tile of its row)::

    | image        | up₁ PCA   | up₂ PCA   | ...
    | image + q₁   | up₁ sim q₁| up₂ sim q₁| ...
    | image + q₂   | ...

PCA-RGB: the three principal directions of all upsamplers' features of the image together, so equal
colours mean equal features across columns. Similarity: cosine with the feature at the query point,
shown on a fixed scale (0 → dark, 1 → bright; negatives as 0), so maps are comparable across columns.

Resolution: features are upsampled ×``scale`` of the token grid (2 by default, as ``wrc extract``; 0 = to
the backbone input size, the slow way: a learned ×2 upsampler then makes ⌈log₂ patch⌉ passes, the
guidance image doubled with each after the first), PCA and similarities are computed at that resolution, and each tile
is enlarged to the picture (the backbone input size) by nearest neighbour, so one feature pixel is one
visible block and the picture shows the features' true resolution.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from wrcli.errors import WrcError

if TYPE_CHECKING:
    from wrcli.progress import Progress
    from wrcli.session import Session

# viridis at 0, ¼, ½, ¾, 1 (the similarity colour scale, piecewise linear in between)
COLOURS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)
LABEL_HEIGHT = 14
GAP = 2
PCA_SAMPLES = 50_000  # pixels per fit (a regular subsample of all maps)
QUANTILES = (0.01, 0.99)  # robust range per RGB channel


# -- maths -------------------------------------------------------------------------------------------------

def _subsample(columns: Tensor, n: int) -> Tensor:
    """At most ``n`` of the columns of (C,N), drawn without replacement with a fixed seed."""
    if columns.shape[1] <= n:
        return columns
    pick = torch.randperm(columns.shape[1], generator=torch.Generator().manual_seed(0))[:n]
    return columns[:, pick.to(columns.device)]


def pca_basis(maps: Sequence[Tensor], k: int = 3, samples: int = PCA_SAMPLES) -> tuple[Tensor, Tensor]:
    """Mean μ (C,) and the top-``k`` principal directions V (C,k) of the pixels of all ``maps`` (C,H,W) together.

    V are the eigenvectors of the covariance Σ = E[(f − μ)(f − μ)ᵀ] with the largest eigenvalues, each
    signed so that its largest-magnitude entry is positive. At most ``samples`` pixels, drawn evenly from
    the maps with a fixed seed, enter the fit.
    """
    pixels = torch.cat([_subsample(m.flatten(1), samples // len(maps)).T for m in maps]).double()  # (N, C)
    mean = pixels.mean(dim=0)
    centred = pixels - mean
    # numpy's LAPACK call: torch's eigh stalls for seconds on a busy CPU; eigenvalues ascend
    _, vectors = np.linalg.eigh((centred.T @ centred / len(centred)).cpu().numpy())
    basis = torch.from_numpy(vectors[:, ::-1][:, :k].copy())
    peak = basis.abs().argmax(dim=0)
    basis = basis * basis[peak, torch.arange(basis.shape[1])].sign()
    return mean, basis


def pca_rgb(maps: Sequence[Tensor], quantiles: tuple[float, float] = QUANTILES) -> list[Tensor]:
    """Each (C,H,W) map → (3,H,W) in [0,1]: projections on the joint top-3 directions, each channel
    mapped from its joint [q_lo, q_hi] quantile range to [0,1] and clipped."""
    mean, basis = pca_basis(maps)
    mean, basis = mean.to(maps[0]), basis.to(maps[0])
    projected = [(basis.T @ m.flatten(1) - (basis.T @ mean)[:, None]).reshape(3, *m.shape[-2:]) for m in maps]
    pooled = torch.cat([_subsample(p.flatten(1), PCA_SAMPLES // len(maps)) for p in projected], dim=1)
    lo = torch.quantile(pooled, quantiles[0], dim=1)[:, None, None]
    hi = torch.quantile(pooled, quantiles[1], dim=1)[:, None, None]
    return [((p - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1).float() for p in projected]


def similarity_map(features: Tensor, point: tuple[int, int]) -> Tensor:
    """Cosine similarity (H,W) of every pixel of (C,H,W) ``features`` with the pixel ``point`` = (y, x)."""
    unit = F.normalize(features.float(), dim=0)
    return torch.einsum("c,chw->hw", unit[:, point[0], point[1]], unit)


def enlarge(values: Tensor, size: tuple[int, int]) -> Tensor:
    """(..., h, w) → (..., H, W) by nearest neighbour with pixel centres aligned: output pixel (i, j) takes
    input pixel (⌊(i + ½)·h/H⌋, ⌊(j + ½)·w/W⌋), so each input pixel becomes a block of about H/h × W/w."""
    if tuple(values.shape[-2:]) == tuple(size):
        return values
    flat = values.reshape(-1, 1, *values.shape[-2:]).float()
    return F.interpolate(flat, size=size, mode="nearest-exact").reshape(*values.shape[:-2], *size)


def colourise(values: Tensor) -> np.ndarray:
    """(H,W) values → (H,W,3) uint8 on the viridis scale, 0 and below dark, 1 and above bright."""
    t = values.double().clamp(0, 1).cpu().numpy() * (len(COLOURS) - 1)
    i = np.minimum(t.astype(np.int64), len(COLOURS) - 2)
    frac = (t - i)[..., None]
    return np.rint(COLOURS[i] * (1 - frac) + COLOURS[i + 1] * frac).astype(np.uint8)


def to_uint8(rgb: Tensor) -> np.ndarray:
    """(3,H,W) in [0,1] → (H,W,3) uint8."""
    return (rgb.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def scale_point(point: tuple[float, float], orig_hw: tuple[int, int], input_hw: tuple[int, int]) -> tuple[int, int]:
    """(y, x) in original pixels → the nearest pixel of the resized input (pixel centres kept aligned),
    clipped into the image."""
    return tuple(  # type: ignore[return-value]
        int(min(n - 1, max(0, np.floor((p + 0.5) * n / o)))) for p, o, n in zip(point, orig_hw, input_hw, strict=True)
    )


# -- drawing -----------------------------------------------------------------------------------------------

def panel_size(input_hw: tuple[int, int], n_upsamplers: int, n_queries: int) -> tuple[int, int]:
    """(width, height) of the PNG: 1 + n_upsamplers columns, 1 + n_queries rows, a label strip on top."""
    h, w = input_hw
    cols, rows = 1 + n_upsamplers, 1 + n_queries
    return cols * w + (cols - 1) * GAP, LABEL_HEIGHT + rows * h + (rows - 1) * GAP


def _ring(draw: ImageDraw.ImageDraw, origin: tuple[int, int], point: tuple[int, int], radius: int) -> None:
    cy, cx = origin[1] + point[0], origin[0] + point[1]
    draw.ellipse((cx - radius - 1, cy - radius - 1, cx + radius + 1, cy + radius + 1), outline=(0, 0, 0), width=1)
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), outline=(255, 255, 255), width=2)


def compose(image: np.ndarray, labels: Sequence[str], pca_tiles: Sequence[np.ndarray],
            sim_tiles: Sequence[Sequence[np.ndarray]], queries: Sequence[tuple[int, int]]) -> Image.Image:
    """The panel: ``image`` (H,W,3) uint8, one PCA tile per label, per query one similarity tile per label."""
    h, w = image.shape[:2]
    width, height = panel_size((h, w), len(labels), len(queries))
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    radius = max(3, min(h, w) // 60)
    for col, text in enumerate(["image", *labels]):
        draw.text((col * (w + GAP) + 2, 1), text, fill=(0, 0, 0), font=font)
    rows = [(None, [image, *pca_tiles])]
    rows += [(q, [image, *tiles]) for q, tiles in zip(queries, sim_tiles, strict=True)]
    for r, (query, tiles) in enumerate(rows):
        for c, tile in enumerate(tiles):
            origin = (c * (w + GAP), LABEL_HEIGHT + r * (h + GAP))
            canvas.paste(Image.fromarray(tile), origin)
            if query is not None:
                _ring(draw, origin, query, radius)
    return canvas


# -- the command --------------------------------------------------------------------------------------------

def _png_name(path: str, used: set[str]) -> str:
    stem = Path(path).stem or "image"
    name, k = f"{stem}.png", 1
    while name in used:
        name, k = f"{stem}-{k}.png", k + 1
    used.add(name)
    return name


@dataclass(frozen=True)
class VizOptions:
    """How each image is drawn: the resize policy's short side and long-side cap, the feature scale (× the
    token grid; 0 = the input size) and the query points (y, x) in original pixels (none: the centre)."""

    size: int = 448
    max_side: int | None = None
    scale: int = 2
    queries: Sequence[tuple[float, float]] = ()


def _out_folder(out_dir: str) -> Path:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WrcError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None
    return out


def feature_maps(session: Session, array: np.ndarray, scale: int,
                 done: Callable[[], object] | None = None) -> list[Tensor]:
    """The (C, h·s, w·s) float features of an (H,W,3) uint8 image from each upsampler of the session (to
    (H, W) when ``scale`` is 0), computed at the session's precision; ``done()`` is called after each upsampler
    (progress within an image)."""
    bb, input_hw = session.backbone, array.shape[:2]
    target = {"size": input_hw} if scale == 0 else {"scale": scale}
    maps = []
    with torch.inference_mode(), session.autocast():
        image = bb.normalize(torch.from_numpy(array).permute(2, 0, 1)[None].to(session.device))
        tokens = bb(image)
        for up in session.upsamplers.values():
            maps.append(up.upsample(tokens, image, **target)[0].float())
            if done is not None:
                done()
    return maps


def draw(array: np.ndarray, labels: Sequence[str], maps: Sequence[Tensor],
         points: Sequence[tuple[int, int]], feature_points: Sequence[tuple[int, int]]) -> Image.Image:
    """The panel of one image: PCA-RGB and similarity tiles from ``maps`` at their resolution (the similarity
    to ``feature_points``), each enlarged to the image's size; ``points`` are ringed at that size."""
    hw = array.shape[:2]
    pca_tiles = [to_uint8(enlarge(rgb, hw)) for rgb in pca_rgb(maps)]
    sim_tiles = [[colourise(enlarge(similarity_map(m, p), hw)) for m in maps] for p in feature_points]
    return compose(array, labels, pca_tiles, sim_tiles, points)


def _draw_image(session: Session, array: np.ndarray, orig_hw: tuple[int, int], opts: VizOptions, target: Path,
                bar: Progress) -> list[int]:
    """Draw one decoded image (H,W,3) uint8 of original size ``orig_hw`` into ``target``; returns the feature
    maps' [h, w]."""
    maps = feature_maps(session, array, opts.scale, done=bar.advance)
    feature_hw = tuple(maps[0].shape[-2:])
    queries = opts.queries or [((orig_hw[0] - 1) / 2, (orig_hw[1] - 1) / 2)]  # default: the centre
    panel = draw(array, list(session.upsamplers), maps, [scale_point(q, orig_hw, array.shape[:2]) for q in queries],
                 [scale_point(q, orig_hw, feature_hw) for q in queries])
    try:
        panel.save(target)
    except OSError as exc:
        raise WrcError(f"cannot write {target}: {exc.strerror or exc}") from None
    return list(feature_hw)


def run_viz(sources: Sequence[str], out_dir: str, *, upsamplers: str | Sequence[str], backbone: str,
            backbone_weights: str | None = None, device: str = "auto", precision: str = "auto",
            opts: VizOptions = VizOptions(), progress: bool = True) -> dict[str, Any]:
    """Write one PNG per image into ``out_dir`` (see the module doc).

    Returns {"written": [png paths], "feature_hw": [(h, w) of each], "failed": [{"path", "error"}],
    "precision": the resolved compute precision, ...}; an
    image that cannot be decoded is reported and skipped. Progress counts maps: one image through one
    upsampler.
    """
    from wrcli.data.images import ImageError, ResizePolicy, load_image
    from wrcli.data.sources import discover
    from wrcli.progress import Progress
    from wrcli.session import open_session, parse_upsamplers

    start = time.monotonic()
    if opts.scale < 0:
        raise WrcError(f"--scale must be ≥ 0 (0: the input size), got {opts.scale}")
    names = parse_upsamplers(upsamplers)
    paths = [fs for src in sources for _, fs in discover(src).items]
    if not paths:
        raise WrcError("no images to draw")
    out = _out_folder(out_dir)
    session = open_session(names, backbone=backbone, weights=backbone_weights, device=device, precision=precision)
    policy = ResizePolicy(size=opts.size, patch=session.backbone.patch_size, max_side=opts.max_side)
    bar = Progress(len(paths) * len(session.upsamplers), "viz", unit="map", enabled=progress)
    written: list[str] = []
    feature_hw: list[list[int]] = []
    failed: list[dict[str, str]] = []
    used: set[str] = set()
    try:
        for path in paths:
            try:
                array, orig_hw = load_image(path, policy)
            except ImageError as exc:
                failed.append({"path": path, "error": exc.reason})
                bar.advance(len(session.upsamplers))
                continue
            target = out / _png_name(path, used)
            feature_hw.append(_draw_image(session, array, orig_hw, opts, target, bar))
            written.append(str(target))
    finally:
        bar.close()
    return {"written": written, "feature_hw": feature_hw, "failed": failed, "upsamplers": list(session.upsamplers),
            "precision": session.precision, "size": opts.size, "scale": opts.scale,
            "queries": [list(q) for q in opts.queries] or "centre",
            "seconds": time.monotonic() - start}
