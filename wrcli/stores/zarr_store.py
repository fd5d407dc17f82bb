"""Zarr v3 feature stores (``*.zarr`` directories), readable with plain zarr, ``xarray.open_zarr`` and dask.

Layout::

    OUT.zarr/zarr.json      root group; attribute ``wrc`` (JSON object: settings, ``store`` section with the layout
                            and, once finalized, the ok/failed counts); consolidated metadata once finalized
    features/               (N, C, H, W) float16|float32, dims (image, channel, y, x), fill 0; sharding codec with
                            one shard = ``shard_size`` images = one object ``features/c/<k>/0/0/0``, inner chunk =
                            one image, zstd level 1 (zero padding costs ~nothing, a failed image ~0.4 KB)
    path/, error/           (N,) variable-length UTF-8 strings, dims (image,)
    orig_hw/, input_hw/,    (N, 2) int32, dims (image, hw); ``feat_hw`` is the valid top-left region of the grid
    feat_hw/
    status/                 (N,) int8: 0 pending, 1 ok, 2 failed (CF flag attributes)
    file_stat/              (N, 2) int64, dims (image, stat), fill -1: (size in bytes, st_mtime_ns) of the image file
                            as it was read, (-1, -1) if it could not be stat'ed; a rerun of extract redoes the shards
                            of the images whose file now differs (``wrc info`` does not look at the sources)
    shard_done/             (n_shards, 8) int64, one object per shard, written last: the sizes in bytes of the shard's
                            objects in features/ and the per-image arrays (attribute ``objects``; 0: none, as zarr
                            writes no chunk equal to the fill value) when it was written; all 0: not done
    columns/<name>          (N,) per-image columns from the input, dims (image,), written whole when the store is
                            created (tar shards: ``key``; tables: the ``--keep-columns``): UTF-8 strings, int64,
                            float64 (NaN for nulls) or bool; ``xr.open_zarr(OUT, group="columns")`` reads them

Per-image arrays are chunked by shard, so every object belongs to exactly one shard and one writer. A shard
counts as done only while its objects have the recorded sizes: a deleted or truncated object makes it pending
again (a rerun redoes it, ``wrc info`` reports it). Layout 3 added ``file_stat``; stores of layouts 1 and 2 read
it as (-1, -1), and their ``shard_done`` (layout 1: (n_shards,) of 0/1) records the objects they have.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import ZstdCodec
from zarr.storage import LocalStore

from wrcli.errors import WrcError
from wrcli.files import atomic_write, fsync
from wrcli.stores.backend import StoreBackend
from wrcli.stores.base import (
    COLUMNS, FAILED, FEATURE_DIMS, KEPT_GROUP, OK, STATUS_ATTRS, UNRECORDED, ImageRecord, StoreReader, StoreSpec,
    StoreState, StoreWriter, check_shard, columns_from_records, foreign_error, gather_columns, incomplete_error, inconsistent_error,
    is_empty_dir, is_wrc_metadata, kept_names, spec_from_metadata, unfinished_error, with_all_columns,
)

OBJECTS = ("features", *COLUMNS)  # the arrays with one object per shard, in the order shard_done records them
KEPT_CHUNK = 1 << 16  # images per chunk of a column from the input


class ZarrBackend(StoreBackend):
    """A Zarr v3 directory store (layout above)."""

    format = "zarr"
    suffixes = (".zarr",)

    def paths(self, path: Path) -> list[Path]:
        return [path]

    def detect(self, path: Path) -> bool:
        return (path / "zarr.json").is_file()

    def existing(self, path: Path) -> list[dict]:
        if not (path.exists() or path.is_symlink()) or is_empty_dir(path):
            return []
        metadata = _read_wrc(path)
        if metadata is None:
            raise foreign_error(path)
        return [metadata]

    def read_metadata(self, path: Path) -> dict:
        metadata = _read_wrc(path)
        if metadata is None:
            raise WrcError(f"{path} is not a wrcli feature store (no wrc metadata in zarr.json); check the path")
        return metadata

    def ensure(self, path: Path, spec: StoreSpec, metadata: dict) -> None:
        if not self.detect(path):
            with atomic_write(path) as tmp:
                _create(tmp, spec, metadata)

    def open_writer(self, path: Path, spec: StoreSpec) -> ZarrWriter:
        return ZarrWriter(path, spec)

    def finalize(self, path: Path) -> None:
        """Check that every shard is done, drop temporaries of killed writers, record the counts and consolidate
        (unless a finalize already recorded these counts: its metadata still holds, as writing shards leaves it)."""
        store = LocalStore(path)
        group = zarr.open_group(store, mode="r+", use_consolidated=False)
        metadata = dict(group.attrs["wrc"])
        spec = spec_from_metadata(metadata)
        missing = sorted(set(range(spec.n_shards)) - _check(path, group)[0])
        if missing:
            raise incomplete_error(path, missing, spec.n_shards)
        status = group["status"][:]
        counts = {"ok": int((status == OK).sum()), "failed": int((status == FAILED).sum())}
        for stale in path.rglob("*.partial"):
            stale.unlink()
        if all(metadata["store"].get(key) == value for key, value in counts.items()):
            return
        group.update_attributes({"wrc": {**metadata, "store": {**metadata["store"], **counts}}})
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Consolidated metadata is currently not part")  # of the v3 spec
            zarr.consolidate_metadata(store)

    def state(self, path: Path) -> StoreState:
        group = self._open_read(path)
        metadata = group.attrs["wrc"]
        spec = spec_from_metadata(metadata)
        done, broken = _check(path, group)
        columns, unreadable = gather_columns(spec, done, lambda k: _rows(group, spec.shard_range(k)))
        return StoreState(metadata, columns, done - unreadable, finalized="ok" in metadata["store"],
                          broken=broken | unreadable)

    def decode_shard(self, path: Path, k: int) -> None:
        group = self._open_read(path)
        rng = spec_from_metadata(group.attrs["wrc"]).shard_range(k)
        for name in _objects(group):
            group[name][rng.start:rng.stop]

    def open_reader(self, path: Path) -> StoreReader:
        group = self._open_read(path)
        metadata = group.attrs["wrc"]
        if "ok" not in metadata["store"]:
            raise unfinished_error(path)
        missing = set(range(spec_from_metadata(metadata).n_shards)) - _check(path, group)[0]
        if missing:
            raise inconsistent_error(path, sorted(missing))
        columns = _rows(group, range(spec_from_metadata(metadata).n_images))
        return StoreReader(path, self.format, metadata, columns, group["features"], kept=_kept(group))

    def _open_read(self, path: Path) -> zarr.Group:
        self.read_metadata(path)
        return zarr.open_group(LocalStore(path, read_only=True), mode="r")


def _create(path: Path, spec: StoreSpec, metadata: dict) -> None:
    """Write the empty arrays of a store for ``spec`` at ``path`` (a folder that does not exist yet)."""
    n, c, h, w, s = spec.n_images, spec.channels, spec.height, spec.width, spec.shard_size
    group = zarr.create_group(LocalStore(path), attributes={"wrc": metadata}, zarr_format=3)
    group.create_array("features", shape=(n, c, h, w), shards=(s, c, h, w), chunks=(1, c, h, w), dtype=spec.dtype,
                       fill_value=0, compressors=ZstdCodec(level=1), dimension_names=FEATURE_DIMS)
    for name, (dtype, tail, dims) in COLUMNS.items():
        text = dtype == "str"
        group.create_array(name, shape=(n, *tail), chunks=(s, *tail), dtype=str if text else dtype,
                           fill_value="" if text else UNRECORDED.get(name, 0), dimension_names=dims,
                           attributes=STATUS_ATTRS if name == "status" else {})
    group.create_array("shard_done", shape=(spec.n_shards, len(OBJECTS)), chunks=(1, len(OBJECTS)), dtype="int64",
                       fill_value=0, compressors=None, dimension_names=("shard", "object"),
                       attributes={"objects": list(OBJECTS)})
    if spec.kept:
        kept = group.create_group(KEPT_GROUP)
        for name, values in spec.kept.items():
            text = values.dtype == object
            array = kept.create_array(name, shape=(n,), chunks=(min(n, KEPT_CHUNK),), dtype=str if text else values.dtype,
                                      fill_value="" if text else 0, dimension_names=("image",))
            array[:] = values


def _kept(group: zarr.Group) -> dict[str, np.ndarray]:
    """The per-image columns from the input, in the order the metadata names them."""
    kept = {name: group[f"{KEPT_GROUP}/{name}"][:] for name in kept_names(group.attrs["wrc"])}
    return {name: v.astype(object) if v.dtype.kind in "TU" else v for name, v in kept.items()}  # text as in HDF5


def _rows(group: zarr.Group, rng: range) -> dict[str, np.ndarray]:
    """The per-image columns of images ``rng``, those the store's layout lacks as unrecorded."""
    present = set(group.array_keys())
    return with_all_columns({name: group[name][rng.start:rng.stop] for name in COLUMNS if name in present})


def _objects(group: zarr.Group) -> list[str]:
    """The arrays with one object per shard that this store has (its ``shard_done`` says; layout 1: every one it
    has of :data:`OBJECTS`)."""
    recorded = group["shard_done"].attrs.get("objects")
    return list(recorded) if recorded else [name for name in OBJECTS if name in set(group.array_keys())]


def _object(path: Path, array: zarr.Array, k: int) -> Path:
    """The file holding shard ``k`` of ``array`` (zarr writes each object via a temporary file and a rename)."""
    return path / array.path / array.metadata.encode_chunk_key((k,) + (0,) * (array.ndim - 1))


def _sizes(files: Sequence[Path]) -> list[int]:
    return [f.stat().st_size if f.is_file() else 0 for f in files]


def _check(path: Path, group: zarr.Group) -> tuple[set[int], set[int]]:
    """The shards marked done whose objects have the recorded sizes, and those marked done whose do not. A store of
    layout 1 (wrcli before the sizes were recorded: ``shard_done`` (n_shards,) of 0/1) is read as it says."""
    markers = group["shard_done"][:]
    if markers.ndim == 1:
        return {int(k) for k in np.flatnonzero(markers)}, set()
    arrays = [group[name] for name in _objects(group)]
    done, broken = set(), set()
    for k, recorded in enumerate(markers.tolist()):
        if recorded[0] > 0:
            ok = _sizes([_object(path, a, k) for a in arrays]) == recorded
            (done if ok else broken).add(k)
    return done, broken


class ZarrWriter(StoreWriter):
    """Writes whole shards into a store made by :meth:`ZarrBackend.ensure`; metadata files are never touched."""

    def __init__(self, path: Path, spec: StoreSpec) -> None:
        super().__init__(path, spec)
        group = zarr.open_group(LocalStore(path), mode="r+", use_consolidated=False)
        self._group = group
        self._arrays = {name: group[name] for name in OBJECTS}
        # zarr by default compares every inner chunk with the fill value to skip empty ones, bytewise through a
        # void view (~30 ms per image at 448, more than compressing it); an all-zero chunk costs ~0.4 KB in zstd
        self._arrays["features"] = self._arrays["features"].with_config({"write_empty_chunks": True})
        self._done = group["shard_done"]

    def check_shards(self) -> tuple[set[int], set[int]]:
        return _check(self.path, self._group)

    def io_threads(self) -> list[int]:
        """zarr's event-loop thread and its codec pool (compression runs there), as far as they exist yet:
        the pool's later threads are started by the loop thread and inherit its scheduling."""
        return [t.native_id for t in threading.enumerate()
                if t.name.startswith(("zarr_io", "zarr_pool")) and t.native_id is not None]

    def write_shard(self, k: int, features: np.ndarray, records: Sequence[ImageRecord]) -> None:
        rng = check_shard(self.spec, k, features, records)
        rows = slice(rng.start, rng.stop)
        files = [_object(self.path, array, k) for array in self._arrays.values()]
        self._done[k] = 0  # writing the fill value deletes the marker: a rewrite is not done until complete
        for f in files:  # a rewrite starts from nothing (zarr would merge into a damaged shard object)
            f.unlink(missing_ok=True)
        try:
            self._arrays["features"][rows] = features
            for name, values in columns_from_records(records).items():
                self._arrays[name][rows] = values
            fsync(files)
        except BaseException:
            for f in files:  # frees the space (ENOSPC) and leaves no half shard behind
                f.unlink(missing_ok=True)
            raise
        self._done[k] = _sizes(files)
        fsync([_object(self.path, self._done, k)])


def _read_wrc(path: Path) -> dict | None:
    """The ``wrc`` attribute of the root group, read from the v3 ``zarr.json`` (None if not a wrcli store)."""
    try:
        root = json.loads((path / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(root, dict) or root.get("node_type") != "group":
        return None
    metadata = root.get("attributes", {}).get("wrc")
    return metadata if is_wrc_metadata(metadata) else None
