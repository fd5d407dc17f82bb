"""Correspondence with upsampled features: sparse keypoints (SPair-71k, a pairs file) and dense stereo.

Features. The backbone sees each image once; every upsampler then maps the token grid (B,C,h,w) to
``scale`` × that grid, the result is L2-normalised per pixel, f̂ = f/‖f‖₂, and bilinearly resized
(align_corners=False) to the image size: F = R(f̂). This is the published protocol (WRC's and LiFT's
``eval_spair.py``: ×2 WRC, normalise, resize to imsize); ``scale`` = the patch size gives F at image
resolution directly, ``scale`` = 1 gives the raw backbone row of the tables.

Keypoints. Both images are letterboxed: the long side resized to ``imsize`` (Lanczos), the result centred
on a black ``imsize``² square, keypoints moved with it (p' = s·p + offset, s = imsize / long side). A
source keypoint is read at its pixel ⌊p'⌋ and matched to the target pixel of largest similarity,
q̂ = argmax_q ⟨F_src(⌊p'⌋), F_tgt(q)⟩. It is correct when ‖q̂ − q'‖₂ < α · max(h, w) · s of the target
box. PCK is counted over all keypoints of a category and averaged over categories, in percent.

Stereo. Left and right images are resized with the long side to ``imsize`` (aspect kept, sides rounded
to the patch size), the left disparity map by nearest neighbour and times the horizontal factor. For
each valid left pixel (x, y) (every ``stride``-th row and column) the match is searched along the same
row of the right image, over the whole row: x̂ = argmax_x' ⟨F_L(x, y), F_R(x', y)⟩ — the epipolar
constraint of rectified stereo and nothing else (no disparity range or sign). The error is
|x̂ − (x − d)|; PCK@t px counts errors ≤ t (1 − Middlebury's "bad t"); EPE is the mean error, in pixels
of the resized images. Valid: a finite disparity d > 0 whose match x − d lies inside the right image.

Layouts::

    SPair-71k/                          (the release as downloaded)
        JPEGImages/<category>/<name>.jpg
        PairAnnotation/<split>/<id>-<src>-<tgt>:<category>.json
            {"src_imname", "trg_imname", "trg_bndbox": [x1, y1, x2, y2], "src_kps": [[x, y], ...],
             "trg_kps": [[x, y], ...], "category", ...}       (ImageAnnotation/ is not read)

    pairs.jsonl                         (one pair per line; paths relative to the file's folder)
        {"src": "a.jpg", "tgt": "b.jpg", "src_kps": [[x, y], ...], "tgt_kps": [[x, y], ...],
         "tgt_bbox": [x1, y1, x2, y2], "category": "cat"}
        tgt_bbox is optional (default: the whole target image), so is category (default "all").
        Keypoints are (x, y) in pixels of the original images, as in SPair.

    stereo/                             (Middlebury 2014 names; ROOT is one such folder or holds several)
        <scene>/im0.png  im1.png  disp0.pfm | disp0.npy
        im0 = left, im1 = right, disp0 = left disparity (x_right = x_left − d); inf, nan or ≤ 0 = unknown.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from wrcli.data.images import ImageError, ResizePolicy, load_image
from wrcli.data.sources import is_image_name
from wrcli.errors import WrcError
from wrcli.eval.datasets import read_rgb

ALPHAS: tuple[float, ...] = (0.1, 0.05, 0.01)
PIXEL_THRESHOLDS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
DATASETS = ("spair", "pairs", "stereo")
DEFAULT_IMSIZE = {"spair": 224, "pairs": 224, "stereo": 448}
_ROW_CHUNK_BYTES = 1 << 28  # similarity block of the row search


# -- maths -------------------------------------------------------------------------------------------------

def normalise_and_resize(features: Tensor, size: tuple[int, int]) -> Tensor:
    """F = R(f / ‖f‖₂): per-pixel L2 normalisation over channels, then bilinear resize to ``size``.

    (B,C,h,w) → (B,C,H,W); R is the identity when (h, w) = ``size``.
    """
    features = F.normalize(features.float(), dim=1)
    if tuple(features.shape[-2:]) == tuple(size):
        return features
    return F.interpolate(features, size=tuple(size), mode="bilinear", align_corners=False)


def match_points(src: Tensor, tgt: Tensor, points: Tensor) -> Tensor:
    """Nearest neighbours of source pixels in the target: q̂ = argmax_q ⟨src[:, y, x], tgt[:, q]⟩.

    src (C,H,W), tgt (C,H',W'), points (N,2) integer (x, y) inside src → (N,2) integer (x, y) in tgt.
    Ties go to the first pixel in row-major order.
    """
    x, y = points[:, 0].long(), points[:, 1].long()
    query = src[:, y, x].T  # (N, C)
    width = tgt.shape[-1]
    best = (query @ tgt.flatten(1)).argmax(dim=1)
    return torch.stack([best % width, best // width], dim=1)


def pck(pred: Tensor, gt: Tensor, thresholds: Tensor, alphas: Sequence[float] = ALPHAS) -> Tensor:
    """Correct-keypoint counts per α: #{i : ‖pred_i − gt_i‖₂ < α · thresholds_i}.

    pred, gt (N,2); thresholds (N,) (max side of the target box) → (len(alphas),) float counts.
    """
    err = (pred.double() - gt.double()).norm(dim=1)
    alpha = torch.tensor(alphas, dtype=torch.float64)
    return (err[None, :] < alpha[:, None] * thresholds.double()[None, :]).sum(dim=1).double()


def match_rows(left: Tensor, right: Tensor, stride: int = 1) -> Tensor:
    """Row-constrained nearest neighbours: x̂(x, y) = argmax_x' ⟨left[:, y, x], right[:, y, x']⟩.

    left, right (C,H,W) → (⌈H/stride⌉, ⌈W/stride⌉) integer x̂ for the left pixels (x, y) on the
    ``stride`` grid (rows and columns 0, stride, 2·stride, ...). Computed in blocks of rows.
    """
    queries = left[:, ::stride, ::stride]  # (C, ny, nx)
    rows = right[:, ::stride, :]  # (C, ny, W)
    ny, nx, width = queries.shape[1], queries.shape[2], rows.shape[2]
    block = max(1, _ROW_CHUNK_BYTES // (4 * nx * width))
    out = torch.empty(ny, nx, dtype=torch.long, device=left.device)
    for start in range(0, ny, block):
        stop = min(ny, start + block)
        sim = torch.einsum("cyx,cyw->yxw", queries[:, start:stop], rows[:, start:stop])
        out[start:stop] = sim.argmax(dim=2)
    return out


def stereo_errors(pred_x: Tensor, disparity: Tensor, stride: int = 1) -> Tensor:
    """|x̂ − (x − d)| at the valid left pixels of the ``stride`` grid (finite d > 0, x − d ≥ 0), flattened.

    pred_x: the output of :func:`match_rows`; disparity (H,W) of the left image.
    """
    d = disparity[::stride, ::stride].double()
    x = torch.arange(0, disparity.shape[1], stride, device=d.device, dtype=torch.float64)[None, :]
    target = x - d
    valid = torch.isfinite(d) & (d > 0) & (target >= 0)
    return (pred_x.double() - target)[valid].abs()


def stereo_metrics(errors: Tensor, thresholds: Sequence[float] = PIXEL_THRESHOLDS) -> dict[str, float]:
    """{"PCK@t px": % of errors ≤ t, ..., "EPE px": mean error} over all given errors."""
    if errors.numel() == 0:
        raise WrcError("no valid disparity in the stereo data: nothing to evaluate")
    out = {f"PCK@{t:g}px": 100.0 * float((errors <= t).double().mean()) for t in thresholds}
    out["EPE px"] = float(errors.mean())
    return out


def keypoint_metric_names(alphas: Sequence[float] = ALPHAS) -> list[str]:
    return [f"PCK@{a:g}" for a in alphas]


def aggregate_pck(per_category: Mapping[str, tuple[Tensor, int]], alphas: Sequence[float] = ALPHAS) -> dict[str, float]:
    """Mean over categories of (correct / points), in %; categories without points are left out."""
    rates = [counts / n for counts, n in per_category.values() if n > 0]
    if not rates:
        raise WrcError("no keypoints to evaluate")
    mean = torch.stack(rates).mean(dim=0)
    return {name: 100.0 * float(v) for name, v in zip(keypoint_metric_names(alphas), mean, strict=True)}


# -- geometry of the inputs ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Letterbox:
    """Long side to ``side``, centred on a ``side``² canvas: p' = scale · p + (off_x, off_y)."""

    side: int
    width: int  # of the resized image
    height: int
    off_x: int
    off_y: int
    scale: float

    @classmethod
    def of(cls, width: int, height: int, side: int) -> Letterbox:
        scale = side / max(width, height)
        w = side if width >= height else int(np.around(side * width / height))
        h = side if height >= width else int(np.around(side * height / width))
        return cls(side, w, h, (side - w) // 2, (side - h) // 2, scale)

    def points(self, xy: np.ndarray) -> np.ndarray:
        return xy * self.scale + np.array([self.off_x, self.off_y], dtype=np.float64)

    def image(self, img: Image.Image) -> np.ndarray:
        """(side, side, 3) uint8: the resized image on black."""
        canvas = np.zeros((self.side, self.side, 3), dtype=np.uint8)
        resized = np.asarray(img.convert("RGB").resize((self.width, self.height), Image.Resampling.LANCZOS))
        canvas[self.off_y:self.off_y + self.height, self.off_x:self.off_x + self.width] = resized
        return canvas


def source_pixels(xy: np.ndarray, side: int) -> np.ndarray:
    """⌊p'⌋ clipped to the canvas: the pixel a source keypoint is read at."""
    return np.clip(np.floor(xy), 0, side - 1).astype(np.int64)


# -- datasets -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KeypointPair:
    src: Path
    tgt: Path
    src_kps: np.ndarray  # (N, 2) float (x, y), original pixels
    tgt_kps: np.ndarray
    tgt_bbox: tuple[float, float, float, float] | None  # x1, y1, x2, y2; None = the whole target image
    category: str


@dataclass(frozen=True)
class StereoPair:
    name: str
    left: Path
    right: Path
    disparity: Path


def _points(value: Any, what: str, where: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise WrcError(f"{where}: {what} must be a list of [x, y] pairs") from None
    if not np.isfinite(arr).all():
        raise WrcError(f"{where}: {what} holds a non-finite coordinate")
    return arr


def _bbox(value: Any, where: str) -> tuple[float, float, float, float]:
    try:
        x1, y1, x2, y2 = (float(v) for v in value)
    except (TypeError, ValueError):
        raise WrcError(f"{where}: the box must be [x1, y1, x2, y2]") from None
    if not (x2 > x1 and y2 > y1):
        raise WrcError(f"{where}: empty box {[x1, y1, x2, y2]}")
    return x1, y1, x2, y2


def _check_kps(src: np.ndarray, tgt: np.ndarray, where: str) -> None:
    if len(src) != len(tgt):
        raise WrcError(f"{where}: {len(src)} source keypoints but {len(tgt)} target keypoints")


def read_spair(root: str | Path, split: str = "test", pairs_per_category: int | None = 100, seed: int = 0
               ) -> list[KeypointPair]:
    """The pairs of one SPair-71k split, ``pairs_per_category`` drawn per category (None or 0: all).

    The draw is the published one: ``np.random.RandomState(seed).choice(n, k)`` (with replacement), one
    generator for all categories, taken in sorted order (the reference takes ``os.listdir`` order).
    """
    root = Path(root)
    folder = root / "PairAnnotation" / split
    if not folder.is_dir():
        raise WrcError(f"{root} is not SPair-71k: {folder} is missing (expected JPEGImages/ and PairAnnotation/{split}/)")
    by_category: dict[str, list[Path]] = {}
    for file in sorted(folder.glob("*.json")):
        _, sep, category = file.stem.rpartition(":")
        if not sep:
            raise WrcError(f"{file}: SPair pair files are named <id>-<src>-<tgt>:<category>.json")
        by_category.setdefault(category, []).append(file)
    if not by_category:
        raise WrcError(f"no pair annotations (*.json) in {folder}")
    rng = np.random.RandomState(seed)
    pairs: list[KeypointPair] = []
    for category in sorted(by_category):
        files = by_category[category]
        if pairs_per_category:
            files = [files[i] for i in rng.choice(len(files), pairs_per_category)]
        pairs.extend(_spair_pair(root, file, category) for file in files)
    return pairs


def _spair_pair(root: Path, file: Path, category: str) -> KeypointPair:
    try:
        data = json.loads(file.read_text())
        src, tgt = data["src_imname"], data["trg_imname"]
        src_kps, tgt_kps, box = data["src_kps"], data["trg_kps"], data["trg_bndbox"]
    except (OSError, ValueError) as exc:
        raise WrcError(f"cannot read the SPair annotation {file}: {exc}") from None
    except (KeyError, TypeError) as exc:
        raise WrcError(f"{file}: not an SPair pair annotation (missing {exc})") from None
    pair = KeypointPair(root / "JPEGImages" / category / src, root / "JPEGImages" / category / tgt,
                        _points(src_kps, "src_kps", str(file)), _points(tgt_kps, "trg_kps", str(file)),
                        _bbox(box, str(file)), category)
    _check_kps(pair.src_kps, pair.tgt_kps, str(file))
    return pair


def read_pairs_file(path: str | Path) -> list[KeypointPair]:
    """Keypoint pairs from a JSON-lines file (format in the module docstring); blank lines are skipped."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise WrcError(f"cannot read the pairs file {path}: {exc.strerror or exc}") from None
    pairs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            rec = json.loads(line)
            src, tgt = rec["src"], rec["tgt"]
            src_kps, tgt_kps = rec["src_kps"], rec["tgt_kps"]
        except ValueError as exc:
            raise WrcError(f"{where}: not JSON ({exc})") from None
        except (KeyError, TypeError) as exc:
            raise WrcError(f"{where}: a pair needs src, tgt, src_kps and tgt_kps (missing {exc})") from None
        box = rec.get("tgt_bbox")
        pair = KeypointPair(path.parent / src, path.parent / tgt, _points(src_kps, "src_kps", where),
                            _points(tgt_kps, "tgt_kps", where), None if box is None else _bbox(box, where),
                            str(rec.get("category", "all")))
        _check_kps(pair.src_kps, pair.tgt_kps, where)
        pairs.append(pair)
    if not pairs:
        raise WrcError(f"the pairs file {path} holds no pairs")
    return pairs


def find_stereo_pairs(root: str | Path) -> list[StereoPair]:
    """ROOT holding im0.*, im1.* and disp0.{pfm,npy}, or sub-folders (sorted) that do."""
    root = Path(root)
    if not root.is_dir():
        raise WrcError(f"stereo data {root} is not a folder (expected im0.png, im1.png, disp0.pfm inside)")
    folders = [root] if _stereo_file(root, "im0") else sorted(p for p in root.iterdir() if p.is_dir())
    pairs = []
    for folder in folders:
        left, right = _stereo_file(folder, "im0"), _stereo_file(folder, "im1")
        disp = next((folder / f"disp0{ext}" for ext in (".pfm", ".npy") if (folder / f"disp0{ext}").is_file()), None)
        if left and right and disp:
            pairs.append(StereoPair(folder.name, left, right, disp))
        elif left or right or disp:
            raise WrcError(f"{folder}: a stereo pair needs im0.<image>, im1.<image> and disp0.pfm or disp0.npy")
    if not pairs:
        raise WrcError(f"no stereo pairs in {root} (expected im0.png, im1.png, disp0.pfm in it or in sub-folders)")
    return pairs


def _stereo_file(folder: Path, stem: str) -> Path | None:
    return next((p for p in sorted(folder.glob(f"{stem}.*")) if is_image_name(p.name)), None)


def read_pfm(path: str | Path) -> np.ndarray:
    """A greyscale PFM ("Pf") as (H, W) float32, top row first (PFM stores the bottom row first)."""
    with open(path, "rb") as f:
        kind = f.readline().strip()
        dims = f.readline().split()
        scale = float(f.readline())
        if kind != b"Pf" or len(dims) != 2:
            raise WrcError(f"{path}: not a greyscale PFM (header {kind!r})")
        width, height = int(dims[0]), int(dims[1])
        data = np.fromfile(f, dtype="<f4" if scale < 0 else ">f4", count=width * height)
    if data.size != width * height:
        raise WrcError(f"{path}: truncated PFM ({data.size} of {width * height} values)")
    return np.ascontiguousarray(data.reshape(height, width)[::-1]).astype(np.float32)


def read_disparity(path: str | Path) -> np.ndarray:
    """(H, W) float32 disparity from .pfm or .npy."""
    path = Path(path)
    try:
        disp = read_pfm(path) if path.suffix == ".pfm" else np.load(path, allow_pickle=False).astype(np.float32)
    except (OSError, ValueError) as exc:
        raise WrcError(f"cannot read the disparity {path}: {exc}") from None
    if disp.ndim != 2:
        raise WrcError(f"{path}: a disparity map is (H, W), got shape {disp.shape}")
    return disp


# -- evaluation (the backbone once per image, every upsampler on its features) -------------------------------

Features = Callable[[Tensor], Iterator[tuple[str, Tensor]]]


def feature_maps(backbone: Any, upsamplers: Mapping[str, Any], scale: int, device: torch.device) -> Features:
    """pixels uint8 (B,3,H,W) → (label, F (B,C,H,W)) for each upsampler in turn (see the top): one backbone
    pass, then one upsampler's maps at a time."""

    @torch.inference_mode()
    def tokens_of(pixels: Tensor) -> tuple[Tensor, Tensor]:
        images = backbone.normalize(pixels.to(device))
        return images, backbone(images)

    @torch.inference_mode()
    def dense(upsampler: Any, tokens: Tensor, images: Tensor) -> Tensor:
        return normalise_and_resize(upsampler.upsample(tokens, images, scale=scale), tuple(images.shape[-2:]))

    def run(pixels: Tensor) -> Iterator[tuple[str, Tensor]]:
        images, tokens = tokens_of(pixels)
        for label, upsampler in upsamplers.items():
            yield label, dense(upsampler, tokens, images)

    return run


def evaluate_keypoints(pairs: Sequence[KeypointPair], features: Features, labels: Sequence[str], imsize: int,
                       alphas: Sequence[float] = ALPHAS, advance: Callable[[], None] = lambda: None
                       ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, dict[str, float]]], int]:
    """PCK per upsampler (mean over categories) and per category, and the number of keypoints."""
    counts: dict[str, dict[str, tuple[Tensor, int]]] = {label: {} for label in labels}
    n_points = 0
    for pair in pairs:
        src_img, tgt_img = read_rgb(pair.src), read_rgb(pair.tgt)
        src_box, tgt_box = Letterbox.of(*src_img.size, imsize), Letterbox.of(*tgt_img.size, imsize)
        pixels = torch.from_numpy(np.stack([src_box.image(src_img), tgt_box.image(tgt_img)])).permute(0, 3, 1, 2)
        src_px = torch.from_numpy(source_pixels(src_box.points(pair.src_kps), imsize))
        gt = torch.from_numpy(tgt_box.points(pair.tgt_kps))
        x1, y1, x2, y2 = pair.tgt_bbox or (0.0, 0.0, float(tgt_img.width), float(tgt_img.height))
        thresholds = torch.full((len(gt),), max(x2 - x1, y2 - y1) * tgt_box.scale, dtype=torch.float64)
        for label, maps in features(pixels):
            pred = match_points(maps[0], maps[1], src_px.to(maps.device)).cpu()
            prev, n = counts[label].get(pair.category, (torch.zeros(len(alphas), dtype=torch.float64), 0))
            counts[label][pair.category] = (prev + pck(pred, gt, thresholds, alphas), n + len(gt))
        n_points += len(gt)
        advance()
    results = {label: aggregate_pck(per_cat, alphas) for label, per_cat in counts.items()}
    per_category = {label: {cat: aggregate_pck({cat: value}, alphas) for cat, value in per_cat.items() if value[1]}
                    for label, per_cat in counts.items()}
    return results, per_category, n_points


def load_stereo(pair: StereoPair, policy: ResizePolicy) -> tuple[Tensor, Tensor]:
    """(2,3,H,W) uint8 left and right at ``policy``, and the left disparity (H,W) in resized pixels."""
    images = []
    for path in (pair.left, pair.right):
        try:
            array, orig_hw = load_image(str(path), policy)
        except ImageError as exc:
            raise WrcError(f"cannot use the image {path}: {exc.reason}") from None
        images.append((array, orig_hw))
    (left, hw), (right, hw_right) = images
    disp = read_disparity(pair.disparity)
    if hw != hw_right or disp.shape != hw:
        raise WrcError(f"{pair.name}: left {hw}, right {hw_right} and disparity {disp.shape} sizes differ")
    height, width = left.shape[:2]
    resized = F.interpolate(torch.from_numpy(disp)[None, None], size=(height, width), mode="nearest-exact")[0, 0]
    pixels = torch.from_numpy(np.stack([left, right])).permute(0, 3, 1, 2)
    return pixels, resized * (width / hw[1])


def evaluate_stereo(pairs: Sequence[StereoPair], features: Features, labels: Sequence[str], policy: ResizePolicy,
                    stride: int = 1, thresholds: Sequence[float] = PIXEL_THRESHOLDS,
                    advance: Callable[[], None] = lambda: None) -> tuple[dict[str, dict[str, float]], int]:
    """PCK at pixel thresholds and EPE per upsampler over the valid pixels of all pairs, and their number."""
    errors: dict[str, list[Tensor]] = {label: [] for label in labels}
    for pair in pairs:
        pixels, disparity = load_stereo(pair, policy)
        for label, maps in features(pixels):
            pred = match_rows(maps[0], maps[1], stride).cpu()
            errors[label].append(stereo_errors(pred, disparity, stride))
        advance()
    joined = {label: torch.cat(errs) for label, errs in errors.items()}
    n_points = len(next(iter(joined.values())))
    return {label: stereo_metrics(errs, thresholds) for label, errs in joined.items()}, n_points


# -- the command --------------------------------------------------------------------------------------------

def run_corr(dataset: str, path: str, *, upsamplers: str | Sequence[str], backbone: str,
             backbone_weights: str | None = None, device: str = "auto", imsize: int | None = None, scale: int = 2,
             split: str = "test", pairs_per_category: int = 100, seed: int = 0, stride: int = 1,
             limit: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Load the data and the models, evaluate every upsampler on the same inputs, return the report."""
    from wrcli.backbones import load_backbone
    from wrcli.progress import Progress
    from wrcli.runtime import current_rank, resolve_device

    from .common import describe_upsampler, environment, load_upsamplers, parse_upsamplers, resolve_default

    start = time.monotonic()
    if dataset not in DATASETS:
        raise WrcError(f"--dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    if scale < 1 or stride < 1 or pairs_per_category < 0:
        raise WrcError("--scale and --stride must be ≥ 1 and --pairs-per-category ≥ 0")
    imsize = imsize or DEFAULT_IMSIZE[dataset]
    names = parse_upsamplers(upsamplers)
    if dataset == "spair":
        items: Sequence[Any] = read_spair(path, split, pairs_per_category, seed)
    elif dataset == "pairs":
        items = read_pairs_file(path)
    else:
        items = find_stereo_pairs(path)
    items = items[:limit] if limit else items
    dev = resolve_device(device, current_rank())
    bb = load_backbone(backbone, backbone_weights, device=dev)
    if imsize % bb.patch_size:
        raise WrcError(f"--imsize {imsize} is not a multiple of the patch size {bb.patch_size}")
    models = load_upsamplers(resolve_default(names, bb), bb, dev)
    features = feature_maps(bb, models, scale, dev)
    bar = Progress(len(items), f"eval corr {dataset}", unit="pair", enabled=progress)
    protocol: dict[str, Any] = {
        "dataset": dataset, "imsize": imsize, "scale": scale,
        "features": "backbone tokens; upsampler to scale x token grid; per-pixel L2 normalisation; "
                    "bilinear resize (align_corners=False) to the image size",
    }
    extra: dict[str, Any] = {}
    try:
        if dataset == "stereo":
            policy = ResizePolicy(size=imsize, patch=bb.patch_size, max_side=imsize)
            results, n_points = evaluate_stereo(items, features, list(models), policy, stride, advance=bar.advance)
            protocol.update(
                resize="long side to imsize, aspect kept, sides rounded to the patch size (bicubic); "
                       "disparity by nearest neighbour, times the horizontal factor",
                matching="left pixel to the most similar pixel of the same right row (whole row)",
                stride=stride, thresholds_px=list(PIXEL_THRESHOLDS),
                metric="PCK@t px: % of valid left pixels with |x_hat - (x - d)| <= t; EPE: mean error (px)",
                valid="finite disparity > 0 whose match lies inside the right image",
            )
            metrics = list(results[next(iter(results))])
        else:
            results, per_category, n_points = evaluate_keypoints(items, features, list(models), imsize,
                                                                  advance=bar.advance)
            extra["per_category"] = per_category
            protocol.update(
                resize="long side to imsize (Lanczos), centred on a black imsize x imsize square",
                matching="source keypoint at its pixel floor(p) to the most similar target pixel (all pixels)",
                alphas=list(ALPHAS),
                metric="PCK@alpha: % of keypoints with error < alpha * max(h, w) of the target box; "
                       "per category over its keypoints, then the mean over categories",
            )
            if dataset == "spair":
                protocol.update(split=split, pairs_per_category=pairs_per_category, seed=seed,
                                sampling="np.random.RandomState(seed).choice(n, k) per category (with "
                                         "replacement), categories in sorted order")
            metrics = keypoint_metric_names()
    finally:
        bar.close()
    categories = sorted({p.category for p in items}) if dataset != "stereo" else None
    return {
        "task": "corr",
        "protocol": protocol,
        "dataset": {"kind": dataset, "path": str(path), "pairs": len(items), "points": n_points,
                    "limit": limit, **({"categories": categories} if categories else {})},
        "environment": environment(dev),
        "backbone": bb.config(),
        "upsamplers": {label: describe_upsampler(m) for label, m in models.items()},
        "metrics": metrics,
        "results": results,
        **extra,
        "seconds": time.monotonic() - start,
    }
