"""Linear probes on upsampled features: protocol presets, the training loop, and the side-by-side run.

The probe is one 1×1 convolution on the frozen backbone's features after the upsampler. Per batch:

1. the cached low-resolution features (and, for image-guided upsamplers, the normalised image) go through the
   upsampler to the feature size: the label size S, or the token grid × ``scale``;
2. ``pred = head.predict(conv(features))``;
3. ``train_at="label"`` (JAFAR, AnyUp, Probe3D): the prediction is resized bilinearly to the S × S target;
   ``train_at="feature"`` (FeatUp, LoftUp): the target is nearest-downsampled to the prediction instead;
4. ``loss = head.loss(pred, target)``; AdamW step.

Evaluation resizes every prediction to the S × S target and feeds the head's accumulator.

Learning rate, for epoch e of E and step t of T (W warm-up steps):

- ``cosine-epoch``: ``lr · (1 + cos(π e / E)) / 2``, i.e. torch's CosineAnnealingLR with T_max = E stepped once per
  epoch (JAFAR @94d4d545 steps it per batch, a bug AnyUp fixed);
- ``warmup-cosine-step`` (Probe3D): ``lr · (0.01 + 0.99 t / W)`` for t ≤ W, else
  ``lr · (0.01 + 0.99 cos(π/2 · (t − W) / (T − W)))``.

Seeds: run s (0..N−1) initialises the probe from seed s and draws the data order and the flips from a generator
seeded with s, so every upsampler is trained on the same batches; the numbers are reported as mean ± std.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from typing import Protocol as TypingProtocol

import numpy as np
import torch
from torch import Tensor, nn

from wrcli.errors import WrcError
from wrcli.models.base import resize
from wrcli.precision import autocast
from wrcli.progress import Progress
from wrcli.reports import mean_std

from .datasets import ProbeData, Split
from .features import SplitCache, build_cache
from .task import Bars, Measurement, RunOptions

if TYPE_CHECKING:
    from wrcli.backbones import Backbone
    from wrcli.models import Upsampler
    from wrcli.session import Session

SCHEDULES = ("cosine-epoch", "warmup-cosine-step")


@dataclass(frozen=True)
class Protocol:
    """Every setting of a probe protocol that changes the numbers."""

    name: str
    size: int  # short side resized to this, then centre crop size × size (image and target)
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    flip: bool  # random horizontal flip of training images
    train_at: str = "label"  # "label" or "feature" (see the module docstring)
    schedule: str = "cosine-epoch"
    warmup_epochs: float = 0.0
    scale: int | None = None  # features upsampled ×scale of the token grid; None: to the label size

    def __post_init__(self) -> None:
        if self.train_at not in ("label", "feature") or self.schedule not in SCHEDULES:
            raise ValueError(f"bad protocol {self}")
        for name in ("size", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise WrcError(f"protocol {self.name}: {name.replace('_', '-')} must be at least 1")
        if self.scale is not None and self.scale < 1:
            raise WrcError(f"protocol {self.name}: scale must be at least 1")

    def feature_hw(self, patch: int) -> tuple[int, int]:
        side = self.size if self.scale is None else self.size // patch * self.scale
        return side, side

    def overridden(self, **values: Any) -> Protocol:
        """This protocol with the given settings replaced (None keeps the preset's)."""
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})


def lr_factor(protocol: Protocol, epoch: int, step: int, steps_per_epoch: int) -> float:
    """The learning-rate multiplier at ``step`` of ``epoch`` (see the module docstring)."""
    if protocol.schedule == "cosine-epoch":
        return (1 + math.cos(math.pi * epoch / protocol.epochs)) / 2
    t = epoch * steps_per_epoch + step
    total, warm = protocol.epochs * steps_per_epoch, protocol.warmup_epochs * steps_per_epoch
    if t <= warm:
        return 0.01 + 0.99 * t / warm
    return 0.01 + 0.99 * math.cos(0.5 * math.pi * (t - warm) / max(total - warm, 1e-9))


class Accumulator(TypingProtocol):
    """Collects a task's metrics over the batches of a split."""

    def update(self, pred: Tensor, target: Tensor) -> None: ...

    def result(self) -> dict[str, Any]: ...


class Head(TypingProtocol):
    """What differs between probes: head width, prediction, loss, target resizing and metrics."""

    out_channels: int
    label_classes: int | None  # targets are class indices 0..label_classes−1 (or 255); None for depth
    target_dtype: np.dtype  # of the cached targets: uint8 class indices, float32 depths
    metrics: tuple[str, ...]  # the scalar results, in table order

    def predict(self, out: Tensor) -> Tensor: ...

    def loss(self, pred: Tensor, target: Tensor) -> Tensor: ...

    def shrink(self, target: Tensor, size: tuple[int, int]) -> Tensor:
        """Targets nearest-downsampled to ``size`` (only protocols with ``train_at="feature"`` call it)."""
        ...

    def accumulator(self) -> Accumulator: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ProbeOptions(RunOptions):
    """How to run (:class:`~wrcli.eval.task.RunOptions`), how many seeds, and overrides of the preset."""

    seeds: int = 1
    limit: int | None = None  # first N images of each split
    cache: str | None = None  # feature cache folder (reused across runs); None: a temporary folder
    workers: int = 2
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    size: int | None = None
    scale: int | None = None


def new_probe(channels: int, head: Head, seed: int, device: torch.device) -> nn.Conv2d:
    """The 1×1 conv probe, initialised (PyTorch's default init) from ``seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = nn.Conv2d(channels, head.out_channels, kernel_size=1)
    return probe.to(device)


def upsampled(upsampler: Upsampler, backbone: Backbone, pixels: Tensor, feats: Tensor, size: tuple[int, int],
              precision: str = "fp32") -> Tensor:
    """The upsampler's output at ``size`` for cached features (no gradient: the upsampler is frozen), run at
    ``precision`` (:func:`wrcli.precision.autocast`)."""
    with torch.no_grad(), autocast(feats.device, precision):
        image = backbone.normalize(pixels) if upsampler.guided else None
        return upsampler.upsample(feats, image, size=size)


def _to_target(pred: Tensor, target: Tensor) -> Tensor:
    """``pred`` resized bilinearly to the target's size (unchanged when it matches)."""
    return pred if pred.shape[-2:] == target.shape[-2:] else resize(pred, tuple(target.shape[-2:]), "bilinear")


def train_probe(head: Head, protocol: Protocol, data: SplitCache, upsampler: Upsampler, backbone: Backbone,
                seed: int, device: torch.device, bar: Progress | None = None, precision: str = "fp32") -> nn.Conv2d:
    """Train a fresh probe on ``data`` with ``protocol`` (the upsampler at ``precision``, the probe in float32);
    returns it in eval mode."""
    probe = new_probe(data.feats.shape[1], head, seed, device)
    opt = torch.optim.AdamW(probe.parameters(), lr=protocol.lr, weight_decay=protocol.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n, bs = len(data), protocol.batch_size
    steps = math.ceil(n / bs)
    size = protocol.feature_hw(backbone.patch_size)
    for epoch in range(protocol.epochs):
        order = torch.randperm(n, generator=gen)
        flips = torch.rand(n, generator=gen) < 0.5 if protocol.flip else None
        for step in range(steps):
            idx = order[step * bs:(step + 1) * bs]
            pixels, feats, target = data.batch(idx, None if flips is None else flips[idx], device)
            pred = head.predict(probe(upsampled(upsampler, backbone, pixels, feats, size, precision).float()))
            if protocol.train_at == "label":
                pred = _to_target(pred, target)
            else:
                target = head.shrink(target, tuple(pred.shape[-2:]))
            loss = head.loss(pred, target)
            for group in opt.param_groups:
                group["lr"] = protocol.lr * lr_factor(protocol, epoch, step, steps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if bar is not None:
                bar.advance()
    return probe.eval()


def predictions(head: Head, probe: nn.Module, data: SplitCache, upsampler: Upsampler, backbone: Backbone,
                protocol: Protocol, device: torch.device, precision: str = "fp32") -> Iterator[tuple[Tensor, Tensor]]:
    """(prediction at the target size, target) per batch of ``data``, in order, without flips (the upsampler at
    ``precision``)."""
    size = protocol.feature_hw(backbone.patch_size)
    for start in range(0, len(data), protocol.batch_size):
        pixels, feats, target = data.batch(torch.arange(start, min(start + protocol.batch_size, len(data))), None, device)
        with torch.no_grad():
            dense = upsampled(upsampler, backbone, pixels, feats, size, precision).float()
            yield _to_target(head.predict(probe(dense)), target), target


def evaluate(head: Head, probe: nn.Module, data: SplitCache, upsampler: Upsampler, backbone: Backbone,
             protocol: Protocol, device: torch.device, bar: Progress | None = None,
             precision: str = "fp32") -> dict[str, Any]:
    """The head's metrics of ``probe`` over ``data`` (:func:`predictions`)."""
    acc = head.accumulator()
    for pred, target in predictions(head, probe, data, upsampler, backbone, protocol, device, precision):
        acc.update(pred, target)
        if bar is not None:
            bar.advance()
    return acc.result()


def summarise(runs: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> dict[str, Any]:
    """One seed: its values; several: ``mean_std`` per scalar metric. Mapping-valued results (per-class
    numbers) become the mean over the seeds where defined. NaN becomes None (JSON has no NaN)."""
    out: dict[str, Any] = {}
    for name in metrics:
        values = [r[name] for r in runs]
        if any(v is None or math.isnan(v) for v in values):
            out[name] = None
        else:
            out[name] = values[0] if len(values) == 1 else mean_std(values)
    for name, value in runs[0].items():
        if isinstance(value, Mapping):
            out[name] = {k: _nanmean([r[name][k] for r in runs]) for k in value}
    return out


def _nanmean(values: Sequence[float]) -> float | None:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None


class ProbeTask(ABC):
    """A linear probe as an evaluation task (:class:`~wrcli.eval.task.Task`): the data reader gives the splits,
    the per-image features are the split caches (:func:`~wrcli.eval.features.build_cache`), the metric trains
    and evaluates a probe per upsampler and seed. A subclass gives ``kind``, ``metrics`` and the two methods
    below."""

    kind: str
    metrics: tuple[str, ...]

    def __init__(self, preset: Protocol, options: ProbeOptions) -> None:
        self.preset, self.options = preset, options
        self.settings = preset
        self.data: ProbeData | None = None
        self.head: Head | None = None

    @abstractmethod
    def open_data(self) -> ProbeData:
        """The dataset with its train and evaluation splits."""

    @abstractmethod
    def make_head(self, data: ProbeData) -> Head:
        """The probe's head for ``data`` (its classes, for segmentation)."""

    def read(self) -> None:
        o = self.options
        if o.seeds < 1:
            raise WrcError("--seeds must be at least 1")
        self.settings = self.preset.overridden(epochs=o.epochs, batch_size=o.batch_size, lr=o.lr, size=o.size,
                                               scale=o.scale)
        self.data = self.open_data().limited(o.limit)
        self.head = self.make_head(self.data)

    @contextmanager
    def features(self, session: Session, bars: Bars) -> Iterator[tuple[SplitCache, SplitCache]]:
        """The train and evaluation caches, in ``options.cache`` or in a temporary folder removed afterwards."""
        data, head, protocol = self._read()
        folder = self.options.cache
        with tempfile.TemporaryDirectory(prefix="wrc-eval-") if folder is None else nullcontext(folder) as root:
            def split_cache(split: Split, flip: bool) -> SplitCache:
                return build_cache(root, data.name, split, size=protocol.size, flip=flip, backbone=session.backbone,
                                   device=session.device, target_dtype=head.target_dtype, classes=head.label_classes,
                                   workers=self.options.workers, progress=bars.enabled, precision=session.precision)

            yield split_cache(data.train, protocol.flip), split_cache(data.val, False)

    def measure(self, session: Session, features: tuple[SplitCache, SplitCache], bars: Bars) -> Measurement:
        """Per upsampler: a probe trained and evaluated per seed, the seeds summarised, and its seconds."""
        _, head, protocol = self._read()
        train, val = features
        seeds = self.options.seeds
        per_seed = protocol.epochs * math.ceil(len(train) / protocol.batch_size) + math.ceil(len(val) / protocol.batch_size)
        results: dict[str, dict[str, Any]] = {}
        for label, model in session.upsamplers.items():
            began = time.monotonic()
            bar = bars(seeds * per_seed, f"probe {label}", unit="batch")
            runs = []
            for seed in range(seeds):
                probe = train_probe(head, protocol, train, model, session.backbone, seed, session.device, bar,
                                    session.precision)
                runs.append(evaluate(head, probe, val, model, session.backbone, protocol, session.device, bar,
                                     session.precision))
            bar.close()
            results[label] = {**summarise(runs, head.metrics), "seconds": round(time.monotonic() - began, 2)}
        return Measurement(results)

    def protocol(self, session: Session) -> dict[str, Any]:
        _, head, protocol = self._read()
        backbone = session.backbone
        return {**dataclasses.asdict(protocol), "feature_size": list(protocol.feature_hw(backbone.patch_size)),
                "probe": f"1x1 conv, {backbone.channels} → {head.out_channels} channels", "optimizer": "AdamW",
                **head.describe(), "seeds": list(range(self.options.seeds)),
                "seed_controls": "probe initialisation, data order and flips (the same for every upsampler)"}

    def dataset(self) -> dict[str, Any]:
        data, _, _ = self._read()
        return data.describe()

    def _read(self) -> tuple[ProbeData, Head, Protocol]:
        if self.data is None or self.head is None:
            raise RuntimeError(f"{type(self).__name__}: read() comes first")
        return self.data, self.head, self.settings
