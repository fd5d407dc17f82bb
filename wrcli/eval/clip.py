"""CLIP for the open-vocabulary protocols (:mod:`wrcli.eval.ovseg`), through open_clip.

Why open_clip: timm has CLIP's image towers but no text tower; open_clip (``open_clip_torch``, built on timm) has
both and ships the BPE vocabulary inside the package, so the tokenizer works offline. It is imported lazily;
without it every entry point fails with one line naming ``pip install open_clip_torch``.

- Model: an open_clip model name (``ViT-B-16``) or a ``.json`` model config in open_clip's format
  (``{"embed_dim", "vision_cfg", "text_cfg"}``). Weights: ``weights=FILE`` (an open_clip checkpoint, optionally
  under ``"state_dict"`` with ``module.`` prefixes, or a safetensors state dict; read with safetensors or
  ``torch.load(weights_only=True)`` only, loaded strictly), else ``pretrained="openai"`` through the hub.
- Text embeddings (CLIP's zero-shot classifier): for a name c and the T templates, ``t(c) = normalise(mean_j
  normalise(E_text(template_j(c))))``; (K, D) unit rows for K names.
- Class lists (``classnames/<name>.txt``): ``#`` lines are comments; line i is class i; ``a, b, c`` are the
  synonyms of one class (queried separately; the class takes the best of them), ``name: a, b`` gives the class a
  display name. The templates file has one template per line, ``{}`` standing for the name.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from wrcli.errors import WrcError, first_line
from wrcli.files import file_sha256

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

INSTALL = "pip install open_clip_torch"
CLASS_LISTS = ("voc21", "voc20", "context59", "context60", "cocostuff171", "cocoobject", "ade150", "cityscapes")
TEXT_BATCH = 256


def open_clip_module() -> Any:
    """The ``open_clip`` package, or a WrcError naming the install command."""
    try:
        import open_clip
    except ImportError:
        raise WrcError(f"open-vocabulary segmentation needs open_clip: {INSTALL}") from None
    return open_clip


# -- class lists and templates --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClassList:
    """K classes: display names, and the query names (synonyms) with the class each belongs to."""

    name: str
    classes: tuple[str, ...]
    queries: tuple[str, ...]
    query_class: tuple[int, ...]  # class index of each query

    @classmethod
    def parse(cls, name: str, text: str) -> ClassList:
        classes: list[str] = []
        queries: list[str] = []
        owner: list[int] = []
        for line in (raw.strip() for raw in text.splitlines()):
            if not line or line.startswith("#"):
                continue
            label, _, rest = line.partition(":") if ":" in line else ("", "", line)
            synonyms = [s.strip() for s in rest.split(",") if s.strip()]
            if not synonyms:
                raise WrcError(f"class list {name}: line {line!r} names no class")
            classes.append(label.strip() or synonyms[0])
            queries += synonyms
            owner += [len(classes) - 1] * len(synonyms)
        if not classes:
            raise WrcError(f"class list {name} names no class")
        return cls(name, tuple(classes), tuple(queries), tuple(owner))


def _package_text(name: str) -> str:
    return resources.files("wrcli.eval").joinpath("classnames", f"{name}.txt").read_text(encoding="utf-8")


def class_list(spec: str) -> ClassList:
    """A shipped list (one of :data:`CLASS_LISTS`) or a class-list file (format in the module docstring)."""
    if spec in CLASS_LISTS:
        return ClassList.parse(spec, _package_text(spec))
    path = Path(spec)
    if not path.is_file():
        raise WrcError(f"--classes must be one of {', '.join(CLASS_LISTS)} or a class-list file; {spec} is neither")
    try:
        return ClassList.parse(str(path), path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise WrcError(f"cannot read the class list {path}: {first_line(e)}") from None


def imagenet_templates() -> tuple[str, ...]:
    """CLIP's 80 ImageNet prompt templates (``{}`` = the class name)."""
    lines = [line.strip() for line in _package_text("templates").splitlines()]
    return tuple(line for line in lines if line and not line.startswith("#"))


# -- the model ---------------------------------------------------------------------------------------------------

def _read_state(path: Path) -> dict[str, Tensor]:
    """A state dict from a safetensors file or a torch checkpoint (``weights_only``), unwrapped from
    ``"state_dict"`` and stripped of ``module.`` prefixes."""
    try:
        if path.suffix == ".safetensors":
            import safetensors.torch

            state: Any = safetensors.torch.load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - safetensors and pickle raise many types for a bad file
        raise WrcError(f"cannot read the CLIP weights {path}: {first_line(e)}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WrcError(f"the CLIP weights {path} are not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def check_clip_model(model: str, weights: str | os.PathLike | None) -> None:
    """A WrcError unless ``model`` is an open_clip model name or a ``.json`` config file, and ``weights`` (when
    given) a file; imports open_clip but builds nothing."""
    if Path(model).suffix == ".json":
        if not Path(model).is_file():
            raise WrcError(f"CLIP model config {model} not found")
    elif model not in open_clip_module().list_models():
        close = difflib.get_close_matches(model, open_clip_module().list_models(), n=3)
        raise WrcError(f"unknown CLIP model {model!r} (open_clip names such as ViT-B-16, or a .json model config)"
                       + (f"; did you mean {', '.join(close)}?" if close else ""))
    if weights is not None and not Path(weights).is_file():
        raise WrcError(f"CLIP weights {weights} not found")


class _RandomInitFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextmanager
def _no_random_init_notice() -> Iterator[None]:
    """Hide open_clip's "initialized randomly" warning (the weights are loaded right after)."""
    root, quiet = logging.getLogger(), _RandomInitFilter()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def load_clip(model: str, weights: str | os.PathLike | None, device: torch.device) -> nn.Module:
    """An open_clip CLIP in eval mode, frozen, on ``device`` (see the module docstring for ``model`` and
    ``weights``)."""
    open_clip = open_clip_module()
    config = Path(model)
    check_clip_model(model, weights)
    try:
        if config.suffix == ".json":
            net = open_clip.model.CLIP(**json.loads(config.read_text()))
        else:
            with _no_random_init_notice():
                net = open_clip.create_model(model, pretrained=None if weights is not None else "openai")
    except Exception as e:  # noqa: BLE001 - bad configs, unknown names and the hub raise many types
        hint = "" if weights is not None else "; pass --clip-weights FILE for offline use"
        raise WrcError(f"cannot load CLIP {model}: {first_line(e)}{hint}") from None
    if weights is not None:
        path = Path(weights)
        missing, unexpected = net.load_state_dict(_read_state(path), strict=False)
        if missing or unexpected:
            raise WrcError(f"the CLIP weights {path} do not fit {model}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return net.eval().requires_grad_(False).to(device)


def describe_clip(model: str, weights: str | os.PathLike | None) -> dict[str, Any]:
    """The CLIP model and its weights for the report."""
    return {"model": str(model), "weights": str(weights) if weights else "openai (hub)",
            "weights_sha256": file_sha256(weights) if weights else None, "library": "open_clip " + _version()}


def _version() -> str:
    return str(getattr(open_clip_module(), "__version__", "?"))


def tokenizer_for(model: str) -> Any:
    """open_clip's tokenizer of ``model`` (the bundled CLIP BPE tokenizer for a config file)."""
    open_clip = open_clip_module()
    if Path(model).suffix == ".json":
        return open_clip.tokenizer.SimpleTokenizer()
    return open_clip.get_tokenizer(model)


@torch.inference_mode()
def text_embeddings(clip: nn.Module, tokenizer: Any, names: Sequence[str], templates: Sequence[str]) -> Tensor:
    """(K, D) unit rows: ``normalise(mean_j normalise(E_text(template_j(name))))`` for each of the K names."""
    device = next(clip.parameters()).device
    out = []
    for name in names:
        prompts = [t.format(name) for t in templates]
        parts = [F.normalize(clip.encode_text(tokenizer(prompts[i:i + TEXT_BATCH]).to(device)).float(), dim=-1)
                 for i in range(0, len(prompts), TEXT_BATCH)]
        out.append(F.normalize(torch.cat(parts).mean(0), dim=0))
    return torch.stack(out)
