"""Whether an upsampler fits a backbone: a small description of a backbone, and the one check against it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from wrcli.errors import WrcError

if TYPE_CHECKING:
    from wrcli.backbones import Backbone


@dataclass(frozen=True)
class BackboneSpec:
    """What an upsampler needs to know about a backbone; None where it is unknown.

    ``channels`` is what one upsampler takes: one layer's width (``embed_dim``); with several layers stored,
    the same upsampler is applied to each layer's features. ``patch_size`` is the pixels per token.
    """

    name: str | None = None
    arch: str | None = None
    channels: int | None = None
    patch_size: int | None = None

    @classmethod
    def of(cls, backbone: Backbone | None) -> BackboneSpec | None:
        """The description of a :class:`wrcli.backbones.Backbone` (None for None)."""
        if backbone is None:
            return None
        return cls(backbone.name, backbone.arch, backbone.embed_dim, backbone.patch_size)

    @property
    def info(self) -> dict[str, str | None]:
        """``{"name", "arch"}``: how checkpoints and upsampler configs record the backbone."""
        return {"name": self.name, "arch": self.arch}

    @property
    def label(self) -> str:
        """How messages name it: the backbone, or the sizes a caller asked for when it has no name."""
        known = self.name or self.arch
        return f"backbone {known!r}" if known else "the requested sizes"


def check_fits(
    subject: str, takes: BackboneSpec, backbone: BackboneSpec | None, *, strict: bool = True, hint: str = ""
) -> None:
    """Raise a one-line WrcError when ``subject``, made for backbones like ``takes``, cannot serve ``backbone``.

    Channels and patch size must be equal wherever both sides know them, and so must the architecture when
    ``strict`` (``strict=False`` runs an upsampler on a same-shaped backbone of another architecture).
    Nothing is checked against an unknown (None) backbone. ``hint`` says how to fix a mismatch (no command
    relaxes the architecture check: the message says so).
    """
    if backbone is None:
        return
    fix = f"; {hint}" if hint else ""
    other = backbone.label
    if _differ(takes.channels, backbone.channels):
        raise WrcError(f"{subject} ({takes.channels} channels) disagrees with {other} ({backbone.channels} channels){fix}")
    if _differ(takes.patch_size, backbone.patch_size):
        raise WrcError(
            f"{subject} (patch size {takes.patch_size}) disagrees with {other} (patch size {backbone.patch_size}){fix}"
        )
    if strict and _differ(takes.arch, backbone.arch):
        raise WrcError(
            f"{subject} (trained on {takes.arch!r}) disagrees with {other} (architecture {backbone.arch!r}){fix}; "
            f"only the Python API uses it anyway: load_upsampler(..., strict=False)"
        )


def with_sizes(backbone: BackboneSpec | None, channels: int | None, patch_size: int | None) -> BackboneSpec | None:
    """``backbone`` with the sizes a caller passed (``channels=``, ``patch_size=``), which must agree with it
    (:func:`check_fits`); the sizes alone when there is no backbone; None when nothing is known."""
    if channels is None and patch_size is None:
        return backbone
    asked = BackboneSpec(channels=channels, patch_size=patch_size)
    if backbone is None:
        return asked
    check_fits("the requested upsampler", asked, backbone)
    return replace(
        backbone,
        channels=backbone.channels if channels is None else channels,
        patch_size=backbone.patch_size if patch_size is None else patch_size,
    )


def _differ(a: object, b: object) -> bool:
    return a is not None and b is not None and a != b
