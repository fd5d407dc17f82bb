"""Keypoint correspondence (``wrc eval corr --dataset spair|pairs``): SPair-71k and a pairs file share it.

Features F as in :mod:`wrcli.eval.dense`. Both images are letterboxed: the long side resized to ``imsize``
(Lanczos), the result centred on a black ``imsize``² square, keypoints moved with it (p' = s·p + offset,
s = imsize / long side). A source keypoint is read at its pixel ⌊p'⌋ and matched to the target pixel of largest
similarity, q̂ = argmax_q ⟨F_src(⌊p'⌋), F_tgt(q)⟩. It is correct when ‖q̂ − q'‖₂ < α · max(h, w) · s of the
target box. PCK is counted over all keypoints of a category and averaged over categories, in percent.

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
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from wrcli.errors import WrcError

from .datasets import read_rgb
from .dense import Features, PairTask
from .task import Measurement

if TYPE_CHECKING:
    from wrcli.session import Session

ALPHAS: tuple[float, ...] = (0.1, 0.05, 0.01)
DATASETS = ("spair", "pairs")
DEFAULT_IMSIZE = 224


# -- maths -------------------------------------------------------------------------------------------------

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


# -- data readers -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KeypointPair:
    src: Path
    tgt: Path
    src_kps: np.ndarray  # (N, 2) float (x, y), original pixels
    tgt_kps: np.ndarray
    tgt_bbox: tuple[float, float, float, float] | None  # x1, y1, x2, y2; None = the whole target image
    category: str


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


def _pair(src: Path, tgt: Path, src_kps: Any, tgt_kps: Any, box: Any, category: str, names: tuple[str, str],
          where: str) -> KeypointPair:
    """A checked pair: keypoint lists of equal length (named ``names`` in messages), a non-empty box or None."""
    pair = KeypointPair(src, tgt, _points(src_kps, names[0], where), _points(tgt_kps, names[1], where),
                        None if box is None else _bbox(box, where), category)
    if len(pair.src_kps) != len(pair.tgt_kps):
        raise WrcError(f"{where}: {len(pair.src_kps)} source keypoints but {len(pair.tgt_kps)} target keypoints")
    return pair


def read_spair(root: str | Path, split: str = "test", pairs_per_category: int | None = 100, seed: int = 0
               ) -> list[KeypointPair]:
    """The pairs of one SPair-71k split, ``pairs_per_category`` drawn per category (None or 0: all).

    The draw is the published one: ``np.random.RandomState(seed).choice(n, k)`` (with replacement), one
    generator for all categories, taken in sorted order (the reference takes ``os.listdir`` order).
    """
    root = Path(root)
    by_category = _spair_files(root, split)
    rng = np.random.RandomState(seed)
    pairs: list[KeypointPair] = []
    for category in sorted(by_category):
        files = by_category[category]
        if pairs_per_category:
            files = [files[i] for i in rng.choice(len(files), pairs_per_category)]
        pairs.extend(_spair_pair(root, file, category) for file in files)
    return pairs


def _spair_files(root: Path, split: str) -> dict[str, list[Path]]:
    """category → its pair annotation files of ``split``, sorted."""
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
    return by_category


def _spair_pair(root: Path, file: Path, category: str) -> KeypointPair:
    try:
        data = json.loads(file.read_text())
        src, tgt = data["src_imname"], data["trg_imname"]
        src_kps, tgt_kps, box = data["src_kps"], data["trg_kps"], data["trg_bndbox"]
    except (OSError, ValueError) as exc:
        raise WrcError(f"cannot read the SPair annotation {file}: {exc}") from None
    except (KeyError, TypeError) as exc:
        raise WrcError(f"{file}: not an SPair pair annotation (missing {exc})") from None
    images = root / "JPEGImages" / category
    if box is None:
        raise WrcError(f"{file}: the box must be [x1, y1, x2, y2]")
    return _pair(images / src, images / tgt, src_kps, tgt_kps, box, category, ("src_kps", "trg_kps"), str(file))


def read_pairs_file(path: str | Path) -> list[KeypointPair]:
    """Keypoint pairs from a JSON-lines file (format in the module docstring); blank lines are skipped."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise WrcError(f"cannot read the pairs file {path}: {exc.strerror or exc}") from None
    pairs = [_pairs_line(path, line, number) for number, line in enumerate(lines, 1) if line.strip()]
    if not pairs:
        raise WrcError(f"the pairs file {path} holds no pairs")
    return pairs


def _pairs_line(path: Path, line: str, number: int) -> KeypointPair:
    where = f"{path}:{number}"
    try:
        rec = json.loads(line)
        src, tgt = rec["src"], rec["tgt"]
        src_kps, tgt_kps = rec["src_kps"], rec["tgt_kps"]
    except ValueError as exc:
        raise WrcError(f"{where}: not JSON ({exc})") from None
    except (KeyError, TypeError) as exc:
        raise WrcError(f"{where}: a pair needs src, tgt, src_kps and tgt_kps (missing {exc})") from None
    return _pair(path.parent / src, path.parent / tgt, src_kps, tgt_kps, rec.get("tgt_bbox"),
                 str(rec.get("category", "all")), ("src_kps", "tgt_kps"), where)


# -- the metric ---------------------------------------------------------------------------------------------

def evaluate_keypoints(pairs: Sequence[KeypointPair], features: Features, labels: Sequence[str], imsize: int,
                       alphas: Sequence[float] = ALPHAS, advance: Callable[[], None] = lambda: None
                       ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, dict[str, float]]], int]:
    """PCK per upsampler (mean over categories) and per category, and the number of keypoints."""
    counts: dict[str, dict[str, tuple[Tensor, int]]] = {label: {} for label in labels}
    n_points = 0
    for pair in pairs:
        pixels, src_px, gt, thresholds = _letterboxed(pair, imsize)
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


def _letterboxed(pair: KeypointPair, imsize: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Both images letterboxed (2,3,S,S) uint8, the source pixels (N,2), the target keypoints (N,2) on the
    canvas and each one's threshold unit, max(h, w) · s of the target box (N,)."""
    src_img, tgt_img = read_rgb(pair.src), read_rgb(pair.tgt)
    src_box, tgt_box = Letterbox.of(*src_img.size, imsize), Letterbox.of(*tgt_img.size, imsize)
    pixels = torch.from_numpy(np.stack([src_box.image(src_img), tgt_box.image(tgt_img)])).permute(0, 3, 1, 2)
    src_px = torch.from_numpy(source_pixels(src_box.points(pair.src_kps), imsize))
    gt = torch.from_numpy(tgt_box.points(pair.tgt_kps))
    x1, y1, x2, y2 = pair.tgt_bbox or (0.0, 0.0, float(tgt_img.width), float(tgt_img.height))
    thresholds = torch.full((len(gt),), max(x2 - x1, y2 - y1) * tgt_box.scale, dtype=torch.float64)
    return pixels, src_px, gt, thresholds


# -- the task -----------------------------------------------------------------------------------------------

class KeypointTask(PairTask):
    """PCK@α of keypoint matches on SPair-71k (``dataset="spair"``) or a pairs file (``"pairs"``)."""

    metrics = tuple(keypoint_metric_names())

    def __init__(self, dataset: str, path: str, *, imsize: int = DEFAULT_IMSIZE, scale: int = 2,
                 split: str = "test", pairs_per_category: int = 100, seed: int = 0, limit: int | None = None) -> None:
        if dataset not in DATASETS:
            raise WrcError(f"keypoint datasets are {' and '.join(DATASETS)}, got {dataset!r}")
        if pairs_per_category < 0:
            raise WrcError("--pairs-per-category must be at least 0")
        super().__init__(dataset, path, imsize, scale, limit)
        self.split, self.pairs_per_category, self.seed = split, pairs_per_category, seed

    def read_pairs(self) -> list[KeypointPair]:
        if self.name == "spair":
            return read_spair(self.path, self.split, self.pairs_per_category, self.seed)
        return read_pairs_file(self.path)

    def score(self, features: Features, session: Session, advance: Callable[[], None]) -> Measurement:
        results, per_category, self.points = evaluate_keypoints(self.pairs, features, list(session.upsamplers),
                                                                self.imsize, advance=advance)
        return Measurement(results, {"per_category": per_category})

    def settings(self) -> dict[str, Any]:
        spair = {"split": self.split, "pairs_per_category": self.pairs_per_category, "seed": self.seed,
                 "sampling": "np.random.RandomState(seed).choice(n, k) per category (with replacement), "
                             "categories in sorted order"}
        return {
            "resize": "long side to imsize (Lanczos), centred on a black imsize x imsize square",
            "matching": "source keypoint at its pixel floor(p) to the most similar target pixel (all pixels)",
            "alphas": list(ALPHAS),
            "metric": "PCK@alpha: % of keypoints with error < alpha * max(h, w) of the target box; "
                      "per category over its keypoints, then the mean over categories",
            **(spair if self.name == "spair" else {}),
        }

    def notes(self) -> dict[str, Any]:
        categories = sorted({p.category for p in self.pairs})
        return {"categories": categories} if categories else {}
