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
    shard_done/             (n_shards,) uint8, one object per shard, written last: 1 = shard complete

Per-image arrays are chunked by shard, so every object belongs to exactly one shard and one writer.
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
    COLUMNS, FAILED, FEATURE_DIMS, OK, STATUS_ATTRS, ImageRecord, StoreReader, StoreSpec, StoreState, StoreWriter,
    check_shard, columns_from_records, foreign_error, incomplete_error, is_empty_dir, is_wrc_metadata,
    spec_from_metadata, unfinished_error,
)


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
        """Check that every shard is done, record the counts, drop temporaries of killed writers, consolidate."""
        store = LocalStore(path)
        group = zarr.open_group(store, mode="r+", use_consolidated=False)
        metadata = dict(group.attrs["wrc"])
        spec = spec_from_metadata(metadata)
        missing = np.flatnonzero(group["shard_done"][:] == 0).tolist()
        if missing:
            raise incomplete_error(path, missing, spec.n_shards)
        status = group["status"][:]
        metadata["store"] = {**metadata["store"], "ok": int((status == OK).sum()),
                             "failed": int((status == FAILED).sum())}
        group.update_attributes({"wrc": metadata})
        for stale in path.rglob("*.partial"):
            stale.unlink()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Consolidated metadata is currently not part")  # of the v3 spec
            zarr.consolidate_metadata(store)

    def state(self, path: Path) -> StoreState:
        group = self._open_read(path)
        metadata = group.attrs["wrc"]
        columns = {name: group[name][:] for name in COLUMNS}
        done = {int(k) for k in np.flatnonzero(group["shard_done"][:])}
        return StoreState(metadata, columns, done, finalized="ok" in metadata["store"])

    def open_reader(self, path: Path) -> StoreReader:
        group = self._open_read(path)
        metadata = group.attrs["wrc"]
        if "ok" not in metadata["store"]:
            raise unfinished_error(path)
        columns = {name: group[name][:] for name in COLUMNS}
        return StoreReader(path, self.format, metadata, columns, group["features"])

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
                           fill_value="" if text else 0, dimension_names=dims,
                           attributes=STATUS_ATTRS if name == "status" else {})
    group.create_array("shard_done", shape=(spec.n_shards,), chunks=(1,), dtype="uint8", fill_value=0,
                       compressors=None, dimension_names=("shard",))


class ZarrWriter(StoreWriter):
    """Writes whole shards into a store made by :meth:`ZarrBackend.ensure`; metadata files are never touched."""

    def __init__(self, path: Path, spec: StoreSpec) -> None:
        super().__init__(path, spec)
        group = zarr.open_group(LocalStore(path), mode="r+", use_consolidated=False)
        self._arrays = {name: group[name] for name in ("features", *COLUMNS)}
        # zarr by default compares every inner chunk with the fill value to skip empty ones, bytewise through a
        # void view (~30 ms per image at 448, more than compressing it); an all-zero chunk costs ~0.4 KB in zstd
        self._arrays["features"] = self._arrays["features"].with_config({"write_empty_chunks": True})
        self._done = group["shard_done"]

    def done_shards(self) -> set[int]:
        return {int(k) for k in np.flatnonzero(self._done[:])}

    def io_threads(self) -> list[int]:
        """zarr's event-loop thread and its codec pool (compression runs there), as far as they exist yet:
        the pool's later threads are started by the loop thread and inherit its scheduling."""
        return [t.native_id for t in threading.enumerate()
                if t.name.startswith(("zarr_io", "zarr_pool")) and t.native_id is not None]

    def write_shard(self, k: int, features: np.ndarray, records: Sequence[ImageRecord]) -> None:
        rng = check_shard(self.spec, k, features, records)
        rows = slice(rng.start, rng.stop)
        files = [self._object(array, k) for array in self._arrays.values()]
        self._done[k] = 0  # writing the fill value deletes the marker: a rewrite is not done until complete
        try:
            self._arrays["features"][rows] = features
            for name, values in columns_from_records(records).items():
                self._arrays[name][rows] = values
            fsync(files)
        except BaseException:
            for f in files:  # frees the space (ENOSPC) and leaves no half shard behind
                f.unlink(missing_ok=True)
            raise
        self._done[k] = 1
        fsync([self._object(self._done, k)])

    def _object(self, array: zarr.Array, k: int) -> Path:
        """The file holding shard ``k`` of ``array`` (zarr writes each object via a temporary file and a rename)."""
        return self.path / array.path / array.metadata.encode_chunk_key((k,) + (0,) * (array.ndim - 1))


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
