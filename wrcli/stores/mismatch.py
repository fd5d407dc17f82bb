"""Why an existing store cannot be resumed by this run: the settings that differ, named as the user types them.

A store's metadata holds resolved settings (``backbone.layers: [11]``, ``resize.max_side: 896``) and values derived
from them (the ``store`` layout: feature height, width, channels, images per shard). Each difference is reported
under the option that sets it (``--size 448 ≠ 224``), and left out when another reported option explains it (a
default that follows ``--backbone``, a layout value that follows the resize options), so that the message names
what the user changed rather than what follows from it.
"""

from __future__ import annotations

import json
from typing import NamedTuple

from wrcli.stores.base import LAYOUT_KEYS

# Top-level metadata keys that may change between two runs of the same extraction, and the two hashes that
# summarise the others: never reported as a difference themselves.
IGNORED_KEYS = frozenset({"created", "command_line", "options", "source", "version", "store", "fingerprint",
                          "images_sha256", "columns"})
MAX_SHOWN = 3


class Source(NamedTuple):
    """Where the stored setting ``key`` (a dotted path, or the prefix of several) comes from."""

    key: str
    option: str | None  # as the user types it; None: no option sets it (then reported by its key)
    follows: tuple[str, ...] = ()  # options whose change changes it too (it is then not reported)
    what: str = ""  # the name of a derived value, reported as "<what> a ≠ b (<option>)"
    join: str = ","  # how a list value is written on the command line


_VERSION = "wrcli version"
_GRID = ("--backbone", "--size", "--crop", "--max-side", "--scale", "--out-size")  # what sets the feature grid
_GRID_OPTIONS = "/".join(_GRID[1:])
_CHANNEL_OPTIONS = "--backbone/--layers"
# the default --shard-size follows the bytes of one image: the options, and the feature sizes they set
_SHARD = (*_GRID, "--layers", "--dtype", _GRID_OPTIONS, _CHANNEL_OPTIONS)
# In report order; the first source whose key is a key's prefix is the key's source.
SOURCES: tuple[Source, ...] = (
    Source("wrcli_version", _VERSION),
    Source("backbone.name", "--backbone"),
    Source("backbone.weights_sha256", "--backbone-weights", ("--backbone",)),
    Source("backbone.layers", "--layers", ("--backbone",)),  # the default is the backbone's last block
    Source("backbone", None, ("--backbone", _VERSION)),  # arch, patch size, width, mean and std of the backbone
    Source("normalisation", None, ("--backbone", _VERSION)),
    Source("upsampler.name", "--upsampler", ("--backbone",)),  # the default depends on the backbone
    Source("upsampler", "--upsampler", ("--backbone",)),  # its checkpoint and configuration
    Source("out_size", "--out-size", join="x"),
    Source("scale", "--scale", ("--out-size",)),
    Source("resize.size", "--size"),
    Source("resize.crop", "--crop"),
    Source("resize.max_side", "--max-side", ("--size",)),  # the default is twice --size
    Source("resize", None, ("--backbone", _VERSION)),  # the patch multiple and wrcli's decoding choices
    Source("dtype", "--dtype"),
    Source("precision", "--precision"),  # resolved: auto is bf16 or fp32 by device
    Source("store.dtype", "--dtype"),
    Source("shard_size", "--shard-size", _SHARD),
    Source("store.shard_size", "--shard-size", _SHARD),
    Source("store.channels", _CHANNEL_OPTIONS, ("--backbone", "--layers"), what="channels"),
    Source("store.height", _GRID_OPTIONS, _GRID, what="feature height"),
    Source("store.width", _GRID_OPTIONS, _GRID, what="feature width"),
)

Leaf = tuple[str, object, object]  # dotted key, old value, new value


def difference(old: dict, new: dict) -> str | None:
    """How the store described by metadata ``old`` differs from the one ``new`` asks for (None: it can be resumed).

    ``was made with other settings (--size 448 ≠ 224)``, ``was written by an older wrcli (store layout 2; this one
    writes 3)``: at most :data:`MAX_SHOWN` options, in the order of
    :data:`SOURCES`; the fingerprints when nothing else tells them apart.
    """
    if old.get("images_sha256") != new.get("images_sha256"):
        n_old, n_new = old["store"].get("n_images"), new["store"]["n_images"]
        counts = f"{n_old} images, now {n_new}" if n_old != n_new else "same count, other names or order"
        return f"holds another image list ({counts})"
    if (old.get("columns") or {}) != (new.get("columns") or {}):
        return f"holds other per-image columns ({_columns_change(old.get('columns') or {}, new.get('columns') or {})})"
    was, now = old["store"].get("layout_version", 1), new["store"]["layout_version"]
    if was != now:
        which = "an older" if was < now else "a newer"
        return f"was written by {which} wrcli (store layout {was}; this one writes {now})"
    layout = [(f"store.{k}", old["store"].get(k), new["store"][k]) for k in LAYOUT_KEYS
              if old["store"].get(k) != new["store"][k]]
    if old.get("fingerprint") == new.get("fingerprint") and not layout:
        return None
    leaves = _leaf_diff(_settings(old), _settings(new)) + layout
    shown = "; ".join(describe(leaves)[:MAX_SHOWN]) or (
        f"fingerprint: {_show(old.get('fingerprint'))} ≠ {_show(new.get('fingerprint'))}")
    return f"was made with other settings ({shown})"


def _columns_change(old: dict, new: dict) -> str:
    """``--keep-columns id,caption ≠ id``, or that the same columns now hold other values."""
    a, b = old.get("names", []), new.get("names", [])
    if a != b:
        return f"--keep-columns {_show(a) if a else 'none'} ≠ {_show(b) if b else 'none'}"
    return "the same columns with other values or types: the table changed"


def describe(leaves: list[Leaf]) -> list[str]:
    """One phrase per option among the differing ``leaves``, in the order of :data:`SOURCES` (keys without a
    source last), leaving out an option that another one in the list explains."""
    first: dict[str, tuple[int, str, Source, object, object]] = {}  # option → its first differing leaf
    for key, a, b in leaves:
        index, source = source_of(key)
        label = source.option or key
        if label not in first or index < first[label][0]:
            first[label] = (index, key, source, a, b)
    changed = set(first)
    kept = sorted((entry for entry in first.values() if not changed.intersection(entry[2].follows)),
                  key=lambda entry: entry[0])
    return [_phrase(key, source, a, b) for _, key, source, a, b in kept]


def source_of(key: str) -> tuple[int, Source]:
    """The index in :data:`SOURCES` and the source of a dotted metadata key (past the end for an unknown key)."""
    for index, source in enumerate(SOURCES):
        if key == source.key or key.startswith(source.key + "."):
            return index, source
    return len(SOURCES), Source(key, None)


def _settings(metadata: dict) -> dict:
    return {k: v for k, v in metadata.items() if k not in IGNORED_KEYS}


def _leaf_diff(a: object, b: object, prefix: str = "") -> list[Leaf]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b), key=str)
                for d in _leaf_diff(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))]
    return [] if a == b else [(prefix, a, b)]


def _phrase(key: str, source: Source, a: object, b: object) -> str:
    values = f"{_show(a, source.join)} ≠ {_show(b, source.join)}"
    if source.option is None:
        return f"{key}: {values}"
    return f"{source.what} {values} ({source.option})" if source.what else f"{source.option} {values}"


def _show(value: object, join: str = ",") -> str:
    """A stored value as the command line writes it: ``unset``, ``on``/``off``, ``5,11``, ``64x64``; cut to 40."""
    if value is None:
        text = "unset"
    elif isinstance(value, bool):
        text = "on" if value else "off"
    elif isinstance(value, list) and value and all(isinstance(v, (int, float, str)) for v in value):
        text = join.join(_show(v) for v in value)
    elif isinstance(value, str) and value.isprintable():
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."
