"""Frozen timm ViT backbones that turn images into NCHW patch features.

Any timm ViT (``VisionTransformer`` or ``Eva`` families: DINOv2 with or without registers, DINOv3, CLIP,
SigLIP...) is built with ``dynamic_img_size=True`` so it accepts any image size. Weights come from a local
file in timm layout (strict), from the local Hugging Face cache, or from the hub when it is reachable.
Without a network and without cached weights, loading fails at once with a one-line :class:`WrcError`
instead of retrying for a minute.
"""

from __future__ import annotations

import difflib
import os
import pickle
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import huggingface_hub
import safetensors
import safetensors.torch
import timm
import torch
from timm.models import get_pretrained_cfg, split_model_name_tag
from torch import Tensor, nn

from wrcli.defaults import DEFAULT_BACKBONE
from wrcli.errors import WrcError, first_line
from wrcli.files import file_sha256

__all__ = ["DEFAULT_BACKBONE", "Backbone", "load_backbone"]

_PROBE_TIMEOUT_S = 1.0
_SAFE_HUB_NAMES = {
    "pytorch_model.bin": "model.safetensors",
    "open_clip_pytorch_model.bin": "open_clip_model.safetensors",
}
_OFFLINE_FIX = (
    "pass --backbone-weights FILE (weights=FILE in Python; a .safetensors in timm layout) or connect to the network"
)


class Backbone(nn.Module):
    """A frozen timm ViT mapping normalised images (B, 3, H, W) to patch features (B, channels, H//p, W//p).

    The model stays in eval mode with ``requires_grad=False`` on every parameter, but gradients still flow
    to the input images (wrap calls in ``torch.inference_mode()`` when none are needed). Every selected
    layer goes through the model's final norm; prefix tokens (class, registers) are dropped. Image sides
    that are not a multiple of the patch size are cropped at the bottom/right to the largest multiple
    (timm's patch embedding rejects them): the remaining ``H % p`` rows and ``W % p`` columns are not seen.
    """

    def __init__(
        self, model: nn.Module, name: str, layers: Sequence[int] | None = None, weights_sha256: str | None = None
    ) -> None:
        super().__init__()
        if not hasattr(model, "patch_embed") or not hasattr(model, "num_prefix_tokens"):
            raise WrcError(f"timm model {name} is not a ViT with patch tokens; use one such as {DEFAULT_BACKBONE}")
        patch_h, patch_w = model.patch_embed.patch_size
        if patch_h != patch_w:
            raise WrcError(f"timm model {name} has non-square {patch_h}x{patch_w} patches, which are not supported")
        depth = len(model.blocks)
        layers = (-1,) if layers is None else tuple(layers)
        bad = [i for i in layers if not -depth <= i < depth]
        if not layers or bad:
            raise WrcError(
                f"layers {list(layers)} invalid for {name}: it has {depth} blocks, give indices in 0..{depth - 1} "
                f"or -{depth}..-1"
            )
        cfg = model.pretrained_cfg
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.arch = split_model_name_tag(name)[0]
        self.patch_size: int = patch_h
        self.embed_dim: int = model.embed_dim
        self.layers = tuple(i % depth for i in layers)
        self.channels = self.embed_dim * len(self.layers)
        self.mean: tuple[float, float, float] = tuple(float(v) for v in cfg["mean"])
        self.std: tuple[float, float, float] = tuple(float(v) for v in cfg["std"])
        # on the module's device, so that normalising a GPU batch copies nothing from the host
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        self.weights_sha256 = weights_sha256

    def train(self, mode: bool = True) -> Backbone:
        """Keep eval mode whatever ``mode`` is: the backbone is frozen."""
        return super().train(False)

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 images in 0..255 or float images in 0..1 -> float images normalised with ``mean``/``std``."""
        if images.dtype == torch.uint8:
            images = images.float() / 255
        elif not images.is_floating_point():
            raise ValueError(f"images must be uint8 (0..255) or float (0..1), got {images.dtype}")
        return (images - self._mean.to(images.device, images.dtype)) / self._std.to(images.device, images.dtype)

    def forward(self, images: Tensor) -> Tensor:
        """Normalised images (B, 3, H, W) -> features (B, channels, H//p, W//p), layers concatenated along C."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        p = self.patch_size
        height, width = images.shape[-2:]
        if height < p or width < p:
            raise ValueError(f"image {height}x{width} is smaller than one {p}x{p} patch of {self.name}")
        images = images[..., : height - height % p, : width - width % p]
        unique = sorted(set(self.layers))
        feats = self.model.forward_intermediates(
            images, indices=unique, norm=True, stop_early=True, output_fmt="NCHW", intermediates_only=True
        )
        by_layer = dict(zip(unique, feats, strict=True))
        out = [by_layer[i] for i in self.layers]
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)

    def config(self) -> dict[str, Any]:
        """JSON-able description, for store metadata."""
        return {
            "name": self.name,
            "arch": self.arch,
            "patch_size": self.patch_size,
            "embed_dim": self.embed_dim,
            "layers": list(self.layers),
            "mean": list(self.mean),
            "std": list(self.std),
            "weights_sha256": self.weights_sha256,
        }


def load_backbone(
    name: str = DEFAULT_BACKBONE,
    weights: str | Path | None = None,
    *,
    layers: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    pretrained: bool = True,
    **model_kwargs: Any,
) -> Backbone:
    """Build the frozen timm ViT ``name`` (``arch`` or ``arch.tag``) on ``device``.

    weights: a ``.safetensors`` (or ``.pth``/``.pt``/``.bin``, read with ``weights_only=True``) state dict in
        timm layout, loaded strictly; it takes precedence over ``pretrained``. The tag in ``name`` still picks
        the pretrained config (mean/std).
    layers: block indices whose features are concatenated (negative counts from the end); default: last.
    pretrained: without ``weights``, load timm's pretrained weights (local HF cache first, then the hub)
        or, if False, keep the random init.
    model_kwargs: passed to ``timm.create_model`` (e.g. ``depth=2, embed_dim=64, num_heads=2``).
    """
    cfg = _pretrained_cfg(name)
    kwargs = {"dynamic_img_size": True, **model_kwargs}
    sha256 = None
    if weights is not None:
        path = Path(weights)
        state = _read_state_dict(path)
        model = _create_model(name, pretrained=False, **kwargs)
        _load_strict(model, state, path, name)
        sha256 = file_sha256(path)
    elif pretrained:
        model = _create_pretrained(name, cfg, kwargs)
    else:
        model = _create_model(name, pretrained=False, **kwargs)
    return Backbone(model, name, layers, sha256).to(device)


def _pretrained_cfg(name: str) -> Any:
    """timm's pretrained config for ``name``; WrcError for an unknown architecture or tag."""
    arch, tag = split_model_name_tag(name)
    if not timm.is_model(arch):
        pattern = f"*{arch}*"
        found = timm.list_models(pattern)
        if found:
            raise WrcError(f"unknown timm model {arch!r}; timm.list_models({pattern!r}) finds {_few(found, 5)}")
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models() for valid names"
        raise WrcError(f"unknown timm model {arch!r}: timm.list_models({pattern!r}) found nothing; {hint}")
    try:
        return get_pretrained_cfg(name)
    except RuntimeError as e:
        tags = timm.list_pretrained(f"{arch}.*")
        raise WrcError(f"unknown pretrained tag {tag!r} for {arch}; available: {', '.join(tags) or 'none'}") from e


def _create_model(name: str, **kwargs: Any) -> nn.Module:
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as e:
        raise WrcError(f"cannot build timm model {name} with {kwargs} (a ViT is needed): {e}") from e


def _create_pretrained(name: str, cfg: Any, kwargs: dict[str, Any]) -> nn.Module:
    """Pretrained model from the local HF cache, else from the hub (after a quick reachability check)."""
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise WrcError(f"timm has no pretrained weights for {name}: pass weights=FILE or pretrained=False")
    cached = _cached_hub_file(cfg)
    if cached is not None:
        return _create_model(name, pretrained=True, pretrained_cfg_overlay={"file": cached}, **kwargs)
    reason = _hub_unreachable()
    if reason:
        raise WrcError(
            f"no weights for {name}: not in the local Hugging Face cache ({huggingface_hub.constants.HF_HUB_CACHE}) "
            f"and the hub is unreachable ({reason}); {_OFFLINE_FIX}"
        )
    try:
        return _create_model(name, pretrained=True, **kwargs)
    except OSError as e:
        raise WrcError(f"cannot download weights for {name}: {first_line(e)}; {_OFFLINE_FIX}") from e


def _cached_hub_file(cfg: Any) -> str | None:
    """Path of the cfg's hub weights in the local HF cache (safetensors preferred), or None."""
    if not cfg.hf_hub_id:
        return None
    repo_id, _, revision = cfg.hf_hub_id.partition("@")
    filename = cfg.hf_hub_filename or "pytorch_model.bin"
    candidates = [filename]
    if filename.endswith(".bin"):
        candidates.insert(0, _SAFE_HUB_NAMES.get(filename, filename.removesuffix(".bin") + ".safetensors"))
    for candidate in candidates:
        found = huggingface_hub.try_to_load_from_cache(repo_id, candidate, revision=revision or None)
        if isinstance(found, str):
            return found
    return None


def _hub_unreachable() -> str | None:
    """Why the HF hub cannot be reached (offline mode, or no answer within a second), or None if it answers."""
    offline_env = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    if offline_env or huggingface_hub.constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE=1"
    endpoint = huggingface_hub.constants.ENDPOINT
    answered = threading.Event()

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=_PROBE_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            pass  # an HTTP error status still means the hub answered
        except OSError:
            return
        answered.set()

    threading.Thread(target=probe, daemon=True).start()
    return None if answered.wait(_PROBE_TIMEOUT_S) else f"no answer from {endpoint} within {_PROBE_TIMEOUT_S:g} s"


def _read_state_dict(path: Path) -> Mapping[str, Tensor]:
    """Tensors of a safetensors or torch weights file; never unpickles arbitrary objects."""
    if not path.is_file():
        raise WrcError(f"backbone weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".pth", ".pt", ".bin"):
        raise WrcError(f"backbone weights {path}: unknown suffix {path.suffix!r}; use .safetensors (or .pth/.pt/.bin)")
    try:
        if suffix == ".safetensors":
            state = safetensors.torch.load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WrcError(
            f"cannot read backbone weights {path}: it holds pickled objects besides tensors, which are never "
            "unpickled; save a plain state dict (ideally as .safetensors)"
        ) from e
    except (OSError, RuntimeError, safetensors.SafetensorError) as e:
        raise WrcError(f"cannot read backbone weights {path}: {first_line(e)}") from e
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WrcError(f"backbone weights {path} are not a flat state dict of tensors (timm layout expected)")
    return state


def _load_strict(model: nn.Module, state: Mapping[str, Tensor], path: Path, name: str) -> None:
    """Load ``state`` into ``model``; WrcError naming the first offending keys on any mismatch."""
    expected = model.state_dict()
    problems = {
        "missing": [k for k in expected if k not in state],
        "unexpected": [k for k in state if k not in expected],
        "shape mismatch": [
            f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
            for k, v in expected.items()
            if k in state and state[k].shape != v.shape
        ],
    }
    found = [f"{kind}: {_few(keys)}" for kind, keys in problems.items() if keys]
    if found:
        raise WrcError(f"backbone weights {path} do not fit timm model {name} (timm layout); {'; '.join(found)}")
    model.load_state_dict(state)


def _few(items: list[str], n: int = 3) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more
