"""Dataset readers for the probes: (image, target map) samples per split, from the layouts the datasets ship in.

Segmentation (targets are class indices, 255 = ignore):

- ``voc``: Pascal VOC 2012 — ``VOC2012/`` (or ``VOCdevkit/``, or its parent) with ``JPEGImages/<id>.jpg``,
  ``SegmentationClass/<id>.png`` (palette indices; 255 marks object borders) and
  ``ImageSets/Segmentation/{train,val}.txt`` (1464 / 1449 images); 21 classes.
- ``ade20k``: ``ADEChallengeData2016/`` with ``images/{training,validation}/*.jpg`` and
  ``annotations/{training,validation}/<stem>.png``; 151 classes, 0 = "other" counts as a class (no ignore).
  Class names from ``objectInfo150.txt`` (or ``.csv``) when present.
- ``cityscapes``: ``leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png`` and
  ``gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png``; label ids mapped to the 19 train ids, others 255.
- ``coco27``: COCO-Stuff with the curated IIC/STEGO lists — ``cocostuff/`` holding
  ``curated/{train2017,val2017}/Coco164kFull_Stuff_Coarse.txt`` (image ids), ``images/<split>/<id>.jpg`` and
  ``annotations/<split>/<id>.png`` (the stuffthingmaps: fine ids 0..181, 255 unlabelled), mapped to 27 coarse
  classes (12 thing, then 15 stuff supercategories).
- ``generic``: ``classes.txt`` (one name per line; line i is class i), ``images/{train,val}/<stem>.<ext>`` and
  ``masks/{train,val}/<stem>.png`` (single-channel class indices, 255 = ignore).

Depth (targets in metres, 0 = no measurement):

- ``nyu``: the NYUv2 labelled set ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3, read with h5py) with the standard
  795 train / 654 test split from ``splits.mat`` (``trainNdxs``/``testNdxs``, needs scipy) or from ``train.txt`` and
  ``test.txt`` beside it (1-based image numbers, one per line).
- ``generic``: ``images/{train,val}/<stem>.<ext>`` and ``depth/{train,val}/<stem>.png`` (16-bit, divided by the
  depth scale, default 1000: millimetres) or ``<stem>.npy`` (float metres).

Images are read as stored (no EXIF rotation: the label maps match the stored pixels).

A listed sample whose image or label file is missing refuses the dataset (the probes train on it), except in a
lenient listing (``open_seg(..., lenient=True)``, for an evaluation): there it is left out of the split's samples and
kept in ``Split.missing`` with its reason, and a VOC root without ``train.txt`` has an empty train split.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from wrcli.errors import WrcError

IGNORE = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
# Cityscapes label id of each train id 0..18 (cityscapesScripts' labels.py); every other id is ignored.
CITYSCAPES_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
COCO27_CLASSES = (
    "electronic", "appliance", "food", "furniture", "indoor", "kitchen", "accessory", "animal", "outdoor",
    "person", "sports", "vehicle", "ceiling", "floor", "food-stuff", "furniture-stuff", "raw-material", "textile",
    "wall", "window", "building", "ground", "plant", "sky", "solid", "structural", "water",
)
# Coarse class (base-27 digit 0-9a-q) of each COCO-Stuff fine id 0..181, the COCO-Stuff label hierarchy as the
# IIC/STEGO/FeatUp probes use it: e.g. fine 0 (person) → 9, 156 (sky-other) → 23 (sky).
_COCO_FINE_TO_COARSE = (
    "9bbbbbbbb888888777777777766666666aaaaaaaaaa5555555522222222223333333333000000111111444444"
    "44hhmkkmfpgdcchhnffhflfpdddddmqeefmllokmfhgfmolhpglhmgllplqlokhelqfnklofompfkhhmeiiiiiiiqqjjo"
)


def label_lut(pairs: Sequence[tuple[int, int]]) -> tuple[int, ...]:
    """A 256-entry label lookup table: ``source → class`` for the given pairs, 255 for every other value."""
    table = [IGNORE] * 256
    for src, dst in pairs:
        table[src] = dst
    return tuple(table)


CITYSCAPES_LUT = label_lut([(label_id, train_id) for train_id, label_id in enumerate(CITYSCAPES_IDS)])
COCO27_LUT = label_lut([(fine, int(c, 27)) for fine, c in enumerate(_COCO_FINE_TO_COARSE)])


def file_key(path: str) -> list:
    st = os.stat(path)
    return [path, st.st_size, st.st_mtime_ns]


def read_rgb(path: str | os.PathLike) -> Image.Image:
    """An image file as RGB; an unreadable one is a WrcError naming it."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise WrcError(f"cannot read the image {path}: {exc}") from None


@dataclass(frozen=True)
class LabelSample:
    """An image file and its class-index PNG, optionally mapped through a 256-entry lookup table."""

    name: str
    image: str
    target: str
    lut: tuple[int, ...] | None = None

    def load(self) -> tuple[Image.Image, np.ndarray]:
        with Image.open(self.target) as lab:
            if lab.mode not in ("L", "P"):
                raise ValueError(f"label map {self.target} has mode {lab.mode}; a single-channel class-index PNG (L or P) is needed")
            labels = np.asarray(lab, dtype=np.uint8)
        if self.lut is not None:
            labels = np.asarray(self.lut, dtype=np.uint8)[labels]
        return read_rgb(self.image), labels

    def fingerprint(self) -> list:
        return [self.name, *file_key(self.image), *file_key(self.target), self.lut is not None]


@dataclass(frozen=True)
class DepthSample:
    """An image file and its depth map: a 16-bit PNG in units of 1/``scale`` metre, or a ``.npy`` in metres."""

    name: str
    image: str
    target: str
    scale: float = 1000.0

    def load(self) -> tuple[Image.Image, np.ndarray]:
        if self.target.endswith(".npy"):
            depth = np.load(self.target).astype(np.float32)
        else:
            with Image.open(self.target) as img:
                depth = np.asarray(img, dtype=np.float32) / self.scale
        if depth.ndim != 2:
            raise ValueError(f"depth map {self.target} has shape {depth.shape}; a single-channel map is needed")
        return read_rgb(self.image), depth

    def fingerprint(self) -> list:
        return [self.name, *file_key(self.image), *file_key(self.target), self.scale]


@dataclass(frozen=True)
class NyuSample:
    """Image ``index`` (0-based) of the NYUv2 labelled set: RGB and depth in metres, 480 × 640."""

    name: str
    mat: str
    index: int

    def load(self) -> tuple[Image.Image, np.ndarray]:
        import h5py

        with h5py.File(self.mat, "r") as f:  # MATLAB stores (N, 3, W, H) and (N, W, H)
            rgb = np.ascontiguousarray(f["images"][self.index].transpose(2, 1, 0))
            depth = np.ascontiguousarray(f["depths"][self.index].T, dtype=np.float32)
        return Image.fromarray(rgb), depth

    def fingerprint(self) -> list:
        return [self.name, *file_key(self.mat), self.index]


Sample = LabelSample | DepthSample | NyuSample


@dataclass(frozen=True)
class Split:
    """The samples of a split whose files exist; ``missing``: (name, reason) of the listed ones lacking a file
    (only in a lenient listing)."""

    name: str
    samples: tuple[Sample, ...]
    missing: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ProbeData:
    """A dataset ready for a probe: its train and evaluation splits (and the class names for segmentation)."""

    name: str
    root: Path
    train: Split
    val: Split
    classes: tuple[str, ...] = ()
    ignore_index: int | None = IGNORE
    notes: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {
            "name": self.name, "root": str(self.root), "classes": len(self.classes) or None,
            "class_names": list(self.classes) or None, "ignore_index": self.ignore_index if self.classes else None,
            "train": {"split": self.train.name, "images": len(self.train.samples)},
            "val": {"split": self.val.name, "images": len(self.val.samples)}, **self.notes,
        }

    def limited(self, limit: int | None) -> ProbeData:
        """The first ``limit`` images of each split (all with None)."""
        if limit is None:
            return self
        train, val = (Split(s.name, s.samples[:limit]) for s in (self.train, self.val))
        return ProbeData(self.name, self.root, train, val, self.classes, self.ignore_index, {**self.notes, "limit": limit})


def find_base(root: Path, candidates: Sequence[str], marker: str, what: str, expected: str) -> Path:
    """The first ``root/candidate`` that contains ``marker``; WrcError naming the expected layout otherwise."""
    if not root.exists():
        raise WrcError(f"dataset folder {root} does not exist")
    for c in candidates:
        if (root / c / marker).exists():
            return root / c
    raise WrcError(f"{root} is not a {what} folder: expected {expected}")


def read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _checked(name: str, samples: list[Sample], what: str, lenient: bool = False) -> Split:
    """The split of the listed ``samples``: WrcError when none is listed or (unless ``lenient``) naming the first
    missing file; ``lenient`` keeps the samples whose files exist and the others, with the reason, in ``missing``."""
    if not samples:
        raise WrcError(f"{what}: split {name} has no images")
    present: list[Sample] = []
    missing: list[tuple[str, str]] = []
    for s in samples:
        files = (("image", getattr(s, "image", None)), ("label", getattr(s, "target", None)))
        absent = next(((kind, path) for kind, path in files if path is not None and not os.path.isfile(path)), None)
        if absent is None:
            present.append(s)
        elif lenient:
            missing.append((s.name, f"{absent[0]} file {absent[1]} is missing"))
        else:
            raise WrcError(f"{what}: {absent[1]} (listed in split {name}) does not exist")
    return Split(name, tuple(present), tuple(missing))


def voc(root: Path, *, lenient: bool = False) -> ProbeData:
    base = find_base(root, ["", "VOC2012", "VOCdevkit/VOC2012"], "ImageSets/Segmentation", "Pascal VOC 2012",
                 "VOC2012/ with JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/{train,val}.txt")

    def split(name: str) -> Split:
        ids = read_lines(base / "ImageSets/Segmentation" / f"{name}.txt")
        return _checked(name, [LabelSample(i, str(base / "JPEGImages" / f"{i}.jpg"), str(base / "SegmentationClass" / f"{i}.png"))
                               for i in ids], "Pascal VOC", lenient)

    has_train = (base / "ImageSets/Segmentation/train.txt").is_file()
    train = split("train") if has_train or not lenient else Split("train", ())
    return ProbeData("voc", base, train, split("val"), VOC_CLASSES)


def ade20k(root: Path, *, lenient: bool = False) -> ProbeData:
    base = find_base(root, ["", "ADEChallengeData2016"], "annotations/training", "ADE20K",
                 "ADEChallengeData2016/ with images/{training,validation}/ and annotations/{training,validation}/")

    def split(name: str) -> Split:
        images = sorted(p for p in (base / "images" / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        return _checked(name, [LabelSample(p.stem, str(p), str(base / "annotations" / name / f"{p.stem}.png")) for p in images], "ADE20K", lenient)

    return ProbeData("ade20k", base, split("training"), split("validation"), _ade_classes(base))


def _ade_classes(base: Path) -> tuple[str, ...]:
    """"other" and the 150 names of objectInfo150 (.txt: tab-separated, .csv), or numbered names without it."""
    for info, delimiter in ((base / "objectInfo150.txt", "\t"), (base / "objectInfo150.csv", ",")):
        if info.is_file():
            rows = list(csv.reader(info.read_text().splitlines()[1:], delimiter=delimiter))
            names = [re.split("[;,]", r[-1])[0].strip() for r in rows if r]
            if len(names) == 150:
                return ("other", *names)
    return ("other", *(f"class {i}" for i in range(1, 151)))


def cityscapes(root: Path, *, lenient: bool = False) -> ProbeData:
    base = find_base(root, ["", "cityscapes"], "gtFine", "Cityscapes",
                 "leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and gtFine/{train,val}/<city>/*_gtFine_labelIds.png")

    def split(name: str) -> Split:
        images = sorted((base / "leftImg8bit" / name).glob("*/*_leftImg8bit.png"))
        samples = []
        for p in images:
            stem = p.name.removesuffix("_leftImg8bit.png")
            label = base / "gtFine" / name / p.parent.name / f"{stem}_gtFine_labelIds.png"
            samples.append(LabelSample(stem, str(p), str(label), CITYSCAPES_LUT))
        return _checked(name, samples, "Cityscapes", lenient)

    return ProbeData("cityscapes", base, split("train"), split("val"), CITYSCAPES_CLASSES)


def coco27(root: Path, list_name: str = "Coco164kFull_Stuff_Coarse.txt", *, lenient: bool = False) -> ProbeData:
    base = find_base(root, ["", "cocostuff"], "curated", "COCO-Stuff-27",
                 f"cocostuff/ with curated/{{train2017,val2017}}/{list_name}, images/<split>/<id>.jpg and annotations/<split>/<id>.png")

    def split(name: str) -> Split:
        listing = base / "curated" / name / list_name
        if not listing.is_file():
            raise WrcError(f"COCO-Stuff-27: the curated image list {listing} does not exist")
        return _checked(name, [LabelSample(i, str(base / "images" / name / f"{i}.jpg"), str(base / "annotations" / name / f"{i}.png"), COCO27_LUT)
                               for i in read_lines(listing)], "COCO-Stuff-27", lenient)

    return ProbeData("coco27", base, split("train2017"), split("val2017"), COCO27_CLASSES, notes={"list": list_name})


def paired_split(root: Path, target_dir: str, suffixes: Sequence[str], split: str, make: Callable[[str, str, str], Sample],
                 what: str, lenient: bool = False) -> Split:
    """Images of ``images/<split>/`` paired by stem with ``<target_dir>/<split>/<stem><suffix>`` (``lenient``: see
    :func:`_checked`)."""
    folder = root / "images" / split
    if not folder.is_dir():
        raise WrcError(f"{what}: {folder} does not exist (expected images/{{train,val}}/ and {target_dir}/{{train,val}}/)")
    samples = []
    for p in sorted(q for q in folder.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES):
        found = [root / target_dir / split / f"{p.stem}{s}" for s in suffixes]
        target = next((t for t in found if t.is_file()), found[0])
        samples.append(make(p.stem, str(p), str(target)))
    return _checked(split, samples, what, lenient)


def generic_seg(root: Path, *, lenient: bool = False) -> ProbeData:
    classes_file = root / "classes.txt"
    if not classes_file.is_file():
        if not root.exists():
            raise WrcError(f"dataset folder {root} does not exist")
        raise WrcError(f"{root} is not a generic segmentation folder: expected classes.txt, images/{{train,val}}/ and masks/{{train,val}}/")
    classes = tuple(read_lines(classes_file))
    if not 1 <= len(classes) <= 255:
        raise WrcError(f"{classes_file} must name 1 to 255 classes (one per line), found {len(classes)}")
    train, val = (paired_split(root, "masks", [".png"], name, LabelSample, "generic segmentation", lenient)
                  for name in ("train", "val"))
    return ProbeData("generic", root, train, val, classes)


def nyu(root: Path) -> ProbeData:
    mat = root if root.suffix == ".mat" else root / "nyu_depth_v2_labeled.mat"
    if not mat.is_file():
        raise WrcError(f"NYUv2: {mat} does not exist (expected nyu_depth_v2_labeled.mat, the labelled set, with splits.mat or train.txt/test.txt beside it)")
    train, test = _nyu_split(mat.parent)
    train_split, test_split = (Split(name, tuple(NyuSample(f"nyu{i:04d}", str(mat), i - 1) for i in numbers))
                               for name, numbers in (("train", train), ("test", test)))
    return ProbeData("nyu", mat, train_split, test_split, ignore_index=None)


def _nyu_split(folder: Path) -> tuple[list[int], list[int]]:
    """1-based train and test image numbers from splits.mat or train.txt/test.txt."""
    txt = folder / "train.txt", folder / "test.txt"
    if all(p.is_file() for p in txt):
        try:
            return tuple([int(v) for v in p.read_text().split()] for p in txt)  # type: ignore[return-value]
        except ValueError as e:
            raise WrcError(f"NYUv2: train.txt/test.txt in {folder} must hold 1-based image numbers: {e}") from None
    splits = folder / "splits.mat"
    if not splits.is_file():
        raise WrcError(f"NYUv2: no split in {folder}: put splits.mat (trainNdxs/testNdxs) or train.txt and test.txt there")
    try:
        from scipy.io import loadmat
    except ImportError:
        raise WrcError("NYUv2: reading splits.mat needs scipy (pip install scipy), or write train.txt/test.txt with 1-based image numbers") from None
    m = loadmat(splits)
    return [int(v) for v in m["trainNdxs"].ravel()], [int(v) for v in m["testNdxs"].ravel()]


def generic_depth(root: Path, scale: float = 1000.0) -> ProbeData:
    if not (root / "depth").is_dir():
        if not root.exists():
            raise WrcError(f"dataset folder {root} does not exist")
        raise WrcError(f"{root} is not a generic depth folder: expected images/{{train,val}}/ and depth/{{train,val}}/ (16-bit PNG or .npy)")
    def make(name: str, image: str, target: str) -> DepthSample:
        return DepthSample(name, image, target, scale)

    train, val = (paired_split(root, "depth", [".png", ".npy"], name, make, "generic depth") for name in ("train", "val"))
    return ProbeData("generic", root, train, val, ignore_index=None, notes={"depth_scale": scale})


SEG_READERS: dict[str, Callable[..., ProbeData]] = {  # (root, *, lenient=False)
    "voc": voc, "ade20k": ade20k, "cityscapes": cityscapes, "coco27": coco27, "generic": generic_seg,
}
_SEG_MARKERS = {
    "voc": ["ImageSets/Segmentation", "VOC2012", "VOCdevkit"], "ade20k": ["annotations/training", "ADEChallengeData2016"],
    "cityscapes": ["gtFine"], "coco27": ["curated", "cocostuff"], "generic": ["classes.txt"],
}


def open_seg(kind: str, root: str | os.PathLike, lenient: bool = False) -> ProbeData:
    """The segmentation dataset ``kind`` (or ``auto``: the first layout found) at ``root``; ``lenient`` lists the
    samples missing a file in ``Split.missing`` instead of refusing (see the module docstring)."""
    root = Path(root)
    if kind == "auto":
        kind = next((k for k, marks in _SEG_MARKERS.items() if any((root / m).exists() for m in marks)), "")
        if not kind:
            if not root.exists():
                raise WrcError(f"dataset folder {root} does not exist")
            raise WrcError(f"{root}: no known segmentation layout (VOC2012, ADEChallengeData2016, Cityscapes gtFine, "
                           "cocostuff curated lists, or classes.txt + images/ + masks/); pass --dataset")
    if kind not in SEG_READERS:
        raise WrcError(f"unknown segmentation dataset {kind!r}; use one of auto, {', '.join(SEG_READERS)}")
    return SEG_READERS[kind](root, lenient=lenient)


def open_depth(kind: str, root: str | os.PathLike, scale: float = 1000.0) -> ProbeData:
    """The depth dataset ``kind`` (``nyu``, ``generic`` or ``auto``) at ``root``."""
    root = Path(root)
    if kind == "auto":
        kind = "nyu" if root.suffix == ".mat" or (root / "nyu_depth_v2_labeled.mat").exists() else "generic"
    if kind == "nyu":
        return nyu(root)
    if kind == "generic":
        return generic_depth(root, scale)
    raise WrcError(f"unknown depth dataset {kind!r}; use auto, nyu or generic")
