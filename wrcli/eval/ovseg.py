"""``wrc eval ovseg``: training-free open-vocabulary segmentation, where the (upsampled) VFM features decide the
spatial grouping and CLIP names the groups.

Methods (``--method``):

- ``proxyclip`` (ProxyCLIP, ECCV'24, mc-lan/ProxyCLIP @e7b767f; what LoftUp and NAF use to compare upsamplers).
  CLIP's blocks 1..L−1 run as usual; block L is replaced by a proxy attention, without residual and without FFN:
  with the VFM's tokens of the crop upsampled ×``scale`` (the upsampler under test) to an H×W grid, f̂_i their
  L2-normalised vectors (N = H·W), ``A = f̂ᵀf̂`` (N, N), ``m = mean(A)`` over all N² entries (= ‖Σ_i f̂_i‖²/N²),
  ``S = γ (A − β m)``, entries ``S < 0`` set to −∞, ``W = softmax_rows(S)``; the values
  ``V = W_v ln_1(x) + b_v`` of CLIP's patch tokens (the class token dropped) are resized bilinearly
  (align_corners=False) from CLIP's grid to H×W, and ``z = proj(ln_post(out_proj(W V)))``. β = 1.2, γ = 3.
  The attention is shared by all heads (the same W for every head equals one W on all channels). ``W V`` is
  computed in blocks of query rows holding at most :data:`AFFINITY_CHUNK` = 2²⁴ entries of A (64 MiB in
  float32; S, its mask and W: about 2.3 such buffers, 150 MiB), never the dense N² matrix: at the default ×8 on a 24² DINOv2
  grid N = 192² and A would have 1.4·10⁹ entries. A row with no entry ≥ 0 (only when m ≥ 1/β; ProxyCLIP gives
  NaN there) attends to itself. ``scale`` 1 leaves the VFM grid as it is: ProxyCLIP as published, whatever the
  upsampler.
- ``maskclip`` (MaskCLIP, ECCV'22, as JAFAR evaluates it): dense CLIP features from the last block's value path,
  q/k skipped, no residual, no FFN: ``z = proj(ln_post(out_proj(V)))`` on CLIP's grid. JAFAR upsamples these
  with an upsampler trained on CLIP; wrcli's learned upsamplers are trained for the VFM (the backbone), so only
  backbone-agnostic ones (the interpolations) apply: they upsample z ×``scale``. A learned one is refused with
  one line. The VFM is not used by this method.

With the identity proxy affinity (W = I, grids equal) ProxyCLIP equals MaskCLIP.

Inference (both methods, ProxyCLIP's settings): the image is resized (bilinear, no antialiasing, like mmcv's
cv2 resize) so that its short side is ``imsize`` and its long side at most 2048 (mmseg ``Resize(scale=(2048,
imsize), keep_ratio=True)``); slide windows of ``crop``² with ``stride`` (mmseg's grid: ⌈(H − crop)/stride⌉ + 1
rows, the last window moved back inside the image); a window smaller than the crop is padded, centred, to a
multiple of lcm(VFM patch, CLIP patch) with CLIP's mean colour. Per window: the VFM sees the crop normalised
with its mean/std, CLIP with CLIP's (OpenAI) mean/std; logits ``ℓ_q = ⟨ẑ, t_q⟩`` (cosine with the unit text
embedding t_q of each query name, :func:`wrcli.eval.clip.text_embeddings` with the 80 ImageNet templates) are
resized bilinearly to the window, the padding cut; overlapping windows are averaged; the average is resized
bilinearly to the original label size. Then ``p = softmax_q(40 ℓ)``, a class takes the best of its synonyms
(max over its queries), the prediction is the argmax class, and pixels whose best probability is below
``prob_thd`` become class 0 (background). Presets per class list (``imsize``, ``crop``, ``stride``,
``prob_thd``): VOC21 336/336/112/0.2, COCO-Object 0.25, Context60 0.15, others 0; ADE150 448 with crop 336,
Cityscapes 448 with crop 224.

Features: per image, the resized image, the VFM tokens of every window and CLIP's values V of every window are
computed once, stored in float16 (as the probes' cache; ProxyCLIP itself runs in fp16), and shared by every
upsampler. ``cache=FOLDER`` keeps them across runs (``<folder>/ovseg-<dataset>-<key>/<index>.safetensors``,
keyed like :mod:`wrcli.eval.features`: sizes, backbone, CLIP, and each file checked against its sample's
fingerprint), else a temporary folder; the text embeddings (minutes of prompts on a CPU) are kept there too.
Times in the results: ``seconds_per_image`` of each upsampler's method (features excluded; the report's
dataset section gives ``feature_seconds_per_image``).

Metrics: one confusion matrix over the split at the labels' resolution, ignore 255 (:mod:`wrcli.eval.metrics`):
mIoU over the classes present in labels or predictions, aAcc = pixel accuracy, both in %; IoU per class.
A listed sample whose image or label file is missing, that cannot be read, whose label map does not match its
image or holds values outside the class list is left out with a one-line reason in the report
(``dataset.skipped``); the run goes on (``images`` = ``evaluated`` + skipped; ``limit`` counts the samples whose
files exist). Only the val split is read: a VOC root needs no ``train.txt``.

Class lists (``--classes``, see :mod:`wrcli.eval.clip`) and labels: ``voc21`` on VOC as stored; ``voc20`` on VOC
and ``ade150`` on ADE20K drop label 0 (0 → 255, k → k − 1, mmseg's ``reduce_zero_label``); ``cocostuff171`` and
``cocoobject`` on the COCO-Stuff-164k stuffthingmaps (fine ids 0..181: the 171 used ids renumbered in order;
COCO-Object: the 80 things → 1..80, stuff → 0 background); any other list must have as many classes as the
dataset and is used as stored (``generic`` folders for Pascal Context 59/60, labels 0..58 / 0..59).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from wrcli.defaults import DEFAULT_BACKBONE, DEFAULT_UPSAMPLER
from wrcli.errors import WrcError, first_line
from wrcli.files import atomic_write, remove_stale_tmps, write_text_atomic

from . import datasets
from .clip import (
    ClassList,
    check_clip_model,
    class_list,
    describe_clip,
    imagenet_templates,
    load_clip,
    text_embeddings,
    tokenizer_for,
)
from .datasets import IGNORE, LabelSample, ProbeData, Sample, open_seg
from .metrics import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy
from .task import Bars, Measurement, RunOptions, run_task

if TYPE_CHECKING:
    from torch import nn

    from wrcli.session import Session

log = logging.getLogger(__name__)

METHODS = ("proxyclip", "maskclip")
DATASETS = ("auto", "voc", "ade20k", "cityscapes", "cocostuff", "generic")
METRICS = ("mIoU", "aAcc")
DEFAULT_SCALE = 8
BETA, GAMMA, LOGIT_SCALE = 1.2, 3.0, 40.0
LONG_SIDE = 2048
AFFINITY_CHUNK = 1 << 24  # entries of the affinity held at once (64 MiB in float32)
CACHE_FORMAT = 1
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's normalisation
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preset:
    imsize: int  # short side
    crop: int
    stride: int
    prob_thd: float


PRESETS = {
    "voc21": Preset(336, 336, 112, 0.2), "voc20": Preset(336, 336, 112, 0.0),
    "context59": Preset(336, 336, 112, 0.0), "context60": Preset(336, 336, 112, 0.15),
    "cocostuff171": Preset(336, 336, 112, 0.0), "cocoobject": Preset(336, 336, 112, 0.25),
    "ade150": Preset(448, 336, 112, 0.0), "cityscapes": Preset(448, 224, 112, 0.0),
}
OTHER_PRESET = Preset(336, 336, 112, 0.0)
DEFAULT_CLASSES = {"voc": "voc21", "ade20k": "ade150", "cityscapes": "cityscapes", "cocostuff": "cocostuff171"}

# COCO-Stuff-164k stuffthingmaps: the 11 fine ids (0-based) no annotation uses; the other 171 renumbered in order
_COCO_UNUSED = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
_COCO_USED = tuple(i for i in range(182) if i not in _COCO_UNUSED)
COCO171_LUT = datasets.label_lut([(fine, k) for k, fine in enumerate(_COCO_USED)])
COCO_OBJECT_LUT = datasets.label_lut([(fine, k + 1 if fine <= 90 else 0) for k, fine in enumerate(_COCO_USED)])
REDUCE_ZERO_LUT = datasets.label_lut([(k, k - 1) for k in range(1, 255)])
LABEL_MAPS = {("voc", "voc20"): REDUCE_ZERO_LUT, ("ade20k", "ade150"): REDUCE_ZERO_LUT,
              ("cocostuff", "cocostuff171"): COCO171_LUT, ("cocostuff", "cocoobject"): COCO_OBJECT_LUT}

LABEL_MAP_NOTES = {"voc20": "0 -> 255, k -> k-1", "ade150": "0 -> 255, k -> k-1",
                   "cocostuff171": "the 171 used fine ids renumbered in order",
                   "cocoobject": "the 80 thing ids -> 1..80, stuff -> 0"}


# -- maths ---------------------------------------------------------------------------------------------------

def proxy_attention(guide: Tensor, values: Tensor, beta: float = BETA, gamma: float = GAMMA,
                    chunk: int = AFFINITY_CHUNK) -> Tensor:
    """ProxyCLIP's attention of ``values`` by the affinity of ``guide`` (see the module docstring).

    guide (C, H, W), values (D, H, W) → (D, H, W): ``W V`` with ``W = softmax_rows(mask(γ (f̂ᵀf̂ − β m)))``,
    computed in blocks of ⌊chunk / N⌋ query rows (N = H·W).
    """
    f = F.normalize(guide.flatten(1).float(), dim=0)  # (C, N)
    v = values.flatten(1).float().T  # (N, D)
    n = f.shape[1]
    mean = f.sum(1).square().sum() / (n * n)
    rows = max(1, chunk // n)
    out = torch.empty_like(v)
    for a in range(0, n, rows):
        s = gamma * (f[:, a:a + rows].T @ f - beta * mean)  # (r, N)
        keep = s >= 0
        alone = (~keep.any(1)).nonzero()[:, 0]
        keep[alone, a + alone] = True
        out[a:a + rows] = torch.softmax(s.masked_fill_(~keep, -math.inf), dim=1) @ v
    return out.T.reshape(values.shape)


def cosine_logits(dense: Tensor, text: Tensor) -> Tensor:
    """dense (E, H, W), unit text rows (Q, E) → (Q, H, W) ``⟨z/‖z‖, t_q⟩``."""
    z = F.normalize(dense.float(), dim=0)
    return torch.einsum("ehw,qe->qhw", z, text.float())


def classify(logits: Tensor, query_class: Tensor, classes: int, logit_scale: float = LOGIT_SCALE,
             prob_thd: float = 0.0) -> Tensor:
    """(Q, H, W) query logits → (H, W) int64 classes: ``p = softmax_q(s ℓ)``, a class's probability the max over
    its queries (``query_class`` (Q,) gives each query's class), argmax; best probability < ``prob_thd`` → 0."""
    p = torch.softmax(logits.float() * logit_scale, dim=0)
    owner = query_class.to(p.device).view(-1, *([1] * (p.dim() - 1))).expand_as(p)
    per_class = p.new_full((classes, *p.shape[1:]), -1.0).scatter_reduce_(0, owner, p, "amax")
    best, pred = per_class.max(0)
    return torch.where(best < prob_thd, torch.zeros_like(pred), pred)


def resized_size(width: int, height: int, short: int, long: int = LONG_SIDE) -> tuple[int, int]:
    """(width, height) after mmcv's keep-ratio rescale to fit ``long`` × ``short``: factor
    ``min(long / max side, short / min side)``, each side rounded half up."""
    factor = min(long / max(width, height), short / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """mmseg's slide windows (y1, y2, x1, x2) over a height × width image."""
    def starts(side: int) -> list[tuple[int, int]]:
        n = max(side - crop + stride - 1, 0) // stride + 1
        out = []
        for i in range(n):
            end = min(i * stride + crop, side)
            out.append((max(end - crop, 0), end))
        return out

    return [(y1, y2, x1, x2) for y1, y2 in starts(height) for x1, x2 in starts(width)]


def centred_padding(height: int, width: int, multiple: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) that pad height × width up to multiples of ``multiple``, centred (the odd pixel
    right/bottom)."""
    ph, pw = -height % multiple, -width % multiple
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


# -- CLIP's image tower, split at its last block ---------------------------------------------------------------

def clip_values(visual: nn.Module, images: Tensor) -> Tensor:
    """CLIP-normalised images (B, 3, H, W) → the last block's values ``V = W_v ln_1(x) + b_v`` of the patch
    tokens, (B, width, H/p, W/p). The position embedding is resized bicubically to the grid (ProxyCLIP's
    ``interpolate_pos_encoding``, scale factor (h + 0.1)/g)."""
    x = visual.conv1(images)
    b, width, h, w = x.shape
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.to(x.dtype).expand(b, 1, -1), x], dim=1)
    x = x + clip_positions(visual.positional_embedding, h, w).to(x.dtype)
    x = visual.ln_pre(visual.patch_dropout(x))
    transformer = visual.transformer
    blocks = transformer.resblocks
    x = x if transformer.batch_first else x.transpose(0, 1)
    for block in blocks[:-1]:
        x = block(x)
    x = x if transformer.batch_first else x.transpose(0, 1)
    last = blocks[-1]
    dim = last.attn.embed_dim
    v = F.linear(last.ln_1(x), last.attn.in_proj_weight[2 * dim:], last.attn.in_proj_bias[2 * dim:])
    return v[:, 1:].transpose(1, 2).reshape(b, width, h, w)


def clip_positions(pos: Tensor, h: int, w: int) -> Tensor:
    """(1 + g², D) position embedding → (1 + h·w, D), the patch part resized bicubically to h × w."""
    g = math.isqrt(pos.shape[0] - 1)
    if (h, w) == (g, g):
        return pos
    grid = pos[1:].reshape(1, g, g, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, scale_factor=((h + 0.1) / g, (w + 0.1) / g), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1].float(), grid.flatten(2)[0].T]).to(pos.dtype)


def clip_dense(visual: nn.Module, values: Tensor) -> Tensor:
    """(B, width, H, W) values (attended or not) → (B, E, H, W) ``proj(ln_post(out_proj(v)))``."""
    out_proj = visual.transformer.resblocks[-1].attn.out_proj
    b, _, h, w = values.shape
    z = visual.ln_post(out_proj(values.flatten(2).transpose(1, 2)))
    return (z @ visual.proj).transpose(1, 2).reshape(b, -1, h, w)


def check_clip(visual: nn.Module, model: str) -> None:
    """A ViT image tower with the parts :func:`clip_values` uses, or a WrcError."""
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if not hasattr(visual, "conv1") or blocks is None or getattr(visual, "attn_pool", None) is not None \
            or not hasattr(blocks[-1].attn, "in_proj_weight") or visual.proj is None:
        raise WrcError(f"CLIP {model} is not a plain ViT image tower (conv patches, multi-head attention blocks, "
                       "projection); use an OpenAI-style ViT such as ViT-B-16")


# -- data ----------------------------------------------------------------------------------------------------

def coco_stuff(root: Path) -> ProbeData:
    """COCO-Stuff-164k val: ``images/val2017/<id>.jpg`` with ``annotations/val2017/<id>.png`` (stuffthingmaps,
    fine ids 0..181, 255 unlabelled); only the val split is read."""
    if not (root / "images" / "val2017").is_dir():
        raise WrcError(f"{root} is not a COCO-Stuff-164k folder: expected images/val2017/ and annotations/val2017/")
    val = datasets.paired_split(root, "annotations", [".png"], "val2017", LabelSample, "COCO-Stuff-164k", lenient=True)
    names = tuple(f"fine {i}" for i in range(182))
    return ProbeData("cocostuff", root, val, val, names)


def open_ovseg_data(kind: str, root: str | os.PathLike) -> ProbeData:
    """The dataset ``kind`` (:data:`DATASETS`; ``auto``: COCO-Stuff-164k when ``images/val2017`` and
    ``annotations/val2017`` exist, else :func:`~wrcli.eval.datasets.open_seg`'s detection), listed leniently:
    the samples missing a file are in ``val.missing``."""
    root = Path(root)
    if kind not in DATASETS:
        raise WrcError(f"--dataset must be one of {', '.join(DATASETS)}, got {kind!r}")
    if kind == "cocostuff" or (kind == "auto" and (root / "images/val2017").is_dir()
                               and (root / "annotations/val2017").is_dir()):
        return coco_stuff(root)
    return open_seg(kind, root, lenient=True)


def label_map(dataset: str, classes: ClassList, data_classes: int) -> tuple[int, ...] | None:
    """The 256-entry table from the dataset's stored labels to the class list's indices (None: as stored)."""
    lut = LABEL_MAPS.get((dataset, classes.name))
    if lut is None and len(classes.classes) != data_classes:
        raise WrcError(f"class list {classes.name} has {len(classes.classes)} classes but the {dataset} labels have "
                       f"{data_classes}; use a list with one line per label")
    return lut


@dataclass
class Item:
    """One image ready for the methods."""

    target: Tensor  # (H, W) int64 at the label's resolution
    pixels: Tensor  # (3, h, w) uint8, resized for inference
    windows: list[tuple[int, int, int, int]]
    vfm: list[Tensor]  # per window (C, h_v, w_v), float16 (empty for maskclip)
    values: list[Tensor]  # per window CLIP values (width, h_c, w_c), float16
    pads: list[tuple[int, int, int, int]]


class Skip(Exception):
    """A sample left out, with the one-line reason."""


# -- the task ------------------------------------------------------------------------------------------------

class OvsegTask:
    """``wrc eval ovseg`` (:class:`~wrcli.eval.task.Task`): the evaluation split of ``path``, every upsampler."""

    kind = "ovseg"
    metrics: Sequence[str] = METRICS

    def __init__(self, path: str | os.PathLike, *, dataset: str = "auto", classes: str | None = None,
                 method: str = "proxyclip", clip_model: str = "ViT-B-16", clip_weights: str | None = None,
                 imsize: int | None = None, crop: int | None = None, stride: int | None = None,
                 prob_thd: float | None = None, scale: int = DEFAULT_SCALE, limit: int | None = None,
                 cache: str | None = None) -> None:
        if method not in METHODS:
            raise WrcError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
        for name, value in (("imsize", imsize), ("crop", crop), ("stride", stride), ("scale", scale)):
            if value is not None and value < 1:
                raise WrcError(f"--{name} must be at least 1")
        if prob_thd is not None and not 0 <= prob_thd <= 1:
            raise WrcError(f"--prob-thd must be a probability in 0..1, got {prob_thd}")
        self.path, self.layout, self.classes_spec, self.method = Path(path), dataset, classes, method
        self.clip_model, self.clip_weights = clip_model, clip_weights
        self.overrides = {"imsize": imsize, "crop": crop, "stride": stride, "prob_thd": prob_thd}
        self.scale, self.limit, self.cache = scale, limit, cache
        self.data: ProbeData | None = None
        self.class_list: ClassList | None = None
        self.lut: tuple[int, ...] | None = None
        self.preset = OTHER_PRESET
        self.samples: tuple[Sample, ...] = ()
        self.missing: list[dict[str, str]] = []  # listed samples lacking a file
        self.skipped: list[dict[str, str]] = []
        self.evaluated = 0
        self.feature_seconds = 0.0
        self.clip_info: dict[str, Any] = {}

    # 1. data reader
    def read(self) -> None:
        data = open_ovseg_data(self.layout, self.path)
        spec = self.classes_spec or DEFAULT_CLASSES.get(data.name)
        if spec is None:
            n = len(data.classes)
            classes = ClassList(data.name, data.classes, data.classes, tuple(range(n)))
        else:
            classes = class_list(spec)
        self.lut = label_map(data.name, classes, len(data.classes))
        base = PRESETS.get(classes.name, OTHER_PRESET)
        self.preset = Preset(**{k: getattr(base, k) if v is None else v for k, v in self.overrides.items()})
        check_clip_model(self.clip_model, self.clip_weights)
        self.data, self.class_list = data, classes
        self.samples = data.val.samples[:self.limit] if self.limit else data.val.samples
        self.missing = [{"image": name, "reason": reason} for name, reason in data.val.missing]
        if self.missing:
            log.warning("%d listed images of split %s lack a file and are skipped (first: %s)", len(self.missing),
                        data.val.name, self.missing[0]["reason"])
        if not self.samples:
            raise WrcError(f"no image of split {data.val.name} can be evaluated: each of the {len(self.missing)} listed "
                           f"lacks a file (first: {self.missing[0]['reason']})")

    # 2. per-image features
    @contextmanager
    def features(self, session: Session, bars: Bars) -> Iterator[Features]:
        """CLIP, the text embeddings and the per-image features (cached in ``cache`` or a temporary folder)."""
        classes = self._classes()
        if self.method == "maskclip":
            refused = [label for label, m in session.upsamplers.items() if not m.channel_agnostic]
            if refused:
                raise WrcError(f"--method maskclip upsamples CLIP's own features, and {', '.join(refused)} "
                               f"{'is' if len(refused) == 1 else 'are'} trained for the backbone; use interpolations "
                               "(bilinear, bicubic, nearest) or --method proxyclip")
        clip = load_clip(self.clip_model, self.clip_weights, session.device)
        self.clip_info = describe_clip(self.clip_model, self.clip_weights)
        check_clip(clip.visual, self.clip_model)
        with tempfile.TemporaryDirectory(prefix="wrc-ovseg-") if self.cache is None else nullcontext(self.cache) as root:
            text = cached_text(Path(root), clip, self.clip_model, self.clip_info, classes.queries)
            yield Features(self, session, clip, text, Path(root))

    # 3. metric
    def measure(self, session: Session, features: Features, bars: Bars) -> Measurement:
        classes = self._classes()
        k = len(classes.classes)
        confusion = {label: torch.zeros(k, k, dtype=torch.int64) for label in session.upsamplers}
        seconds = dict.fromkeys(session.upsamplers, 0.0)
        owner = torch.tensor(classes.query_class)
        bar = bars(len(self.samples), f"eval ovseg {self.method}")
        self.skipped, self.evaluated, self.feature_seconds = list(self.missing), 0, 0.0
        for index, sample in enumerate(self.samples):
            try:
                began = time.monotonic()
                item = features.item(index, sample)
                self.feature_seconds += time.monotonic() - began
                for label, upsampler in session.upsamplers.items():
                    began = time.monotonic()
                    logits = predict_logits(self.method, item, features, upsampler, self.scale)
                    pred = classify(logits, owner, k, LOGIT_SCALE, self.preset.prob_thd).cpu()
                    confusion[label] += confusion_matrix(pred, item.target, k, IGNORE)
                    seconds[label] += time.monotonic() - began
                self.evaluated += 1
            except Skip as e:
                self.skipped.append({"image": sample.name, "reason": str(e)})
                log.warning("skipped %s: %s", sample.name, e)
            bar.advance()
        bar.close()
        if not self.evaluated:
            raise WrcError(f"no image could be evaluated (first reason: {self.skipped[0]['reason']})")
        results: dict[str, dict[str, Any]] = {}
        per_class: dict[str, dict[str, float | None]] = {}
        for label, m in confusion.items():
            results[label] = {"mIoU": _percent(mean_iou(m)), "aAcc": _percent(pixel_accuracy(m)),
                              "seconds_per_image": round(seconds[label] / self.evaluated, 3)}
            per_class[label] = {name: _percent(v) for name, v in
                                zip(classes.classes, iou_per_class(m).tolist(), strict=True)}
        return Measurement(results, {"per_class_iou": per_class})

    # 4. report
    def protocol(self, session: Session) -> dict[str, Any]:
        classes, p = self._classes(), self.preset
        grouping = (f"proxy attention from the backbone's features upsampled x{self.scale}: A = f^T f (unit f), "
                    "S = gamma (A - beta mean(A)), S < 0 masked, softmax rows; CLIP values bilinear to that grid; "
                    "last CLIP block replaced (no residual, no FFN); ln_post, proj")
        dense = ("last block's value path (q/k skipped, no residual/FFN), out_proj, ln_post, proj on CLIP's grid; "
                 f"upsampled x{self.scale} by the (backbone-agnostic) upsampler")
        return {
            "method": self.method, "clip": self.clip_info,
            "classes": classes.name, "class_names": list(classes.classes), "queries": len(classes.queries),
            "templates": "CLIP's 80 ImageNet templates; t = normalise(mean of the unit prompt embeddings)",
            "imsize": p.imsize, "long_side_max": LONG_SIDE, "resize": "bilinear, no antialiasing, keep ratio",
            "crop": p.crop, "stride": p.stride, "scale": self.scale,
            "beta": BETA if self.method == "proxyclip" else None, "gamma": GAMMA if self.method == "proxyclip" else None,
            "logit_scale": LOGIT_SCALE, "prob_thd": p.prob_thd,
            "features": grouping if self.method == "proxyclip" else dense,
            "affinity_chunk_entries": AFFINITY_CHUNK if self.method == "proxyclip" else None,
            "prediction": "window logits (cosine) bilinear to the window, averaged over windows, bilinear to the label "
                          "size; softmax(logit_scale x), max over synonyms, argmax; best < prob_thd -> class 0",
            "metrics": "mIoU over classes present in labels or predictions, aAcc = pixel accuracy, in %, one "
                       "confusion matrix over the split, label 255 ignored",
            "label_map": LABEL_MAP_NOTES[classes.name] if self.lut is not None else "as stored",
            "feature_dtype": "float16",
        }

    def dataset(self) -> dict[str, Any]:
        data = self._data()
        return {"kind": data.name, "path": str(self.path), "split": data.val.name,
                "images": len(self.samples) + len(self.missing), "evaluated": self.evaluated, "limit": self.limit,
                "skipped": self.skipped,
                "feature_seconds_per_image": round(self.feature_seconds / max(self.evaluated, 1), 3)}

    def _data(self) -> ProbeData:
        if self.data is None:
            raise RuntimeError("OvsegTask: read() comes first")
        return self.data

    def _classes(self) -> ClassList:
        if self.class_list is None:
            raise RuntimeError("OvsegTask: read() comes first")
        return self.class_list


def _percent(value: float) -> float | None:
    return None if value is None or math.isnan(value) else 100.0 * value


def cached_text(root: Path, clip: nn.Module, model: str, clip_info: dict[str, Any], queries: Sequence[str]) -> Tensor:
    """The (Q, E) text embeddings of ``queries`` with the ImageNet templates, from ``root`` when the same CLIP,
    names and templates made them before (encoding thousands of prompts is minutes on a CPU)."""
    import safetensors.torch

    templates = imagenet_templates()
    key = json.dumps({"clip": clip_info, "queries": list(queries), "templates": list(templates)}, sort_keys=True)
    path = root / f"ovseg-text-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"
    device = next(clip.parameters()).device
    if path.is_file():
        try:
            return safetensors.torch.load_file(str(path))["text"].to(device)
        except Exception as e:  # noqa: BLE001 - a damaged cache file is recomputed
            log.warning("recomputing the text embeddings: %s", first_line(e))
    text = text_embeddings(clip, tokenizer_for(model), queries, templates)
    root.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        safetensors.torch.save_file({"text": text.cpu().contiguous()}, str(tmp))
    return text


class Features:
    """The per-image features of a task: computed on first use, written to the cache folder, read back."""

    def __init__(self, task: OvsegTask, session: Session, clip: nn.Module, text: Tensor, root: Path) -> None:
        self.task, self.session, self.clip, self.text = task, session, clip, text
        self.multiple = math.lcm(session.backbone.patch_size, int(clip.visual.conv1.kernel_size[0]))
        key = {"format": CACHE_FORMAT, "dataset": task._data().name, "preset": [task.preset.imsize, task.preset.crop,
               task.preset.stride], "vfm": task.method == "proxyclip", "backbone": session.backbone.config(),
               "clip": task.clip_info, "precision": session.precision}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = root / f"ovseg-{key['dataset']}-{digest}"
        self.folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.folder / "meta.json", json.dumps({"key": key}, indent=1, default=str))

    def item(self, index: int, sample: Sample) -> Item:
        """Sample ``index``: its target and features (from the cache when its fingerprint matches)."""
        try:
            image, labels = sample.load()
        except Exception as e:  # noqa: BLE001 - Pillow and numpy raise many types for a bad file
            raise Skip(f"cannot read the sample: {first_line(e)}") from None
        if labels.shape != (image.height, image.width):
            raise Skip(f"label map {labels.shape[1]}x{labels.shape[0]} does not match the {image.width}x{image.height} image")
        if self.task.lut is not None:
            labels = np.asarray(self.task.lut, dtype=np.uint8)[labels]
        k = len(self.task._classes().classes)
        bad = np.unique(labels[(labels >= k) & (labels != IGNORE)])
        if bad.size:
            raise Skip(f"label values {bad[:5].tolist()} are not classes 0..{k - 1} or {IGNORE} (ignore)")
        stored = self._load(index, sample)
        if stored is None:
            stored = self._compute(image)
            self._store(index, sample, stored)
        pixels = stored["pixels"]
        wins = windows(pixels.shape[1], pixels.shape[2], self.task.preset.crop, self.task.preset.stride)
        pads = [centred_padding(y2 - y1, x2 - x1, self.multiple) for y1, y2, x1, x2 in wins]
        vfm = [stored[f"vfm{i}"] for i in range(len(wins))] if "vfm0" in stored else []
        values = [stored[f"values{i}"] for i in range(len(wins))]
        return Item(torch.from_numpy(labels.astype(np.int64)), pixels, wins, vfm, values, pads)

    @torch.inference_mode()
    def _compute(self, image: Image.Image) -> dict[str, Tensor]:
        preset, device, backbone = self.task.preset, self.session.device, self.session.backbone
        w, h = resized_size(image.width, image.height, preset.imsize)
        rgb = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()
        pixels = F.interpolate(rgb, size=(h, w), mode="bilinear", align_corners=False).round().clamp(0, 255)
        pixels = pixels.to(torch.uint8)[0]
        out: dict[str, Tensor] = {"pixels": pixels}
        proxy = self.task.method == "proxyclip"
        for i, win in enumerate(windows(h, w, preset.crop, preset.stride)):
            crop = padded_crop(pixels, win, self.multiple).to(device)
            out[f"values{i}"] = clip_values(self.clip.visual, clip_normalise(crop)[None])[0].half().cpu()
            if proxy:
                with self.session.autocast():  # the backbone at --precision; CLIP stays float32
                    vfm = backbone(backbone.normalize(crop[None]))
                out[f"vfm{i}"] = vfm[0].half().cpu()
        return out

    def _path(self, index: int) -> Path:
        return self.folder / f"{index:06d}.safetensors"

    def _load(self, index: int, sample: Sample) -> dict[str, Tensor] | None:
        import safetensors
        import safetensors.torch

        path = self._path(index)
        if not path.is_file():
            return None
        try:
            with safetensors.safe_open(str(path), "pt") as f:
                if json.loads((f.metadata() or {}).get("sample", "null")) != json.loads(json.dumps(sample.fingerprint())):
                    return None
            return safetensors.torch.load_file(str(path))
        except Exception:  # noqa: BLE001 - a damaged cache file is recomputed
            return None

    def _store(self, index: int, sample: Sample, tensors: dict[str, Tensor]) -> None:
        import safetensors.torch

        path = self._path(index)
        remove_stale_tmps(path)
        with atomic_write(path) as tmp:
            safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                                        metadata={"sample": json.dumps(sample.fingerprint())})


def clip_normalise(pixels: Tensor) -> Tensor:
    """uint8 or 0..1 (…, 3, H, W) → CLIP-normalised float."""
    x = pixels.float() / 255 if pixels.dtype == torch.uint8 else pixels.float()
    mean = torch.tensor(CLIP_MEAN, device=x.device)[:, None, None]
    std = torch.tensor(CLIP_STD, device=x.device)[:, None, None]
    return (x - mean) / std


def padded_crop(pixels: Tensor, window: tuple[int, int, int, int], multiple: int) -> Tensor:
    """(3, H, W) uint8 → the window, padded (centred) to multiples of ``multiple`` with CLIP's mean colour,
    as 0..1 float (3, h, w)."""
    y1, y2, x1, x2 = window
    crop = pixels[:, y1:y2, x1:x2].float() / 255
    left, right, top, bottom = centred_padding(y2 - y1, x2 - x1, multiple)
    if left or right or top or bottom:
        canvas = torch.tensor(CLIP_MEAN)[:, None, None].expand(3, crop.shape[1] + top + bottom,
                                                               crop.shape[2] + left + right).clone()
        canvas[:, top:top + crop.shape[1], left:left + crop.shape[2]] = crop
        crop = canvas
    return crop


@torch.inference_mode()
def predict_logits(method: str, item: Item, features: Features, upsampler: Any, scale: int) -> Tensor:
    """(Q, H, W) query logits at the label's resolution: window logits resized to the window, averaged over the
    windows, resized to the label."""
    session, clip, text = features.session, features.clip, features.text
    device = session.device
    h, w = item.pixels.shape[1:]
    total = torch.zeros(text.shape[0], h, w, device=device)
    count = torch.zeros(1, h, w, device=device)
    for i, (y1, y2, x1, x2) in enumerate(item.windows):
        values = item.values[i].to(device).float()[None]
        if method == "proxyclip":
            tokens = item.vfm[i].to(device).float()[None]
            crop = padded_crop(item.pixels, item.windows[i], features.multiple).to(device)
            image = session.backbone.normalize(crop[None]) if upsampler.guided else None
            guide = upsampler.upsample(tokens, image, scale=scale)
            values = F.interpolate(values, size=guide.shape[-2:], mode="bilinear", align_corners=False)
            dense = clip_dense(clip.visual, proxy_attention(guide[0], values[0])[None])
        else:
            dense = upsampler.upsample(clip_dense(clip.visual, values), None, scale=scale)
        logits = cosine_logits(dense[0], text)
        left, right, top, bottom = item.pads[i]
        full = (y2 - y1 + top + bottom, x2 - x1 + left + right)
        logits = F.interpolate(logits[None], size=full, mode="bilinear", align_corners=False)[0]
        total[:, y1:y2, x1:x2] += logits[:, top:top + y2 - y1, left:left + x2 - x1]
        count[:, y1:y2, x1:x2] += 1
    mean = total / count
    return F.interpolate(mean[None], size=tuple(item.target.shape), mode="bilinear", align_corners=False)[0]


def ovseg_task(path: str | os.PathLike, *, dataset: str = "auto", classes: str | None = None,
               method: str = "proxyclip", clip_model: str = "ViT-B-16", clip_weights: str | None = None,
               imsize: int | None = None, scale: int = DEFAULT_SCALE, limit: int | None = None,
               cache: str | None = None, **presets: Any) -> OvsegTask:
    """The task (settings in the module docstring; ``imsize`` and ``presets`` — crop, stride, prob_thd —
    override the class list's preset)."""
    return OvsegTask(path, dataset=dataset, classes=classes, method=method, clip_model=clip_model,
                     clip_weights=clip_weights, imsize=imsize, scale=scale, limit=limit, cache=cache, **presets)


def run_ovseg(path: str | os.PathLike, *, upsamplers: str | Sequence[str] = f"bilinear,{DEFAULT_UPSAMPLER}",
              backbone: str = DEFAULT_BACKBONE, backbone_weights: str | None = None, device: str = "auto",
              progress: bool = True, precision: str = "auto", command: str | None = None,
              **settings: Any) -> dict[str, Any]:
    """Every upsampler on the same images; the report. ``settings`` are :func:`ovseg_task`'s."""
    task = ovseg_task(path, **settings)
    return run_task(task, RunOptions(upsamplers, backbone, backbone_weights, device, progress, precision), command)
