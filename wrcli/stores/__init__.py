"""Feature stores: Zarr v3 (``*.zarr``) and HDF5 (``*.h5``), same logical content, readable without wrcli.

Protocol for one extraction (any number of processes; shards are assigned statically to ranks)::

    create_store(out, spec)                 # rank 0 only, before anyone opens it (resumes a matching store)
    # ... barrier ...
    with open_writer(out, spec) as w:       # every rank
        for k in my_shards - w.done_shards():
            w.write_shard(k, features, records)
    # ... barrier ...
    finalize_store(out)                     # rank 0 only, once all shards are done

Readers: ``with open_store(out) as s: for name, feats in s: ...``; ``summary(out)`` for ``wrc info``.
The on-disk layouts are documented in :mod:`wrcli.stores.zarr_store` and :mod:`wrcli.stores.hdf5_store`.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

from wrcli.errors import WrcError
from wrcli.stores import hdf5_store, zarr_store
from wrcli.stores.base import (
    ImageRecord, StoreReader, StoreSpec, StoreWriter, difference, remove_stale_tmps, stored_metadata, summarize,
)

__all__ = ["ImageRecord", "StoreReader", "StoreSpec", "StoreWriter", "create_store", "finalize_store", "open_store",
           "open_writer", "store_format", "summary"]

_BACKENDS: dict[str, ModuleType] = {"zarr": zarr_store, "hdf5": hdf5_store}
_SUFFIXES = {".zarr": "zarr", ".h5": "hdf5", ".hdf5": "hdf5"}
_WRITERS = {"zarr": zarr_store.ZarrWriter, "hdf5": hdf5_store.Hdf5Writer}


def store_format(path: str | os.PathLike, format: str | None = None) -> str:
    """``"zarr"`` or ``"hdf5"``: the explicit ``format`` if given, else from the suffix of ``path``."""
    if format is not None:
        if format not in _BACKENDS:
            raise WrcError(f"unknown store format {format!r}; use zarr or hdf5")
        return format
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise WrcError(f"cannot tell the store format of {path}; name it *.zarr or *.h5, or pass --format zarr|hdf5")
    return _SUFFIXES[suffix]


def create_store(path: str | os.PathLike, spec: StoreSpec, *, overwrite: bool = False,
                 format: str | None = None) -> None:
    """Create the store, or leave a matching one in place so that the extraction resumes (rank 0 only).

    A wrcli store made with other settings or images is replaced only with ``overwrite``; anything else that
    exists at ``path`` (except an empty directory) is never deleted.
    """
    path = Path(path)
    backend = _BACKENDS[_format_of(path, format)]
    metadata = stored_metadata(spec)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_tmps(path)
        for found in backend.existing(path):
            reason = difference(found, metadata)
            if reason and not overwrite:
                raise WrcError(f"{path} {reason}; use --overwrite to replace it, or another OUT")
            if reason:
                backend.remove(path)
                break
        backend.ensure(path, spec, metadata)
    except OSError as e:
        raise WrcError(f"cannot create {path}: {e.strerror or e}; choose a writable OUT") from e


def open_writer(path: str | os.PathLike, spec: StoreSpec) -> StoreWriter:
    """A writer for a store made by :func:`create_store` with the same settings (any rank)."""
    path = Path(path)
    fmt = _existing_format(path)
    reason = difference(_BACKENDS[fmt].read_metadata(path), stored_metadata(spec))
    if reason:
        raise WrcError(f"{path} {reason}; every process must use the settings the store was created with")
    return _WRITERS[fmt](path, spec)


def finalize_store(path: str | os.PathLike) -> dict:
    """Seal a store whose shards are all done (rank 0); idempotent. Returns :func:`summary`."""
    path = Path(path)
    _BACKENDS[_existing_format(path)].finalize(path)
    return summary(path)


def open_store(path: str | os.PathLike) -> StoreReader:
    """Open a finished store for reading (a context manager)."""
    path = Path(path)
    return _BACKENDS[_existing_format(path)].open_reader(path)


def summary(path: str | os.PathLike) -> dict:
    """What ``wrc info`` shows: counts, first failures, progress, shape, dtype, bytes on disk, main settings."""
    path = Path(path)
    fmt = _existing_format(path)
    metadata, columns, done, finalized = _BACKENDS[fmt].state(path)
    disk = [path, hdf5_store.parts_dir(path)] if fmt == "hdf5" else [path]
    return summarize(path, fmt, metadata, columns, done, finalized, disk)


def _format_of(path: Path, format: str | None = None) -> str:
    """The explicit format, else the one the suffix names, else what is on disk."""
    if format is None and path.suffix.lower() not in _SUFFIXES:
        if (path / "zarr.json").is_file():
            return "zarr"
        if path.is_file() or hdf5_store.parts_dir(path).is_dir():
            return "hdf5"
    return store_format(path, format)


def _existing_format(path: Path) -> str:
    if not (path.exists() or hdf5_store.parts_dir(path).exists()):
        raise WrcError(f"{path} does not exist; check the path")
    return _format_of(path)
