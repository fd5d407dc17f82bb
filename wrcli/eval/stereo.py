"""Dense stereo correspondence (``wrc eval corr --dataset stereo``).

Features F as in :mod:`wrcli.eval.dense`. Left and right images are resized with the long side to ``imsize``
(aspect kept, sides rounded to the patch size), the left disparity map by nearest neighbour and times the
horizontal factor. For each valid left pixel (x, y) (every ``stride``-th row and column) the match is searched
along the same row of the right image, over the whole row: x̂ = argmax_x' ⟨F_L(x, y), F_R(x', y)⟩ — the epipolar
constraint of rectified stereo and nothing else (no disparity range or sign). The error is |x̂ − (x − d)|;
PCK@t px counts errors ≤ t (1 − Middlebury's "bad t"); EPE is the mean error, in pixels of the resized images.
Valid: a finite disparity d > 0 whose match x − d lies inside the right image.

Layout (Middlebury 2014 names; ROOT is one such folder or holds several)::

    <scene>/im0.png  im1.png  disp0.pfm | disp0.npy
        im0 = left, im1 = right, disp0 = left disparity (x_right = x_left − d); inf, nan or ≤ 0 = unknown.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wrcli.data.images import ImageError, ResizePolicy, load_image
from wrcli.data.sources import is_image_name
from wrcli.errors import WrcError, first_line

from .dense import Features, PairTask
from .task import Measurement

if TYPE_CHECKING:
    from wrcli.session import Session

PIXEL_THRESHOLDS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
DEFAULT_IMSIZE = 448
_ROW_CHUNK_BYTES = 1 << 28  # similarity block of the row search


# -- maths -------------------------------------------------------------------------------------------------

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


def stereo_metric_names(thresholds: Sequence[float] = PIXEL_THRESHOLDS) -> list[str]:
    return [*(f"PCK@{t:g}px" for t in thresholds), "EPE px"]


def stereo_metrics(errors: Tensor, thresholds: Sequence[float] = PIXEL_THRESHOLDS) -> dict[str, float]:
    """{"PCK@t px": % of errors ≤ t, ..., "EPE px": mean error} over all given errors."""
    if errors.numel() == 0:
        raise WrcError("no valid disparity in the stereo data: nothing to evaluate")
    values = [100.0 * float((errors <= t).double().mean()) for t in thresholds] + [float(errors.mean())]
    return dict(zip(stereo_metric_names(thresholds), values, strict=True))


# -- data reader --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StereoPair:
    name: str
    left: Path
    right: Path
    disparity: Path


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


def read_npy_disparity(path: Path) -> np.ndarray:
    """The real-valued array of a ``.npy`` file as float32 (read with ``allow_pickle=False``)."""
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise WrcError(f"{path} is not a valid .npy disparity (no NumPy header; write it with numpy.save)")
        f.seek(0)
        try:
            disp = np.load(f, allow_pickle=False)
        except ValueError as exc:
            raise WrcError(f"{path} is not a valid .npy disparity ({first_line(exc)})") from None
    if disp.dtype.kind not in "biuf":
        raise WrcError(f"{path} is not a valid .npy disparity (dtype {disp.dtype}, not real numbers)")
    return disp.astype(np.float32)


def read_disparity(path: str | Path) -> np.ndarray:
    """(H, W) float32 disparity from .pfm or .npy."""
    path = Path(path)
    try:
        disp = read_pfm(path) if path.suffix == ".pfm" else read_npy_disparity(path)
    except (OSError, ValueError) as exc:
        raise WrcError(f"cannot read the disparity {path}: {exc}") from None
    if disp.ndim != 2:
        raise WrcError(f"{path}: a disparity map is (H, W), got shape {disp.shape}")
    return disp


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


# -- the metric ---------------------------------------------------------------------------------------------

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


# -- the task -----------------------------------------------------------------------------------------------

class StereoTask(PairTask):
    """PCK at pixel thresholds and EPE of row matches on rectified stereo pairs with known disparity."""

    metrics = tuple(stereo_metric_names())

    def __init__(self, path: str, *, imsize: int = DEFAULT_IMSIZE, scale: int = 2, stride: int = 1,
                 limit: int | None = None) -> None:
        if stride < 1:
            raise WrcError("--stride must be at least 1")
        super().__init__("stereo", path, imsize, scale, limit)
        self.stride = stride

    def read_pairs(self) -> list[StereoPair]:
        return find_stereo_pairs(self.path)

    def score(self, features: Features, session: Session, advance: Callable[[], None]) -> Measurement:
        policy = ResizePolicy(size=self.imsize, patch=session.backbone.patch_size, max_side=self.imsize)
        results, self.points = evaluate_stereo(self.pairs, features, list(session.upsamplers), policy, self.stride,
                                               advance=advance)
        return Measurement(results)

    def settings(self) -> dict[str, Any]:
        return {
            "resize": "long side to imsize, aspect kept, sides rounded to the patch size (bicubic); "
                      "disparity by nearest neighbour, times the horizontal factor",
            "matching": "left pixel to the most similar pixel of the same right row (whole row)",
            "stride": self.stride, "thresholds_px": list(PIXEL_THRESHOLDS),
            "metric": "PCK@t px: % of valid left pixels with |x_hat - (x - d)| <= t; EPE: mean error (px)",
            "valid": "finite disparity > 0 whose match lies inside the right image",
        }
