"""Upsampler checkpoints: wrcli's safetensors format (weights + a JSON config in the metadata) and,
read-only, the authors' official PyTorch ``.pth`` state dicts (loaded with ``weights_only=True``).

wrcli format: a safetensors file whose metadata key ``wrcli`` holds a JSON object::

    {"format": "wrcli-upsampler", "format_version": 1, "architecture": "wrc", "solver": "official",
     "centre": null, "scale": 2, "channels": 384, "patch_size": 14, "options": {...},
     "backbone": {"name": ..., "arch": ...} | null, "wrcli_version": "0.1.0",
     "provenance": {...} | null, "parameters": 3977752}

Readable without wrcli: ``safetensors.safe_open(path, "pt").metadata()["wrcli"]``.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from wrcli import __version__
from wrcli.errors import WrcError, first_line
from wrcli.files import atomic_write

from .base import Upsampler
from .compat import BackboneSpec, check_fits, with_sizes
from .pickle_keys import state_dict_path
from .registry import create_upsampler

if TYPE_CHECKING:
    from wrcli.backbones import Backbone

FORMAT = "wrcli-upsampler"
FORMAT_VERSION = 1
METADATA_KEY = "wrcli"

# --------------------------------------------------------------------------------------------------
# Key map: the authors' module paths (PolyU-VCLab/WRC wrc/model.py) → wrcli's WRCUpsampler paths.
# Renames apply to whole dotted segments, longest prefix first; the inverse map is the swap.
# --------------------------------------------------------------------------------------------------
_BOTTLENECK_PARTS = {
    "conv1": "conv_in",
    "bn1": "norm_in",
    "conv2": "conv_mid",
    "bn2": "norm_mid",
    "conv3": "conv_out",
    "bn3": "norm_out",
    "downsample.0": "shortcut.conv",
    "downsample.1": "shortcut.norm",
}
_BOTTLENECKS = (
    [(f"image_convs_1.{i}", f"image_branch1.{i}") for i in range(4)]
    + [(f"image_convs_2.{i}", f"image_branch2.{i}") for i in range(2)]
    + [(f"up1.conv.{i}", f"fuse.{i}") for i in range(2)]
    + [("up1.conv_1.0", "refine")]
)
OFFICIAL_KEY_MAP: dict[str, str] = {
    "in_conv.0": "image_stem.conv",
    "in_conv.1": "image_stem.norm",
    "up1.up": "wrc",
    "outc": "head",
    **{f"{theirs}.{a}": f"{ours}.{b}" for theirs, ours in _BOTTLENECKS for a, b in _BOTTLENECK_PARTS.items()},
}
INVERSE_KEY_MAP: dict[str, str] = {v: k for k, v in OFFICIAL_KEY_MAP.items()}


def _rename(key: str, table: dict[str, str]) -> str:
    parts = key.split(".")
    for n in range(len(parts), 0, -1):  # longest matching module path first
        prefix = ".".join(parts[:n])
        if prefix in table:
            return ".".join([table[prefix], *parts[n:]])
    return key


def from_official_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The authors' WRCUpsampler state dict with wrcli's key names (unknown keys pass unchanged)."""
    return {_rename(k, OFFICIAL_KEY_MAP): v for k, v in state_dict.items()}


def to_official_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """wrcli's WRCUpsampler state dict with the authors' key names (the inverse of the key map)."""
    return {_rename(k, INVERSE_KEY_MAP): v for k, v in state_dict.items()}


# --------------------------------------------------------------------------------------------------
# save
# --------------------------------------------------------------------------------------------------
def save_upsampler(
    model: Upsampler, path: str | os.PathLike, *, backbone: Backbone | None = None, provenance: dict | None = None
) -> Path:
    """Write ``model`` to a safetensors checkpoint at ``path`` atomically (:func:`wrcli.files.atomic_write`).

    ``backbone`` (or else the model's recorded backbone) names the backbone it was trained for, whose channels
    and patch size the model must take; ``provenance`` is free-form, JSON-serialisable training information.
    Returns the path.
    """
    if model.batchnorm_folded:
        raise WrcError("cannot save an upsampler whose BatchNorm was folded for inference (its weights no longer "
                       "match the architecture); save it before folding")
    spec = BackboneSpec.of(backbone)
    takes = BackboneSpec(channels=model.channels, patch_size=model.patch_size)
    check_fits(f"cannot save: upsampler {model.name!r}", takes, spec)
    metadata = _metadata(model, spec, provenance)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    data = safetensors_bytes(tensors, metadata=metadata)  # save_file would make the file private (0o600)
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return path


def _metadata(model: Upsampler, backbone: BackboneSpec | None, provenance: dict | None) -> dict[str, str]:
    """The safetensors metadata of a checkpoint: the JSON config under ``METADATA_KEY``."""
    cfg = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **model.config,
        "backbone": backbone.info if backbone is not None else model.backbone_info,
        "wrcli_version": __version__,
        "provenance": provenance if provenance is not None else model.provenance,
    }
    try:
        return {METADATA_KEY: json.dumps(cfg, sort_keys=True), "format": "pt"}
    except (TypeError, ValueError) as e:
        raise WrcError(f"cannot save: provenance must be JSON-serialisable ({first_line(e)})") from None


# --------------------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------------------
def load_checkpoint(
    path: str | os.PathLike,
    backbone: Backbone | None = None,
    *,
    channels: int | None = None,
    patch_size: int | None = None,
    strict: bool = True,
) -> Upsampler:
    """Rebuild an upsampler from a wrcli safetensors checkpoint or an official WRC ``.pth`` state dict.

    The checkpoint must fit ``backbone`` and the explicit ``channels`` / ``patch_size``
    (:func:`wrcli.models.compat.check_fits`; the architecture only when ``strict``).
    """
    path = _existing(path)
    spec = BackboneSpec.of(backbone)
    want = with_sizes(spec, channels, patch_size)
    kind = _sniff(path)
    if kind == "safetensors":
        return _load_safetensors(path, want, strict)
    if kind == "torch":
        return _load_torch(path, want, spec)
    raise WrcError(f"{path} is not an upsampler checkpoint (neither safetensors nor a PyTorch file), or it is corrupt")


def read_checkpoint_config(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON config of a wrcli safetensors checkpoint (no tensors are read)."""
    return _read_safetensors(_existing(path), tensors=False)[0]


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise WrcError(f"checkpoint not found: {path}")
    return path


def _sniff(path: Path) -> str:
    """'safetensors', 'torch' or 'unknown' from the first bytes of the file."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise WrcError(f"cannot read checkpoint {path}: {e.strerror or first_line(e)}") from None
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"  # u64 little-endian header length, then the JSON header
    if head.startswith(b"PK\x03\x04") or head[:2] == b"\x80\x02":
        return "torch"  # zip archive (torch.save default) or a legacy pickle stream (protocol 2)
    return "unknown"


def _read_safetensors(path: Path, *, tensors: bool) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The config and (when ``tensors``, else {}) the weights of a wrcli safetensors checkpoint."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            cfg = _parse_config(path, f.metadata() or {})
            weights = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except WrcError:
        raise
    except Exception as e:
        raise WrcError(
            f"cannot read checkpoint {path}: corrupt, truncated or not a safetensors file ({first_line(e)})"
        ) from None
    return cfg, weights


def _parse_config(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    if METADATA_KEY not in metadata:
        raise WrcError(f"{path} is a safetensors file without wrcli metadata: not an upsampler checkpoint saved by wrcli")
    try:
        cfg = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise WrcError(f"{path}: the wrcli metadata is not valid JSON ({first_line(e)})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT or "architecture" not in cfg:
        raise WrcError(f"{path}: the wrcli metadata does not describe an upsampler checkpoint")
    version = cfg.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise WrcError(f"{path}: checkpoint format version {version!r} is newer than this wrcli supports; upgrade wrcli")
    return cfg


def _trained_for(cfg: dict[str, Any]) -> BackboneSpec:
    """The backbone a checkpoint's config says it was trained for."""
    recorded = cfg.get("backbone") or {}
    return BackboneSpec(recorded.get("name"), recorded.get("arch"), cfg.get("channels"), cfg.get("patch_size"))


def _retrain_hint(trained: BackboneSpec) -> str:
    known = trained.name or trained.arch
    use = f"use --backbone {known}" if known else "use the backbone it was trained for"
    return f"{use} or retrain the upsampler for this backbone"


def _load_safetensors(path: Path, want: BackboneSpec | None, strict: bool) -> Upsampler:
    cfg, weights = _read_safetensors(path, tensors=True)
    trained = _trained_for(cfg)
    check_fits(f"checkpoint {path.name}", trained, want, strict=strict, hint=_retrain_hint(trained))
    model = create_upsampler(cfg["architecture"], trained.channels, trained.patch_size, **(cfg.get("options") or {}))
    _load_into(model, weights, path)
    model.backbone_info = cfg.get("backbone")
    model.provenance = cfg.get("provenance")
    return model


def _load_into(model: Upsampler, state_dict: dict[str, Tensor], path: Path) -> None:
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        expected, found = set(model.state_dict()), set(state_dict)
        missing, unexpected = sorted(expected - found), sorted(found - expected)
        if missing or unexpected:
            detail = f"{len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        else:  # shape mismatches: the first line after torch's header names the tensor
            detail = first_line(str(e).partition("\n")[2] or e)
        raise WrcError(f"checkpoint {path.name} does not fit the {model.name!r} upsampler: {detail}") from None


def _pickled_refusal(path: Path) -> str:
    """Why a ``.pth`` file with pickled objects is refused, and how to extract its weights: with the keys that
    lead to its state dict when they can be read without running the file (:mod:`.pickle_keys`)."""
    keys = state_dict_path(path)
    loaded = f"torch.load({str(path)!r}, weights_only=False)"
    if keys is None:
        how = (f"in a trusted environment load it with {loaded}, torch.save the upsampler's state dict (the dict of "
               "its tensors) alone to wrc_state.pth and load that")
    else:
        index = "".join(f"[{json.dumps(k)}]" for k in keys)
        how = f'in a trusted environment extract the weights with torch.save({loaded}{index}, "wrc_state.pth") and load wrc_state.pth'
    return (f"refusing to load {path.name}: it holds pickled Python objects (e.g. a training config), which wrcli "
            f"refuses to unpickle; {how}")


def _load_torch(path: Path, want: BackboneSpec | None, backbone: BackboneSpec | None) -> Upsampler:
    """A WRC upsampler from a ``.pth`` state dict, which records neither patch size nor backbone: the patch
    size comes from ``want``, the recorded backbone is ``backbone``."""
    layout, sd = _read_state_dict(path)
    patch = want.patch_size if want is not None else None
    if patch is None:
        raise WrcError(f"{path.name} does not record the patch size: pass a backbone (--backbone NAME) or patch_size=")
    trained = BackboneSpec(channels=int(sd["head.weight"].shape[0]), patch_size=patch)
    check_fits(f"checkpoint {path.name}", trained, want, hint=_retrain_hint(trained))
    guidance = int(sd["image_stem.conv.weight"].shape[0]) if "image_stem.conv.weight" in sd else 32
    model = create_upsampler("wrc", trained.channels, patch, guidance_channels=guidance)
    _load_into(model, sd, path)
    model.backbone_info = backbone.info if backbone is not None else None
    model.provenance = {"source": f"{layout} state dict", "file": path.name}
    return model


def _read_state_dict(path: Path) -> tuple[str, dict[str, Tensor]]:
    """The layout ("official" or "wrcli") and the state dict, in wrcli's key names, of a WRC ``.pth`` file
    (read with ``weights_only=True``: pickled objects are refused, never run)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise WrcError(_pickled_refusal(path)) from None
    except Exception as e:
        raise WrcError(f"cannot read checkpoint {path}: corrupt or not a PyTorch file ({first_line(e)})") from None
    sd = _strip_prefixes(_unwrap_state_dict(obj, path))
    if "outc.weight" in sd:
        return "official", from_official_state_dict(sd)
    if "head.weight" in sd and "wrc.weight" in sd:
        return "wrcli", sd
    raise WrcError(f"{path.name} is not a WRC upsampler state dict (no 'outc.weight'); found keys like {sorted(sd)[:3]}")


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    for _ in range(4):
        if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
            return obj
        if isinstance(obj, dict) and "wrc" in obj:
            obj = obj["wrc"]
        elif isinstance(obj, dict) and "state_dict" in obj:
            obj = obj["state_dict"]
        else:
            break
    keys = list(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
    raise WrcError(f"{path.name} holds no upsampler state dict (expected tensors, a 'wrc' or a 'state_dict' entry; found {keys})")


def _strip_prefixes(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    while sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    # "wrc." is a wrapper prefix in the authors' files; wrcli's own layout also has a "wrc" module,
    # so strip it only when every key carries it.
    while sd and all(k.startswith(("wrc.", "module.")) for k in sd):
        sd = {k.split(".", 1)[1]: v for k, v in sd.items()}
    return sd
