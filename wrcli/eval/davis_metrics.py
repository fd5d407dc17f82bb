"""The DAVIS video object segmentation measures (Perazzi et al., CVPR 2016; Pont-Tuset et al., 2017), as the
``davis2017-evaluation`` benchmark code computes them for the semi-supervised task.

- **Region J** of one object in one frame: J = |P ∩ G| / |P ∪ G| on the boolean masks; an empty union gives 1.
- **Boundary F**: the boundary maps b(P), b(G) (:func:`boundary_map`, one pixel wide, offset half a pixel towards
  the origin), each dilated by a disk of radius r = ⌈0.008 · √(H² + W²)⌉ (:func:`dilate_disk`); precision
  p = |b(P) ∩ D(b(G))| / |b(P)|, recall q = |b(G) ∩ D(b(P))| / |b(G)|, F = 2pq / (p + q) (0 when p + q = 0).
  No predicted boundary: p = 1, q = 0 (both empty: p = q = 1); no ground-truth boundary: p = 0, q = 1.
- **Which frames**: the first (given) and the last frame of a sequence are not scored: frames 1 … n−2.
- **Statistics** per object over its scored frames (:func:`statistics`): mean M, recall O = share of frames
  above 0.5, decay D = mean of the first quarter − mean of the last quarter (four bins of
  ``round(linspace(1, n, 5)) − 1`` bounds, each bin including both bounds).
- **Objects**: ids 1 … max of the first-frame mask; void (255) counts as background, as the benchmark reads
  the annotations for this task. The overall J and F are means over all objects of all sequences (not over
  sequences), and J&F = (J + F) / 2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOUNDARY_TOLERANCE = 0.008  # of the image diagonal
VOID = 255


def jaccard(pred: np.ndarray, gt: np.ndarray) -> float:
    """J = |P ∩ G| / |P ∪ G| of two boolean (H, W) masks; 1 when both are empty."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and annotation {gt.shape} sizes differ")
    pred, gt = pred.astype(bool), gt.astype(bool)
    union = int(np.count_nonzero(pred | gt))
    return 1.0 if union == 0 else int(np.count_nonzero(pred & gt)) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool → the pixels whose value differs from their east, south or south-east neighbour; in the last
    row only the east neighbour counts, in the last column only the south one, the corner is never a boundary
    (the benchmark's ``seg2bmap`` at full resolution). A filled square of side n gives the n+1 square's outline."""
    m = mask.astype(bool)
    east, south, south_east = np.zeros_like(m), np.zeros_like(m), np.zeros_like(m)
    east[:, :-1] = m[:, 1:]
    south[:-1, :] = m[1:, :]
    south_east[:-1, :-1] = m[1:, 1:]
    b = (m ^ east) | (m ^ south) | (m ^ south_east)
    b[-1, :] = m[-1, :] ^ east[-1, :]
    b[:, -1] = m[:, -1] ^ south[:, -1]
    b[-1, -1] = False
    return b


def dilate_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of (H, W) ``mask`` by the disk {(dy, dx): dy² + dx² ≤ radius²}, outside = background.

    Row dy of the disk is the segment |dx| ≤ ⌊√(r² − dy²)⌋: a horizontal window sum (cumulative sums) per dy,
    shifted by dy, OR-ed: O((2r+1)·H·W).
    """
    if radius < 0:
        raise ValueError(f"the disk radius must be ≥ 0, got {radius}")
    h, w = mask.shape
    r = int(radius)
    padded = np.pad(mask.astype(bool), r)
    sums = np.zeros((h + 2 * r, w + 2 * r + 1), dtype=np.int32)
    np.cumsum(padded, axis=1, out=sums[:, 1:])
    out = np.zeros((h, w), dtype=bool)
    for dy in range(-r, r + 1):
        a = math.isqrt(r * r - dy * dy)
        rows = sums[r + dy:r + dy + h]
        out |= rows[:, r + a + 1:r + a + 1 + w] > rows[:, r - a:r - a + w]
    return out


def boundary_radius(shape: tuple[int, int], tolerance: float = BOUNDARY_TOLERANCE) -> int:
    """r = ⌈tolerance · √(H² + W²)⌉ pixels (8 at 854×480)."""
    return math.ceil(tolerance * math.hypot(*shape))


def boundary_f(pred: np.ndarray, gt: np.ndarray, tolerance: float = BOUNDARY_TOLERANCE) -> float:
    """The boundary F-measure of two boolean (H, W) masks (conventions in the module docstring)."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and annotation {gt.shape} sizes differ")
    radius = boundary_radius(pred.shape, tolerance)
    bp, bg = boundary_map(pred), boundary_map(gt)
    n_pred, n_gt = int(np.count_nonzero(bp)), int(np.count_nonzero(bg))
    if n_pred == 0 or n_gt == 0:
        precision, recall = (1.0 if n_pred == 0 else 0.0), (1.0 if n_gt == 0 else 0.0)
    else:
        precision = int(np.count_nonzero(bp & dilate_disk(bg, radius))) / n_pred
        recall = int(np.count_nonzero(bg & dilate_disk(bp, radius))) / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def read_objects(labels: np.ndarray) -> np.ndarray:
    """A DAVIS-2017 annotation (H, W) of object ids → the same with void (255) as background (0)."""
    return np.where(labels == VOID, 0, labels)


@dataclass(frozen=True)
class Statistics:
    """Mean, recall (share > 0.5) and decay of one object's per-frame values."""

    mean: float
    recall: float
    decay: float


def statistics(values: Sequence[float]) -> Statistics:
    """M, O, D of the per-frame values of one object (see the module docstring); needs at least one value."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no scored frames")
    bounds = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(np.int64)
    first, last = v[bounds[0]:bounds[1] + 1], v[bounds[3]:bounds[4] + 1]
    return Statistics(float(v.mean()), float((v > 0.5).mean()), float(first.mean() - last.mean()))


def scored_frames(n_frames: int) -> range:
    """The frames the semi-supervised benchmark scores: 1 … n−2 (neither the given first nor the last)."""
    return range(1, n_frames - 1)


def sequence_scores(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], objects: int,
                    tolerance: float = BOUNDARY_TOLERANCE) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame J and F of every object: (objects, frames) each, for predicted and annotated (H, W) id maps of
    the *scored* frames (void already background). Object k is id k + 1 in both."""
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predicted and {len(gts)} annotated frames")
    j = np.zeros((objects, len(gts)))
    f = np.zeros((objects, len(gts)))
    for t, (pred, gt) in enumerate(zip(preds, gts, strict=True)):
        for k in range(objects):
            p, g = pred == k + 1, gt == k + 1
            j[k, t] = jaccard(p, g)
            f[k, t] = boundary_f(p, g, tolerance)
    return j, f
