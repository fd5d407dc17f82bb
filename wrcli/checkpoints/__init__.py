"""Checkpoints that ship inside the package: trained upsamplers per registry name and backbone architecture (the
default one is ``wrc``'s).

Each ``*.safetensors`` here has a model card beside it (``*.md``): the exact command, data, steps, wall
time, hardware and validation numbers.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# (registry name, backbone architecture) → file in this folder
SHIPPED: dict[tuple[str, str], str] = {
    ("wrc", "vit_small_patch14_dinov2"): "wrc_dinov2_vits14.safetensors",
    ("wrc-exact", "vit_small_patch14_dinov2"): "wrc_exact_dinov2_vits14.safetensors",
}


def shipped_checkpoint(name: str, arch: str | None) -> Path | None:
    """The packaged checkpoint for registry ``name`` on backbone architecture ``arch``, if there is one."""
    file = SHIPPED.get((name, arch or ""))
    if file is None:
        return None
    path = Path(str(resources.files(__package__) / file))
    return path if path.is_file() else None
