"""``load_upsampler``: an upsampler ready for inference from a registry name or a checkpoint file.

The top layer of the upsampler API, above the registry (:mod:`wrcli.models.registry`) and the checkpoint
files (:mod:`wrcli.models.checkpoint`): it picks the shipped checkpoint for a name and backbone
(:mod:`wrcli.checkpoints`), or builds a fresh model and warns when that one is untrained.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from wrcli.checkpoints import shipped_checkpoint
from wrcli.defaults import CHECKPOINT_SUFFIXES, DEFAULT_BACKBONE, DEFAULT_UPSAMPLER
from wrcli.errors import WrcError

from .base import Upsampler
from .checkpoint import load_checkpoint
from .compat import BackboneSpec, with_sizes
from .registry import create_upsampler, list_upsamplers
from .wrc import SOLVER_NAMES

if TYPE_CHECKING:
    from wrcli.backbones import Backbone

_TRAIN_SOLVER = {name: solver for solver, name in SOLVER_NAMES.items()}  # registry name → `wrc train --solver`


def default_upsampler(backbone: Backbone | None = None) -> str:
    """What ``"default"`` means for ``backbone``: "wrc" when a checkpoint ships for its architecture,
    else "bilinear"."""
    arch = backbone.arch if backbone is not None else None
    return "wrc" if shipped_checkpoint("wrc", arch) is not None else "bilinear"


def load_upsampler(
    name_or_path: str | os.PathLike = DEFAULT_UPSAMPLER,
    backbone: Backbone | None = None,
    *,
    channels: int | None = None,
    patch_size: int | None = None,
    strict: bool = True,
) -> Upsampler:
    """An upsampler ready for inference (eval mode), from a registry name or a checkpoint file.

    A path that exists (or ends in .safetensors / .pth / .pt) is loaded as a checkpoint and validated
    against ``backbone`` (a :class:`wrcli.backbones.Backbone`) and the explicit ``channels`` /
    ``patch_size``: channel count and patch size must match, and so must the backbone architecture
    unless ``strict=False``. The authors' official .pth files are read too (weights only, never
    unpickled). Otherwise ``name_or_path`` is a registry name: the checkpoint shipped with wrcli for
    that name and backbone architecture when there is one (see :mod:`wrcli.checkpoints`), else a fresh
    model whose channels and patch size come from ``backbone`` or the keywords — untrained for a
    learned one (a UserWarning says so, and how to get a trained one). ``"default"`` (the default) is
    :func:`default_upsampler`. ``model.checkpoint`` is the file the weights came from, or None.
    """
    if name_or_path == DEFAULT_UPSAMPLER:  # the name, never a file called "default"
        name_or_path = default_upsampler(backbone)
    spec = BackboneSpec.of(backbone)
    path = _checkpoint_file(name_or_path, spec, channels)
    if path is not None:
        model = load_checkpoint(path, backbone, channels=channels, patch_size=patch_size, strict=strict)
        model.checkpoint = path
        return model.eval()
    model = _fresh(str(name_or_path), spec, channels, patch_size)
    if model.learned:
        warnings.warn(untrained_message(model.name, spec), UserWarning, stacklevel=2)
    return model.eval()


def untrained_message(name: str, backbone: BackboneSpec | None) -> str:
    """The one-line warning for learned upsampler ``name`` without a checkpoint: that it is untrained, and
    how to get a trained one (``wrc train`` with the solver of that name, for the WRC family)."""
    where = f" (no checkpoint for {backbone.arch})" if backbone is not None and backbone.arch else ""
    solver = _TRAIN_SOLVER.get(name)
    if solver is None:
        how = f"pass a trained {name} checkpoint file (`wrc train` trains the WRC family only)"
    else:
        other = backbone is not None and backbone.name not in (None, DEFAULT_BACKBONE)
        flag = f" --backbone {backbone.name}" if other else ""
        how = f"train one with `wrc train IMAGES{flag} --out {name}.safetensors --solver {solver}` and pass that file"
    return f"upsampler {name!r} is untrained{where}, its output meaningless: {how}"


def _looks_like_path(name_or_path: str | os.PathLike) -> bool:
    if isinstance(name_or_path, os.PathLike):
        return True
    return Path(name_or_path).is_file() or name_or_path.lower().endswith(CHECKPOINT_SUFFIXES)


def _checkpoint_file(name_or_path: str | os.PathLike, backbone: BackboneSpec | None, channels: int | None) -> Path | None:
    """The checkpoint to load: the path given, or the one shipped for a registry name and ``backbone`` (when the
    requested ``channels`` are the backbone's); None for a fresh model. WrcError for an unknown name."""
    if _looks_like_path(name_or_path):
        return Path(name_or_path)
    name = str(name_or_path)
    known = list_upsamplers()
    if name not in known:
        hint = " (no such file)" if os.sep in name or "/" in name else ""
        raise WrcError(f"unknown upsampler {name!r}{hint}; known: {', '.join(known)}, or a checkpoint path")
    if backbone is None or channels not in (None, backbone.channels):
        return None
    return shipped_checkpoint(name, backbone.arch)


def _fresh(name: str, backbone: BackboneSpec | None, channels: int | None, patch_size: int | None) -> Upsampler:
    """A new model for ``backbone`` and the requested sizes, which must agree with it."""
    sizes = with_sizes(backbone, channels, patch_size) or BackboneSpec()
    model = create_upsampler(name, sizes.channels, sizes.patch_size)
    if backbone is not None:
        model.backbone_info = backbone.info
    return model
