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
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from wrcli.errors import WrcError

from .base import Upsampler, feature_channels
from .registry import create_upsampler, registry_entry

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
# helpers
# --------------------------------------------------------------------------------------------------
def _one_line(e: BaseException | str) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def _backbone_info(backbone: Any) -> dict[str, Any]:
    return {"name": getattr(backbone, "name", None), "arch": getattr(backbone, "arch", None)}


def _sniff(path: Path) -> str:
    """'safetensors', 'torch' or 'unknown' from the first bytes of the file."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise WrcError(f"cannot read checkpoint {path}: {e.strerror or _one_line(e)}") from None
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"  # u64 little-endian header length, then the JSON header
    if head.startswith(b"PK\x03\x04") or head[:2] == b"\x80\x02":
        return "torch"  # zip archive (torch.save default) or a legacy pickle stream (protocol 2)
    return "unknown"


# --------------------------------------------------------------------------------------------------
# save
# --------------------------------------------------------------------------------------------------
def save_upsampler(
    model: Upsampler, path: str | os.PathLike, *, backbone: Any = None, provenance: dict | None = None
) -> Path:
    """Write ``model`` to a safetensors checkpoint at ``path`` atomically (tmp file + rename).

    ``backbone`` (or else the model's recorded backbone) names the backbone it was trained for;
    ``provenance`` is free-form, JSON-serialisable training information. Returns the path.
    """
    from safetensors.torch import save_file

    import wrcli

    path = Path(path)
    if model.batchnorm_folded:
        raise WrcError("cannot save an upsampler whose BatchNorm was folded for inference (its weights no longer "
                       "match the architecture); save it before folding")
    if backbone is not None:
        bb_channels = feature_channels(backbone)
        if model.channels is not None and bb_channels is not None and bb_channels != model.channels:
            raise WrcError(
                f"cannot save: the upsampler takes {model.channels} channels but backbone "
                f"{getattr(backbone, 'name', '?')!r} gives {bb_channels}"
            )
    cfg = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **model.config,
        "backbone": _backbone_info(backbone) if backbone is not None else model.backbone_info,
        "wrcli_version": wrcli.__version__,
        "provenance": provenance if provenance is not None else model.provenance,
    }
    try:
        metadata = {METADATA_KEY: json.dumps(cfg, sort_keys=True), "format": "pt"}
    except (TypeError, ValueError) as e:
        raise WrcError(f"cannot save: provenance must be JSON-serialisable ({_one_line(e)})") from None
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


# --------------------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------------------
def read_checkpoint_config(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON config of a wrcli safetensors checkpoint (no tensors are read)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WrcError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:
        raise WrcError(f"cannot read checkpoint {path}: corrupt or not a safetensors file ({_one_line(e)})") from None
    return _parse_config(path, metadata)


def _parse_config(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    if METADATA_KEY not in metadata:
        raise WrcError(f"{path} is a safetensors file without wrcli metadata: not an upsampler checkpoint saved by wrcli")
    try:
        cfg = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise WrcError(f"{path}: the wrcli metadata is not valid JSON ({_one_line(e)})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT or "architecture" not in cfg:
        raise WrcError(f"{path}: the wrcli metadata does not describe an upsampler checkpoint")
    version = cfg.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise WrcError(f"{path}: checkpoint format version {version!r} is newer than this wrcli supports; upgrade wrcli")
    return cfg


def _validate(path: Path, cfg: dict, backbone: Any, channels: int | None, patch_size: int | None, strict: bool) -> None:
    """Raise WrcError when the checkpoint cannot serve the requested backbone / sizes."""
    ck_bb = cfg.get("backbone") or {}
    trained = ck_bb.get("name") or ck_bb.get("arch")
    fix = f"use --backbone {trained}" if trained else "use the backbone it was trained for"
    fix += " or retrain the upsampler for this backbone"
    ck_channels, ck_patch = cfg.get("channels"), cfg.get("patch_size")
    if channels is not None and ck_channels is not None and channels != ck_channels:
        raise WrcError(f"checkpoint {path.name} takes {ck_channels}-channel features, not {channels}; {fix}")
    if patch_size is not None and ck_patch is not None and patch_size != ck_patch:
        raise WrcError(f"checkpoint {path.name} was trained for patch size {ck_patch}, not {patch_size}; {fix}")
    if backbone is None:
        return
    name = getattr(backbone, "name", None) or getattr(backbone, "arch", "?")
    bb_channels, bb_patch, bb_arch = feature_channels(backbone), getattr(backbone, "patch_size", None), getattr(backbone, "arch", None)
    if bb_channels is not None and ck_channels is not None and bb_channels != ck_channels:
        raise WrcError(
            f"checkpoint {path.name} takes {ck_channels}-channel features but backbone {name!r} gives {bb_channels}; {fix}"
        )
    if bb_patch is not None and ck_patch is not None and bb_patch != ck_patch:
        raise WrcError(
            f"checkpoint {path.name} was trained for patch size {ck_patch} but backbone {name!r} has patch size {bb_patch}; {fix}"
        )
    ck_arch = ck_bb.get("arch")
    if strict and bb_arch is not None and ck_arch is not None and bb_arch != ck_arch:
        raise WrcError(
            f"checkpoint {path.name} was trained on backbone {ck_arch!r} but the backbone is {bb_arch!r}; {fix} "
            f"(or pass strict=False / --no-strict to use it anyway)"
        )


def _load_into(model: Upsampler, state_dict: dict[str, Tensor], path: Path) -> None:
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        expected, found = set(model.state_dict()), set(state_dict)
        missing, unexpected = sorted(expected - found), sorted(found - expected)
        if missing or unexpected:
            detail = f"{len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        else:
            detail = _one_line(e).replace("Error(s) in loading state_dict for ", "")
            for line in str(e).splitlines()[1:]:
                if line.strip():
                    detail = line.strip()
                    break
        raise WrcError(f"checkpoint {path.name} does not fit the {model.name!r} upsampler: {detail}") from None


def _load_safetensors(path: Path, backbone: Any, channels: int | None, patch_size: int | None, strict: bool) -> Upsampler:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            cfg = _parse_config(path, metadata)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except WrcError:
        raise
    except Exception as e:
        raise WrcError(f"cannot read checkpoint {path}: corrupt or truncated safetensors file ({_one_line(e)})") from None
    _validate(path, cfg, backbone, channels, patch_size, strict)
    arch = cfg["architecture"]
    registry_entry(arch)  # unknown architecture → WrcError listing the known names
    model = create_upsampler(arch, cfg.get("channels"), cfg.get("patch_size"), **(cfg.get("options") or {}))
    _load_into(model, tensors, path)
    model.backbone_info = cfg.get("backbone")
    model.provenance = cfg.get("provenance")
    return model


_PICKLED_HINT = (
    "it holds pickled Python objects (e.g. the training config), which wrcli refuses to unpickle; "
    "in a trusted environment extract the weights with "
    "torch.save(torch.load({file}, weights_only=False)[\"wrc\"], \"wrc_state.pth\") and load wrc_state.pth"
)


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


def _load_torch(path: Path, backbone: Any, channels: int | None, patch_size: int | None) -> Upsampler:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise WrcError(f"refusing to load {path.name}: {_PICKLED_HINT.format(file=repr(str(path)))}") from None
    except Exception as e:
        raise WrcError(f"cannot read checkpoint {path}: corrupt or not a PyTorch file ({_one_line(e)})") from None
    sd = _strip_prefixes(_unwrap_state_dict(obj, path))
    if "outc.weight" in sd:
        layout, sd = "official", from_official_state_dict(sd)
    elif "head.weight" in sd and "wrc.weight" in sd:
        layout = "wrcli"
    else:
        raise WrcError(
            f"{path.name} is not a WRC upsampler state dict (no 'outc.weight'); found keys like {sorted(sd)[:3]}"
        )
    ck_channels = int(sd["head.weight"].shape[0])
    guidance = int(sd["image_stem.conv.weight"].shape[0]) if "image_stem.conv.weight" in sd else 32
    bb_patch = getattr(backbone, "patch_size", None) if backbone is not None else None
    if patch_size is not None and bb_patch is not None and patch_size != bb_patch:
        raise WrcError(f"patch_size={patch_size} disagrees with backbone patch size {bb_patch}")
    patch = patch_size if patch_size is not None else bb_patch
    if patch is None:
        raise WrcError(f"{path.name} does not record the patch size: pass a backbone (--backbone NAME) or patch_size=")
    cfg = {"channels": ck_channels, "patch_size": patch, "backbone": None}
    _validate(path, cfg, backbone, channels, None, strict=True)
    model = create_upsampler("wrc", ck_channels, patch, guidance_channels=guidance)
    _load_into(model, sd, path)
    if backbone is not None:
        model.backbone_info = _backbone_info(backbone)
    model.provenance = {"source": f"{layout} state dict", "file": path.name}
    return model


def load_checkpoint(
    path: str | os.PathLike,
    backbone: Any = None,
    *,
    channels: int | None = None,
    patch_size: int | None = None,
    strict: bool = True,
) -> Upsampler:
    """Rebuild an upsampler from a wrcli safetensors checkpoint or an official WRC ``.pth`` state dict."""
    path = Path(path)
    if not path.is_file():
        raise WrcError(f"checkpoint not found: {path}")
    kind = _sniff(path)
    if kind == "safetensors":
        return _load_safetensors(path, backbone, channels, patch_size, strict)
    if kind == "torch":
        return _load_torch(path, backbone, channels, patch_size)
    raise WrcError(f"{path} is not an upsampler checkpoint (neither safetensors nor a PyTorch file), or it is corrupt")
