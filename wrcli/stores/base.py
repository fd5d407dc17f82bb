"""Format-independent parts of the feature stores: spec, records, writer and reader bases, summary, file helpers."""

from __future__ import annotations

import json
import math
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wrcli.defaults import STORE_DTYPES
from wrcli.errors import WrcError
from wrcli.files import tmp_sibling

FEATURE_DIMS = ("image", "channel", "y", "x")
PENDING, OK, FAILED = 0, 1, 2
STATUS_ATTRS = {"flag_values": [PENDING, OK, FAILED], "flag_meanings": "pending ok failed"}
# Per-image columns: name -> (dtype, trailing shape, dimension names).
COLUMNS: dict[str, tuple[str, tuple[int, ...], tuple[str, ...]]] = {
    "path": ("str", (), ("image",)),
    "orig_hw": ("int32", (2,), ("image", "hw")),
    "input_hw": ("int32", (2,), ("image", "hw")),
    "feat_hw": ("int32", (2,), ("image", "hw")),
    "status": ("int8", (), ("image",)),
    "error": ("str", (), ("image",)),
    "file_stat": ("int64", (2,), ("image", "stat")),
}
# What a column holds where nothing is recorded: pending rows, and stores of a layout before the column.
UNRECORDED: dict[str, object] = {"file_stat": -1}
# 2: the done markers record the sizes of the shard's files; 3: ``file_stat``
LAYOUT_VERSION = 3
LAYOUT_KEYS = ("n_images", "channels", "height", "width", "dtype", "shard_size")
# Per-image columns from the input (a tar's ``key``, a table's kept columns) live in the group ``columns/``, written
# whole when the store is created; the metadata's ``columns`` section names them. Stores without one have none.
KEPT_GROUP = "columns"


@dataclass(frozen=True)
class StoreSpec:
    """Shape and settings of a store; shard ``k`` holds images ``[k*shard_size, min((k+1)*shard_size, n))``."""

    n_images: int
    channels: int
    height: int
    width: int
    dtype: str
    shard_size: int
    metadata: dict
    kept: Mapping[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)  # KEPT_GROUP's arrays

    def __post_init__(self) -> None:
        for name in ("n_images", "channels", "height", "width", "shard_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"StoreSpec.{name} must be >= 1, got {getattr(self, name)}")
        if self.dtype not in STORE_DTYPES:
            raise ValueError(f"StoreSpec.dtype must be one of {STORE_DTYPES}, got {self.dtype!r}")
        for key in ("fingerprint", "images_sha256"):
            if key not in self.metadata:
                raise ValueError(f"StoreSpec.metadata needs {key!r}")

    @property
    def n_shards(self) -> int:
        return math.ceil(self.n_images / self.shard_size)

    def shard_range(self, k: int) -> range:
        if not 0 <= k < self.n_shards:
            raise IndexError(f"shard {k} out of range [0, {self.n_shards})")
        return range(k * self.shard_size, min((k + 1) * self.shard_size, self.n_images))


@dataclass(frozen=True)
class ImageRecord:
    """One image's row: recorded name, sizes, valid feature region (top-left of the padded grid), failure reason,
    and the file as it was read: (size in bytes, ``st_mtime_ns``), (-1, -1) when it could not be stat'ed."""

    name: str
    orig_hw: tuple[int, int]
    input_hw: tuple[int, int]
    feat_hw: tuple[int, int]
    error: str = ""
    file_stat: tuple[int, int] = (-1, -1)

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class StoreState:
    """What a store holds now, finished or not: its metadata, per-image columns, done shards (marked done, and
    their files as they were written), whether finalized, and the shards marked done whose files are missing or
    changed since."""

    metadata: dict
    columns: dict[str, np.ndarray]
    done: set[int]
    finalized: bool
    broken: set[int] = field(default_factory=set)

    def inconsistent(self) -> list[int]:
        """The shards that the store lacks although it says otherwise: broken ones, and once finalized any not done."""
        n_shards = spec_from_metadata(self.metadata).n_shards
        return sorted(self.broken | (set(range(n_shards)) - self.done if self.finalized else set()))


class StoreWriter(ABC):
    """Writes whole shards; a shard is marked done only after its data are durably on disk."""

    def __init__(self, path: Path, spec: StoreSpec) -> None:
        self.path, self.spec = path, spec

    @abstractmethod
    def check_shards(self) -> tuple[set[int], set[int]]:
        """The shards marked done whose files are as they were written, and those marked done whose are not
        (missing or of another size: to redo)."""

    def done_shards(self) -> set[int]:
        return self.check_shards()[0]

    @abstractmethod
    def write_shard(self, k: int, features: np.ndarray, records: Sequence[ImageRecord]) -> None: ...

    def io_threads(self) -> list[int]:
        """Native ids of the threads besides the caller's that do this writer's work (none by default)."""
        return []

    def close(self) -> None:
        """Release resources (nothing is buffered between shards)."""

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StoreReader:
    """Read-only view of a finished store: ``records``, ``features(i)``, iteration over ok images, and ``columns``:
    the per-image columns from the input (a tar's ``key``, a table's kept columns; empty for other stores)."""

    def __init__(self, path: Path, format: str, metadata: dict, columns: dict[str, np.ndarray],
                 features: Any, close: Callable[[], None] = lambda: None,
                 kept: Mapping[str, np.ndarray] | None = None) -> None:
        self.path, self.format, self.metadata = path, format, metadata
        self.spec = spec_from_metadata(metadata)
        self.records = records_from_columns(columns)
        self.columns = dict(kept or {})
        self._features, self._close = features, close

    def __len__(self) -> int:
        return self.spec.n_images

    def features(self, i: int) -> np.ndarray:
        """Features of image ``i`` cropped to its valid region: ``(C, h, w)``; ``(C, 0, 0)`` for a failed image."""
        h, w = self.records[i].feat_hw
        return np.asarray(self._features[i, :, :h, :w])

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for i, record in enumerate(self.records):
            if record.ok:
                yield record.name, self.features(i)

    def close(self) -> None:
        self._close()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- metadata --------------------------------------------------------------------------------------------------------

def stored_metadata(spec: StoreSpec) -> dict:
    """The ``wrc`` attribute for a new store: the caller's metadata (JSON round-tripped) plus a ``store`` section."""
    metadata = json.loads(json.dumps(spec.metadata, allow_nan=False))
    layout = {k: getattr(spec, k) if k == "dtype" else int(getattr(spec, k)) for k in LAYOUT_KEYS}
    metadata["store"] = {"layout_version": LAYOUT_VERSION, **layout}
    return metadata


def kept_metadata(kept: Mapping[str, np.ndarray]) -> dict:
    """The metadata's ``columns`` section for the kept columns: names in order and their dtypes."""
    return {"names": list(kept), "dtypes": {name: "str" if v.dtype == object else v.dtype.name for name, v in kept.items()}}


def kept_names(metadata: dict) -> list[str]:
    """The names of the per-image columns from the input that a store holds (none before they existed)."""
    return list((metadata.get("columns") or {}).get("names", []))


def spec_from_metadata(metadata: dict) -> StoreSpec:
    layout = metadata["store"]
    user = {k: v for k, v in metadata.items() if k != "store"}
    return StoreSpec(**{k: layout[k] for k in LAYOUT_KEYS}, metadata=user)


def is_wrc_metadata(metadata: object) -> bool:
    return isinstance(metadata, dict) and "fingerprint" in metadata and isinstance(metadata.get("store"), dict)


def foreign_error(path: Path) -> WrcError:
    return WrcError(f"{path} exists and is not a wrcli store; move it away or choose another OUT "
                    "(it is never deleted, even with --overwrite)")


def incomplete_error(path: Path, missing: Sequence[int], n_shards: int) -> WrcError:
    first = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
    return WrcError(f"{path} is incomplete: {len(missing)} of {n_shards} shards are not written ({first}); "
                    "rerun the same extract command to finish it")


def inconsistent_error(path: Path, shards: Sequence[int]) -> WrcError:
    return WrcError(f"{path} is inconsistent: {shard_list(shards)} missing or changed; rerun the same extract command")


def shard_list(shards: Sequence[int], most: int = 8) -> str:
    """``shards 1, 4, 9`` (the first ``most``, then ``...``)."""
    return ("shard " if len(shards) == 1 else "shards ") + ", ".join(map(str, shards[:most])) + (
        ", ..." if len(shards) > most else "")


def unfinished_error(path: Path) -> WrcError:
    return WrcError(f"{path} is not finished; rerun the same extract command to complete it (wrc info shows progress)")


# -- records ---------------------------------------------------------------------------------------------------------

def check_shard(spec: StoreSpec, k: int, features: np.ndarray, records: Sequence[ImageRecord]) -> range:
    """Validate a shard's arguments against the spec; returns its image range."""
    rng = spec.shard_range(k)
    expected = (len(rng), spec.channels, spec.height, spec.width)
    if features.shape != expected or features.dtype != np.dtype(spec.dtype):
        raise ValueError(f"shard {k}: features must be {spec.dtype} {expected}, got {features.dtype} {features.shape}")
    if len(records) != len(rng):
        raise ValueError(f"shard {k}: expected {len(rng)} records, got {len(records)}")
    return rng


def gather_columns(spec: StoreSpec, done: set[int],
                   read: Callable[[int], dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], set[int]]:
    """Per-image columns over all images, filled from ``read(k)`` (shard ``k``'s rows) for the done shards, pending
    rows elsewhere; and the done shards whose rows cannot be read (damaged bytes)."""
    columns = unrecorded_columns(spec.n_images)
    unreadable = set()
    for k in sorted(done):
        rng = spec.shard_range(k)
        try:
            rows = read(k)
        except (OSError, RuntimeError, ValueError, KeyError):  # what zarr's codecs and h5py raise on damaged bytes
            unreadable.add(k)
            continue
        for name, values in rows.items():
            columns[name][rng.start:rng.stop] = values
    return columns, unreadable


def unrecorded_columns(n: int, names: Iterable[str] = COLUMNS) -> dict[str, np.ndarray]:
    """The columns ``names`` of ``n`` images with nothing recorded: "" text, :data:`UNRECORDED` or 0 numbers."""
    columns = {}
    for name in names:
        dtype, tail, _ = COLUMNS[name]
        text = dtype == "str"
        columns[name] = np.full((n, *tail), "" if text else UNRECORDED.get(name, 0), dtype=object if text else dtype)
    return columns


def with_all_columns(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``columns`` read from a store, plus those its layout lacks (``file_stat`` before layout 3) as unrecorded."""
    n = len(columns["status"])
    return {**columns, **unrecorded_columns(n, [name for name in COLUMNS if name not in columns])}


def columns_from_records(records: Sequence[ImageRecord]) -> dict[str, np.ndarray]:
    return {
        "path": np.array([r.name for r in records], dtype=object),
        "orig_hw": np.array([r.orig_hw for r in records], dtype=np.int32).reshape(-1, 2),
        "input_hw": np.array([r.input_hw for r in records], dtype=np.int32).reshape(-1, 2),
        "feat_hw": np.array([r.feat_hw for r in records], dtype=np.int32).reshape(-1, 2),
        "status": np.array([FAILED if r.error else OK for r in records], dtype=np.int8),
        "error": np.array([r.error for r in records], dtype=object),
        "file_stat": np.array([r.file_stat for r in records], dtype=np.int64).reshape(-1, 2),
    }


def records_from_columns(columns: dict[str, np.ndarray]) -> list[ImageRecord]:
    columns = with_all_columns(columns)
    orig, input_, feat, stat = (columns[k].tolist() for k in ("orig_hw", "input_hw", "feat_hw", "file_stat"))
    return [ImageRecord(str(name), tuple(o), tuple(i), tuple(f), str(e), tuple(s))
            for name, o, i, f, e, s in zip(columns["path"], orig, input_, feat, columns["error"], stat)]


def summarize(path: Path, format: str, state: StoreState, paths: Sequence[Path], n_failures: int = 5) -> dict:
    """The ``wrc info`` dictionary of the store at ``path``, whose bytes are under ``paths``. Only the images of
    done shards count as ok or failed; the others are pending. The recorded ``file_stat`` is not compared with the
    image files here (``wrc info`` has no SRC): a rerun of ``wrc extract`` does that."""
    metadata, columns = state.metadata, state.columns
    spec = spec_from_metadata(metadata)
    counted = np.zeros(spec.n_images, dtype=bool)
    for k in state.done:
        rng = spec.shard_range(k)
        counted[rng.start:rng.stop] = True
    status = np.where(counted, columns["status"], PENDING)
    failed = np.flatnonzero(status == FAILED)[:n_failures]
    inconsistent = state.inconsistent()
    return {
        "format": format,
        "path": str(path),
        "n_images": spec.n_images,
        "ok": int((status == OK).sum()),
        "failed": int((status == FAILED).sum()),
        "pending": int((status == PENDING).sum()),
        "failures": [{"name": str(columns["path"][i]), "error": str(columns["error"][i])} for i in failed],
        "complete": len(state.done) == spec.n_shards,
        "finalized": state.finalized,
        "inconsistent": inconsistent,
        "done_shards": len(state.done),
        "n_shards": spec.n_shards,
        "shape": [spec.n_images, spec.channels, spec.height, spec.width],
        "dtype": spec.dtype,
        "bytes_on_disk": disk_bytes(*paths),
        "columns": kept_names(metadata),
        **{key: metadata.get(key) for key in ("backbone", "upsampler", "scale", "resize", "precision")},
    }


# -- files -----------------------------------------------------------------------------------------------------------

def discard(path: Path) -> None:
    """Delete a file or directory tree; a tree is first renamed away so a crash never leaves half of it."""
    if path.is_dir() and not path.is_symlink():
        trash = tmp_sibling(path)  # what a killed removal leaves, files.remove_stale_tmps finds
        os.replace(path, trash)
        shutil.rmtree(trash)
    else:
        path.unlink(missing_ok=True)


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def disk_bytes(*paths: Path) -> int:
    """Total size of the files under ``paths``."""
    total = 0
    for p in paths:
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum((Path(d) / f).stat().st_size for d, _, files in os.walk(p) for f in files)
    return total
