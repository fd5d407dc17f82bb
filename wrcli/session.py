"""What every command sets up before it works: the device, the frozen backbone, and the upsamplers it runs
side by side, named on the command line as ``"bilinear,default,run.safetensors"``.

>>> s = open_session("bilinear,default", backbone="vit_small_patch14_dinov2.lvd142m", weights="dinov2.safetensors")
>>> s.backbone, s.upsamplers["wrc"], s.device, s.precision
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wrcli.defaults import CHECKPOINT_SUFFIXES, DEFAULT_BACKBONE, DEFAULT_UPSAMPLER
from wrcli.errors import WrcError
from wrcli.files import file_sha256

if TYPE_CHECKING:
    import torch

    from wrcli.backbones import Backbone
    from wrcli.models import Upsampler

def parse_upsamplers(spec: str | Sequence[str]) -> list[str]:
    """``"bilinear,wrc,ckpt.safetensors"`` (or a list) → the names in order, without blanks or repeats."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for item in (s.strip() for s in items):
        if item and item not in names:
            names.append(item)
    if not names:
        raise WrcError("--upsampler needs at least one registry name or checkpoint file")
    return names


def label_of(name: str) -> str:
    """The column label of an upsampler: its registry name, or a checkpoint's file stem."""
    path = Path(name)
    return path.stem if path.suffix in CHECKPOINT_SUFFIXES or path.exists() else name


def resolve_default(names: Sequence[str], backbone: Backbone) -> list[str]:
    """``names`` with "default" replaced by what it means for ``backbone`` (wrc with its shipped checkpoint,
    else bilinear), so that the column says what ran; repeats dropped."""
    from wrcli.models import default_upsampler

    return list(dict.fromkeys(default_upsampler(backbone) if n == DEFAULT_UPSAMPLER else n for n in names))


def load_upsamplers(names: Sequence[str], backbone: Backbone, device: torch.device) -> dict[str, Upsampler]:
    """label → an upsampler on ``device`` for inference (eval mode, BatchNorm folded; see
    :func:`wrcli.models.load_upsampler`); "default" is resolved for ``backbone`` first. On a CPU the weights are
    channels-last, so that oneDNN runs every convolution in that layout (the WRC upsampler ×2 at 448: 1.2–1.35×
    faster at batch 1); the upsampled features come back contiguous. (GPUs keep NCHW: not measured on one yet.)"""
    import torch

    from wrcli.models import load_upsampler

    models: dict[str, Upsampler] = {}
    for name in resolve_default(names, backbone):
        label = label_of(name)
        if label in models:
            raise WrcError(f"two upsamplers would share the label {label!r}; rename one checkpoint file")
        model = load_upsampler(name, backbone).to(device).fold_batchnorm()
        models[label] = model.to(memory_format=torch.channels_last) if device.type == "cpu" else model
    return models


def describe_upsampler(model: Upsampler) -> dict[str, Any]:
    """Name, checkpoint file and its sha256, and config of one upsampler (for reports and store metadata)."""
    ckpt = model.checkpoint
    return {
        "name": model.name,
        "checkpoint": str(ckpt) if ckpt else None,
        "checkpoint_sha256": file_sha256(ckpt) if ckpt else None,
        "config": model.config,
    }


@dataclass
class Session:
    """A command's device, backbone and upsamplers (label → model, in the order they were named), and its
    resolved compute precision (``fp32`` or ``bf16``, :mod:`wrcli.precision`)."""

    device: torch.device
    backbone: Backbone
    upsamplers: dict[str, Upsampler] = field(default_factory=dict)
    precision: str = "fp32"

    def describe_upsamplers(self) -> dict[str, dict[str, Any]]:
        return {label: describe_upsampler(m) for label, m in self.upsamplers.items()}

    def autocast(self) -> AbstractContextManager:
        """The block in which the backbone and upsamplers run at this session's precision."""
        from wrcli.precision import autocast

        return autocast(self.device, self.precision)


def open_session(upsamplers: str | Sequence[str] | None, *, backbone: str = DEFAULT_BACKBONE,
                 weights: str | None = None, device: str = "auto", precision: str = "auto",
                 layers: Sequence[int] | None = None, **backbone_kwargs: Any) -> Session:
    """Names → device (this rank's, :func:`wrcli.runtime.resolve_device`) and precision
    (:func:`wrcli.precision.resolve_precision`) → backbone → upsamplers.

    ``upsamplers`` is parsed before anything heavy is loaded, so a bad list fails at once; None loads none.
    ``backbone_kwargs`` go to :func:`wrcli.backbones.load_backbone` (e.g. a small ViT for tests).
    """
    from wrcli.backbones import load_backbone
    from wrcli.precision import resolve_precision
    from wrcli.runtime import current_rank, resolve_device

    names = parse_upsamplers(upsamplers) if upsamplers is not None else []
    dev = resolve_device(device, current_rank())
    compute = resolve_precision(precision, dev)
    bb = load_backbone(backbone, weights, layers=layers, device=dev, **backbone_kwargs)
    return Session(dev, bb, load_upsamplers(names, bb, dev) if names else {}, compute)
