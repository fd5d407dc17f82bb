"""Unsupervised object discovery (``wrc eval discovery``): TokenCut or LOST on the upsampled features, scored
by CorLoc, on VOC07 / VOC12 trainval, COCO20k or a generic boxes file.

Features. Every image is warped to ``imsize``² (Pillow bilinear, antialiased when shrinking: torchvision's
``Resize((s, s))`` on a PIL image, as WRC's ``eval_obj_disc.py``), the backbone gives its final block's
normalised patch tokens (h = w = imsize/p) once, cached on disk (:func:`wrcli.eval.features.build_cache`), and
each upsampler maps them to the ``scale`` × grid, g = scale · imsize/p (64² at 448 ×2 for ViT-S/14). Each cell is
L2-normalised, f̂ = f/‖f‖₂, and S = f̂ᵀf̂ (N × N cosines, N = g², float64). ``scale`` 1 is the raw DINOv2 row.

TokenCut (Wang et al.; ``object_discovery.ncut``). A_ij = 1 where S_ij > τ, else ε = 1e-5 (τ 0.2 on VOC and the
generic layout, 0.3 on COCO20k); D = diag(A·1). v = the second-smallest generalised eigenvector of
(D − A) v = λ D v, solved as the symmetric normalised problem (I − D^-½ A D^-½) u = λ u, v = D^-½ u (so vᵀDv = 1,
scipy's ``eigh(D − A, D)`` normalisation): the two largest eigenpairs of D^-½ A D^-½ by LAPACK's ``syevr``
(``scipy.linalg.eigh`` with ``subset_by_index``, float64, deterministic) up to :data:`DENSE_LIMIT` nodes,
``torch.lobpcg`` (k = 3, float64, a fixed-seed start) above it. The sign is fixed so that the entry of largest |v| is
positive. Foreground = {v > mean v}; the seed is argmax |v| (first on ties); when the seed is not in the
foreground the partition is complemented ({v ≤ mean v}), as the reference does.

LOST (Siméoni et al.; ``object_discovery.lost``). The binarised graph has an edge i–j (i ≠ j) where S_ij > 0;
patches are sorted by that degree, lowest first (a stable sort: ties by index). The seed is the first; of the
k = 100 lowest-degree patches those with S_seed,j > 0 are kept (the seed itself among them) and
M = Σ_kept S_j,· ; the foreground is {M > 0}. The reference uses raw keys (dot products); here, as for TokenCut,
the cosines of the normalised upsampled features.

Box. The 4-connected component of the foreground that holds the seed (``scipy.ndimage.label``, default cross
structure); cells [x0, x1) × [y0, y1) with x1 = max column + 1 ("+1 because excluded max"), times the cell size
c = imsize/g (= p/scale) and clipped to imsize, gives the box in warped pixels; x · W/imsize and y · H/imsize map
it to the original W × H image, where the ground truth lives.

CorLoc = 100 × #{images whose box has IoU ≥ 0.5 with at least one ground-truth box} / #{images with ground-truth
boxes}. IoU = |B ∩ G| / |B ∪ G| of continuous boxes, area (x2 − x1)(y2 − y1) (no +1), in float64 and exact
(the reference's ``bbox_iou`` adds ε = 1e-7 to a height and the union, which only moves an IoU of exactly 0.5).
Images without usable ground truth (no annotation, no boxes, an unreadable image) are left out of both counts
and listed in the report's ``skipped`` section with a one-line reason; the run goes on. An image that opens but
fails to decode stops the feature cache with a one-line error naming it.

Layouts (ROOT):

- ``voc07`` / ``voc12``: ``VOCdevkit/VOC2007|VOC2012`` (ROOT may also be ``VOCdevkit/`` or the year folder) with
  ``ImageSets/Main/trainval.txt``, ``Annotations/<id>.xml`` and ``JPEGImages/<id>.jpg``. Every object's box
  counts, difficult and truncated ones included (LOST/TokenCut without ``--no_hard``); the 1-based inclusive
  pixel indices become continuous boxes (xmin − 1, ymin − 1, xmax, ymax).
- ``coco20k``: ``train2014/`` images, ``annotations/instances_train2014.json`` and the list of 19,817 names
  (``train2014/COCO_train2014_<id>.jpg`` per line; ``filenames``, default ``ROOT/coco_20k_filenames.txt``; LOST
  ships it as ``datasets/coco_20k_filenames.txt``). Boxes: every annotation of the image with ``iscrowd`` ≠ 1,
  [x, y, x + w, y + h] each rounded half to even (Python's ``round``, as LOST's ``extract_gt_COCO``).
- ``generic``: ``ROOT/boxes.jsonl`` (or ROOT is that file), one image per line,
  ``{"image": "rel/path.jpg", "boxes": [[x1, y1, x2, y2], ...]}``: the path relative to the file's folder, boxes in
  continuous pixels of the stored image (a box over the whole W × H image is [0, 0, W, H]).

Images are read as stored (no EXIF rotation), like the annotations.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
import scipy.linalg
from scipy import ndimage
from torch import Tensor

from wrcli.defaults import DEFAULT_BACKBONE, DEFAULT_UPSAMPLER
from wrcli.errors import WrcError, first_line

from .datasets import Split, find_base, read_lines, file_key, read_rgb
from .dense import normalise_and_resize
from .features import SplitCache, build_cache
from .probes import upsampled
from .task import Bars, Measurement, RunOptions, run_task

if TYPE_CHECKING:
    from wrcli.session import Session

log = logging.getLogger(__name__)

DATASETS = ("voc07", "voc12", "coco20k", "generic")
METHODS = ("tokencut", "lost")
DEFAULT_IMSIZE = 448
DEFAULT_TAU = {"voc07": 0.2, "voc12": 0.2, "coco20k": 0.3, "generic": 0.2}
EPS = 1e-5
DEFAULT_K = 100
DENSE_LIMIT = 4096  # nodes solved by a dense eigh; lobpcg above
IOU_THRESHOLD = 0.5
COCO20K_LIST = "coco_20k_filenames.txt"
COCO_ANNOTATIONS = "annotations/instances_train2014.json"
GENERIC_FILE = "boxes.jsonl"
_LOBPCG_SEED = 0


# -- maths -------------------------------------------------------------------------------------------------

def cosine_matrix(features: Tensor) -> Tensor:
    """S = f̂ᵀ f̂ of per-cell unit features: (C,h,w) → (N,N) float64, N = h·w in row-major order."""
    flat = normalise_and_resize(features[None], tuple(features.shape[-2:]))[0].flatten(1).double()
    return flat.T @ flat


def ncut_vector(adjacency: Tensor, dense_limit: int = DENSE_LIMIT) -> Tensor:
    """The second-smallest generalised eigenvector of (D − A) v = λ D v, D = diag(A·1).

    adjacency (N,N) symmetric, positive degrees → v (N,) float64 with vᵀDv = 1 and its largest |v_i| positive.
    Solved as (I − D^-½ A D^-½) u = λ u, v = D^-½ u: for N ≤ ``dense_limit`` the two largest eigenpairs of
    D^-½ A D^-½ by LAPACK's ``syevr`` (``scipy.linalg.eigh``, ``subset_by_index``: deterministic), else
    ``torch.lobpcg`` (3 largest, fixed-seed start).
    """
    a = adjacency.double()
    n = a.shape[0]
    inv_sqrt = a.sum(dim=1).rsqrt()
    m = inv_sqrt[:, None] * a * inv_sqrt[None, :]
    if n <= dense_limit:  # the two largest of D^-½ A D^-½ = the two smallest of I − D^-½ A D^-½
        _, vectors = scipy.linalg.eigh(m.cpu().numpy(), subset_by_index=[n - 2, n - 1], driver="evr")
        u = torch.from_numpy(vectors[:, 0]).to(m.device)
    else:
        start = torch.randn(n, 3, generator=torch.Generator().manual_seed(_LOBPCG_SEED), dtype=m.dtype).to(m.device)
        values, vectors = torch.lobpcg(m, k=3, X=start, largest=True)
        u = vectors[:, torch.argsort(values, descending=True)[1]]
    v = inv_sqrt * u
    return -v if v[v.abs().argmax()] < 0 else v


def tokencut_partition(features: Tensor, tau: float, eps: float = EPS, dense_limit: int = DENSE_LIMIT
                       ) -> tuple[np.ndarray, int, Tensor]:
    """TokenCut's bipartition of a (C,h,w) feature map: (foreground (h,w) bool, seed index, v (N,)).

    A = 1 where S > τ else ε; v = :func:`ncut_vector`; foreground {v > mean v}, complemented when the seed
    argmax |v| is not in it.
    """
    sim = cosine_matrix(features)
    adjacency = torch.full_like(sim, eps).masked_fill_(sim > tau, 1.0)
    v = ncut_vector(adjacency, dense_limit)
    fg = v > v.mean()
    seed = int(v.abs().argmax())
    if not fg[seed]:
        fg = ~fg
    return fg.reshape(features.shape[-2:]).cpu().numpy(), seed, v


def lost_partition(features: Tensor, k: int = DEFAULT_K) -> tuple[np.ndarray, int]:
    """LOST's seed expansion on a (C,h,w) feature map: (foreground {M > 0} (h,w) bool, seed index).

    degree_i = #{j ≠ i : S_ij > 0}; seed = the lowest degree (stable: first index); of the k lowest-degree
    patches, those with S_seed,j > 0 are summed, M = Σ S_j,·.
    """
    sim = cosine_matrix(features)
    positive = sim > 0
    positive.fill_diagonal_(False)
    order = torch.argsort(positive.sum(dim=1), stable=True)
    seed = int(order[0])
    potentials = order[:k]
    similar = potentials[sim[seed, potentials] > 0]
    m = sim[similar].sum(dim=0)
    return (m > 0).reshape(features.shape[-2:]).cpu().numpy(), seed


def seed_component_cells(foreground: np.ndarray, seed: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) cells, max excluded, of the 4-connected component of ``foreground`` (h,w) holding the
    flat index ``seed`` (row-major)."""
    labels, _ = ndimage.label(foreground)
    row, col = np.unravel_index(seed, foreground.shape)
    component = labels[row, col]
    if component == 0:
        raise ValueError("the seed is not in the foreground")
    ys, xs = np.nonzero(labels == component)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def cells_to_image(cells: tuple[int, int, int, int], grid: int, imsize: int, width: int, height: int) -> np.ndarray:
    """Cells of a ``grid``² map over the warped ``imsize``² image → (x1, y1, x2, y2) float64 in the original
    width × height image: × c = imsize/grid, clipped to imsize, then × (W, H)/imsize."""
    c = imsize / grid
    x0, y0, x1, y1 = (min(v * c, imsize) for v in cells)
    sx, sy = width / imsize, height / imsize
    return np.array([x0 * sx, y0 * sy, x1 * sx, y1 * sy], dtype=np.float64)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (x1, y1, x2, y2) box with each of ``boxes`` (M,4): |B∩G| / |B∪G|, areas (x2−x1)(y2−y1).
    → (M,) float64."""
    box, boxes = np.asarray(box, dtype=np.float64), np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iw * ih
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return inter / union


def corloc(correct: Sequence[bool]) -> float:
    """100 × #correct / #images (images with ground truth only)."""
    if not correct:
        raise WrcError("no images with ground-truth boxes to evaluate")
    return 100.0 * sum(bool(c) for c in correct) / len(correct)


# -- data readers -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    """An image with its ground-truth boxes (M,4) float64 (x1, y1, x2, y2) in its stored pixels."""

    name: str
    image: Path
    boxes: np.ndarray


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str


Entry = Item | Skipped


def _item(name: str, image: Path, boxes: list[list[float]]) -> Entry:
    return Item(name, image, np.asarray(boxes, dtype=np.float64).reshape(-1, 4)) if boxes else \
        Skipped(name, "no ground-truth boxes")


def read_voc(root: str | Path, year: str) -> list[Entry]:
    """The VOC ``year`` trainval images in list order, with every object's box (see the module docstring)."""
    base = find_base(Path(root), ["", f"VOC{year}", f"VOCdevkit/VOC{year}"], "ImageSets/Main/trainval.txt",
                 f"Pascal VOC {year}", f"VOCdevkit/VOC{year}/ with ImageSets/Main/trainval.txt, Annotations/ and "
                 "JPEGImages/")
    return [_voc_entry(base, i) for i in read_lines(base / "ImageSets/Main/trainval.txt")]


def _voc_entry(base: Path, image_id: str) -> Entry:
    xml = base / "Annotations" / f"{image_id}.xml"
    try:
        tree = ET.parse(xml)
    except FileNotFoundError:
        return Skipped(image_id, f"no annotation {xml}")
    except (OSError, ET.ParseError) as exc:
        return Skipped(image_id, f"cannot read the annotation {xml}: {first_line(exc)}")
    boxes = []
    for obj in tree.getroot().iter("object"):
        try:
            bb = obj.find("bndbox")
            x1, y1, x2, y2 = (float(bb.findtext(tag)) for tag in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            return Skipped(image_id, f"{xml}: an object without a numeric bndbox (xmin, ymin, xmax, ymax)")
        boxes.append([x1 - 1, y1 - 1, x2, y2])
    return _item(image_id, base / "JPEGImages" / f"{image_id}.jpg", boxes)


def read_coco20k(root: str | Path, filenames: str | Path | None = None) -> list[Entry]:
    """The COCO20k images in the list's order, with their non-crowd boxes (see the module docstring)."""
    root = Path(root)
    names = _coco_names(root, filenames)
    annotations = root / COCO_ANNOTATIONS
    try:
        data = json.loads(annotations.read_text())
        images = {int(im["id"]): im for im in data["images"]}
        anns = data["annotations"]
    except OSError as exc:
        raise WrcError(f"cannot read the COCO annotations {annotations}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise WrcError(f"{annotations} is not a COCO instances file ({first_line(exc)})") from None
    boxes: dict[int, list[list[float]]] = {_coco_id(n): [] for n in names}
    bad: dict[int, str] = {}
    for ann in anns:
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if image_id not in boxes or ann.get("iscrowd", 0) == 1:
            continue
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            bad[image_id] = f"annotation {ann.get('id')} has no [x, y, w, h] bbox"
            continue
        boxes[image_id].append([round(x), round(y), round(x + w), round(y + h)])
    entries: list[Entry] = []
    for name in names:
        image_id = _coco_id(name)
        if image_id not in images or image_id in bad:
            entries.append(Skipped(name, bad.get(image_id, f"image id {image_id} is not in {annotations.name}")))
            continue
        path = root / name if "/" in name else root / "train2014" / name
        entries.append(_item(name, path, boxes[image_id]))
    return entries


def _coco_names(root: Path, filenames: str | Path | None) -> list[str]:
    path = Path(filenames) if filenames else root / COCO20K_LIST
    if not path.is_file():
        raise WrcError(f"the COCO20k list {path} does not exist: pass --filenames FILE (the 19,817 names, "
                       f"{COCO20K_LIST} from LOST's datasets/) or put it in {root}")
    names = read_lines(path)
    for name in names:
        _coco_id(name)
    if not names:
        raise WrcError(f"the COCO20k list {path} is empty")
    return names


def _coco_id(name: str) -> int:
    """COCO_train2014_000000123456.jpg → 123456."""
    try:
        return int(Path(name).stem.rsplit("_", 1)[-1])
    except ValueError:
        raise WrcError(f"{name!r} in the COCO20k list is not a COCO_train2014_<id>.jpg name") from None


def read_generic(root: str | Path) -> list[Entry]:
    """The images of a boxes file (``ROOT/boxes.jsonl`` or ROOT itself), in file order; a bad line is skipped."""
    root = Path(root)
    path = root / GENERIC_FILE if root.is_dir() else root
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise WrcError(f"cannot read the boxes file {path}: {exc.strerror or exc}") from None
    entries = [_generic_entry(path, line, n) for n, line in enumerate(lines, 1) if line.strip()]
    if not entries:
        raise WrcError(f"the boxes file {path} lists no images")
    return entries


def _generic_entry(path: Path, line: str, number: int) -> Entry:
    where = f"{path.name}:{number}"
    try:
        rec = json.loads(line)
        image, boxes = rec["image"], rec["boxes"]
    except ValueError as exc:
        return Skipped(where, f"not JSON ({first_line(exc)})")
    except (KeyError, TypeError):
        return Skipped(where, 'a line needs "image" and "boxes"')
    try:
        arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    except (TypeError, ValueError):
        return Skipped(str(image), f"{where}: boxes must be a list of [x1, y1, x2, y2]")
    if not np.isfinite(arr).all() or ((arr[:, 2] <= arr[:, 0]) | (arr[:, 3] <= arr[:, 1])).any():
        return Skipped(str(image), f"{where}: a box is empty or not finite (x2 > x1 and y2 > y1 are needed)")
    return _item(str(image), path.parent / str(image), arr.tolist())


def image_size(path: Path) -> tuple[int, int] | str:
    """(width, height) from the image's header, or the one-line reason it cannot be opened."""
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        return f"image {path} does not exist"
    except (OSError, ValueError) as exc:
        return f"cannot open the image {path}: {first_line(exc)}"


# -- features -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WarpedImage:
    """A sample of the feature cache: the image warped to ``side``² (bilinear, antialiased) and no target map
    (discovery reads only the images and features; its boxes stay in the task)."""

    name: str
    image: str
    side: int

    def load(self) -> tuple[Image.Image, None]:
        return read_rgb(self.image).resize((self.side, self.side), Image.Resampling.BILINEAR), None

    def fingerprint(self) -> list:
        return [self.name, *file_key(self.image), "warp", self.side]


# -- the task -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Found:
    """One upsampler's discovery in one image."""

    box: np.ndarray  # (x1, y1, x2, y2) in the original image
    iou: float  # best over the ground-truth boxes
    correct: bool


def discover(features: Tensor, method: str, *, tau: float, k: int, imsize: int, width: int, height: int,
             gt: np.ndarray) -> Found:
    """The box of ``method`` on one image's (C,g,g) features, in its width × height pixels, against ``gt``."""
    if method == "tokencut":
        fg, seed, _ = tokencut_partition(features, tau)
    else:
        fg, seed = lost_partition(features, k)
    box = cells_to_image(seed_component_cells(fg, seed), features.shape[-1], imsize, width, height)
    best = float(box_iou(box, gt).max())
    return Found(box, best, best >= IOU_THRESHOLD)


class DiscoveryTask:
    """CorLoc of TokenCut or LOST boxes per upsampler (:class:`~wrcli.eval.task.Task`)."""

    kind = "discovery"
    metrics = ("CorLoc",)

    def __init__(self, dataset: str, path: str, *, imsize: int = DEFAULT_IMSIZE, scale: int = 2,
                 method: str = "tokencut", tau: float | None = None, k: int = DEFAULT_K,
                 filenames: str | None = None, limit: int | None = None, cache: str | None = None) -> None:
        if dataset not in DATASETS:
            raise WrcError(f"--dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
        if method not in METHODS:
            raise WrcError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
        if imsize < 1 or scale < 1 or k < 1:
            raise WrcError("--imsize, --scale and --k must be at least 1")
        if limit is not None and limit < 1:
            raise WrcError("--limit must be at least 1")
        self.name, self.path, self.imsize, self.scale, self.method = dataset, path, imsize, scale, method
        self.tau = DEFAULT_TAU[dataset] if tau is None else tau
        self.k, self.filenames, self.limit, self.cache = k, filenames, limit, cache
        self.items: list[tuple[Item, tuple[int, int]]] = []  # with (width, height)
        self.skipped: list[Skipped] = []
        self.listed = 0

    def read_entries(self) -> list[Entry]:
        if self.name in ("voc07", "voc12"):
            return read_voc(self.path, "2007" if self.name == "voc07" else "2012")
        if self.name == "coco20k":
            return read_coco20k(self.path, self.filenames)
        return read_generic(self.path)

    def read(self) -> None:
        entries = self.read_entries()
        self.listed = len(entries)
        entries = entries[:self.limit] if self.limit else entries
        self.items, self.skipped = [], []
        for entry in entries:
            size = entry.reason if isinstance(entry, Skipped) else image_size(entry.image)
            if isinstance(size, str):
                self.skipped.append(Skipped(entry.name, size))
                log.warning("skipping %s: %s", entry.name, size)
            else:
                self.items.append((entry, size))
        if not self.items:
            raise WrcError(f"no images with ground-truth boxes in {self.path} ({len(self.skipped)} skipped"
                           + (f", e.g. {self.skipped[0].name}: {self.skipped[0].reason})" if self.skipped else ")"))

    @contextmanager
    def features(self, session: Session, bars: Bars) -> Iterator[SplitCache]:
        """The warped images and backbone features of every item, in ``cache`` or a temporary folder."""
        patch = session.backbone.patch_size
        if self.imsize % patch:
            raise WrcError(f"--imsize {self.imsize} is not a multiple of the patch size {patch}")
        samples = tuple(WarpedImage(item.name, str(item.image), self.imsize) for item, _ in self.items)
        with tempfile.TemporaryDirectory(prefix="wrc-eval-") if self.cache is None else nullcontext(self.cache) as root:
            yield build_cache(root, f"discovery-{self.name}", Split("warped", samples), size=self.imsize, flip=False,
                              backbone=session.backbone, device=session.device, target_dtype=None,
                              progress=bars.enabled, precision=session.precision)

    def measure(self, session: Session, features: SplitCache, bars: Bars) -> Measurement:
        grid = self.grid(session)
        labels = list(session.upsamplers)
        seconds = dict.fromkeys(labels, 0.0)
        found: dict[str, list[Found]] = {label: [] for label in labels}
        bar = bars(len(self.items), f"eval discovery {self.name}")
        for i, (item, (width, height)) in enumerate(self.items):
            pixels, feats, _ = features.batch(torch.tensor([i]), None, session.device)
            for label, model in session.upsamplers.items():
                began = time.monotonic()
                maps = upsampled(model, session.backbone, pixels, feats, (grid, grid), session.precision)[0].float()
                found[label].append(discover(maps, self.method, tau=self.tau, k=self.k, imsize=self.imsize,
                                             width=width, height=height, gt=item.boxes))
                seconds[label] += time.monotonic() - began
            bar.advance()
        bar.close()
        results = {label: {"CorLoc": corloc([f.correct for f in found[label]]),
                           "correct": sum(f.correct for f in found[label]), "images": len(self.items),
                           "seconds": round(seconds[label], 2)} for label in labels}
        per_image = [{"image": item.name, "size": list(size), "gt_boxes": item.boxes.round(2).tolist(),
                      "found": {label: {"box": [round(float(v), 2) for v in found[label][i].box],
                                        "iou": round(found[label][i].iou, 4), "correct": found[label][i].correct}
                                for label in labels}}
                     for i, (item, size) in enumerate(self.items)]
        skipped = [{"image": s.name, "reason": s.reason} for s in self.skipped]
        return Measurement(results, {"per_image": per_image, "skipped": skipped})

    def grid(self, session: Session) -> int:
        return self.scale * (self.imsize // session.backbone.patch_size)

    def protocol(self, session: Session) -> dict[str, Any]:
        grid = self.grid(session)
        method = ({"tau": self.tau, "eps": EPS, "graph": "A = 1 where cosine > tau else eps",
                   "eigenvector": "second-smallest of (D - A) v = lambda D v via I - D^-1/2 A D^-1/2; "
                                  f"LAPACK syevr (scipy.linalg.eigh, float64, two eigenpairs) up to {DENSE_LIMIT} "
                                  "nodes, torch.lobpcg (k=3, fixed-seed start) above; sign: largest |v| positive",
                   "partition": "v > mean(v), complemented when the seed argmax |v| is outside",
                   "eigen_solver": "eigh" if grid * grid <= DENSE_LIMIT else "lobpcg"}
                  if self.method == "tokencut" else
                  {"k": self.k, "degree": "#{j != i: cosine > 0}, lowest first (stable sort)",
                   "expansion": "M = sum of cosine rows of the k lowest-degree patches with cosine(seed, j) > 0; "
                                "foreground M > 0"})
        return {"dataset": self.name, "method": self.method, "imsize": self.imsize, "scale": self.scale,
                "grid": [grid, grid], "cell_px": self.imsize / grid,
                "resize": "warp to imsize x imsize (Pillow bilinear, antialiased)",
                "features": "final block normalised patch tokens; upsampler to the scale x token grid; per-cell L2 "
                            "normalisation; cosine similarity (float64)",
                **method,
                "box": "4-connected component holding the seed (scipy.ndimage.label); cells [min, max+1) x cell_px, "
                       "clipped to imsize, mapped to the original image",
                "metric": f"CorLoc: % of images with ground truth whose box has IoU >= {IOU_THRESHOLD} with any "
                          "ground-truth box; IoU of continuous boxes, area (x2-x1)(y2-y1)"}

    def dataset(self) -> dict[str, Any]:
        notes: dict[str, Any] = {}
        if self.name in ("voc07", "voc12"):
            notes["boxes"] = "every object, difficult and truncated included; (xmin-1, ymin-1, xmax, ymax)"
        elif self.name == "coco20k":
            notes["boxes"] = "annotations with iscrowd != 1, [x, y, x+w, y+h] rounded half to even"
            notes["filenames"] = str(self.filenames or Path(self.path) / COCO20K_LIST)
        return {"kind": self.name, "path": str(self.path), "listed": self.listed, "limit": self.limit,
                "images": len(self.items), "skipped": len(self.skipped), **notes}


def discovery_task(dataset: str, path: str, *, imsize: int = DEFAULT_IMSIZE, scale: int = 2, method: str = "tokencut",
                   tau: float | None = None, k: int = DEFAULT_K, filenames: str | None = None,
                   limit: int | None = None, cache: str | None = None) -> DiscoveryTask:
    """The task for ``--dataset``: ``tau`` defaults to 0.2 (VOC, generic) or 0.3 (COCO20k); ``k`` is LOST's;
    ``filenames`` is the COCO20k list; ``cache`` a feature cache folder (None: a temporary one)."""
    return DiscoveryTask(dataset, path, imsize=imsize, scale=scale, method=method, tau=tau, k=k,
                         filenames=filenames, limit=limit, cache=cache)


def run_discovery(dataset: str, path: str, *, upsamplers: str | Sequence[str] = f"bilinear,{DEFAULT_UPSAMPLER}",
                  backbone: str = DEFAULT_BACKBONE, backbone_weights: str | None = None, device: str = "auto",
                  progress: bool = True, precision: str = "auto", command: str | None = None,
                  **settings: Any) -> dict[str, Any]:
    """Every upsampler on the same images and backbone features; the report. ``settings`` are
    :func:`discovery_task`'s."""
    task = discovery_task(dataset, path, **settings)
    options = RunOptions(upsamplers, backbone, backbone_weights, device, progress, precision)
    return run_task(task, options, command)
