"""Feature stores: Zarr v3 (``*.zarr``) and HDF5 (``*.h5``), same logical content, readable without wrcli.

Protocol for one extraction (any number of processes; shards are assigned statically to ranks)::

    with lock_store(out, job):              # rank 0 only, for the whole run; other ranks: check_job(out, job)
        create_store(out, spec)             # rank 0 only, before anyone opens it (resumes a matching store)
        # ... barrier ...
        with open_writer(out, spec) as w:   # every rank
            for k in my_shards - w.done_shards():
                w.write_shard(k, features, records)
        # ... barrier ...
        finalize_store(out)                 # rank 0 only, once all shards are done

Readers: ``with open_store(out) as s: for name, feats in s: ...``; ``summary(out)`` for ``wrc info``;
``export_store(out, "single.h5")`` for ``wrc export``.
The on-disk layouts are documented in :mod:`wrcli.stores.zarr_store` and :mod:`wrcli.stores.hdf5_store`; each
implements :class:`wrcli.stores.backend.StoreBackend`, and :data:`BACKENDS` (format name → backend) is the only
place that lists them.
"""

from __future__ import annotations

import os
from pathlib import Path

from wrcli.errors import WrcError, first_line
from wrcli.files import remove_stale_tmps
from wrcli.stores.backend import StoreBackend
from wrcli.stores.base import (
    ImageRecord, StoreReader, StoreSpec, StoreState, StoreWriter, disk_bytes, stored_metadata, summarize,
)
from wrcli.stores.hdf5_store import Hdf5Backend
from wrcli.stores.lock import StoreLock, check_job, current_job
from wrcli.stores.mismatch import difference
from wrcli.stores.zarr_store import ZarrBackend

__all__ = ["BACKENDS", "ImageRecord", "StoreBackend", "StoreLock", "StoreReader", "StoreSpec", "StoreWriter",
           "check_job", "create_store", "current_job", "export_store", "finalize_store", "lock_store", "open_store",
           "open_writer", "resume_state", "store_format", "summary"]

BACKENDS: dict[str, StoreBackend] = {b.format: b for b in (ZarrBackend(), Hdf5Backend())}
_SUFFIXES = {suffix: b.format for b in BACKENDS.values() for suffix in b.suffixes}


def store_format(path: str | os.PathLike, format: str | None = None) -> str:
    """``"zarr"`` or ``"hdf5"``: the explicit ``format`` if given, else from the suffix of ``path``."""
    if format is not None:
        if format not in BACKENDS:
            raise WrcError(f"unknown store format {format!r}; use {' or '.join(BACKENDS)}")
        return format
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        names, formats = " or ".join(f"*{b.suffixes[0]}" for b in BACKENDS.values()), "|".join(BACKENDS)
        raise WrcError(f"cannot tell the store format of {path}; name it {names}, or pass --format {formats}")
    return _SUFFIXES[suffix]


def lock_store(path: str | os.PathLike, job: str | None = None) -> StoreLock:
    """The lease that makes ``job`` (default: :func:`current_job`) the store's only writer, to use as a context
    manager around create, write and finalize (rank 0); WrcError naming the other writer if one holds it."""
    return StoreLock(Path(path), job or current_job())


def create_store(path: str | os.PathLike, spec: StoreSpec, *, overwrite: bool = False,
                 format: str | None = None) -> None:
    """Create the store, or leave a matching one in place so that the extraction resumes (rank 0 only).

    A wrcli store made with other settings or images is replaced only with ``overwrite``; anything else that
    exists at ``path`` (except an empty directory) is never deleted.
    """
    path = Path(path)
    backend = _backend_of(path, format)
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
    backend = _existing_backend(path)
    reason = difference(backend.read_metadata(path), stored_metadata(spec))
    if reason:
        raise WrcError(f"{path} {reason}; every process must use the settings the store was created with")
    return backend.open_writer(path, spec)


def resume_state(path: str | os.PathLike, spec: StoreSpec, *,
                 format: str | None = None) -> tuple[StoreState | None, str]:
    """What the store at ``path`` holds if ``spec`` resumes it (same settings, images and layout; reads only),
    else None and why not: ``there is no store yet`` or ``it`` + :func:`difference`'s reason. WrcError
    (:func:`~wrcli.stores.base.foreign_error`) if something else is there."""
    path = Path(path)
    backend = _backend_of(path, format)
    found = backend.existing(path)
    if not found:
        return None, "there is no store yet"
    metadata = stored_metadata(spec)
    reason = next((r for r in (difference(f, metadata) for f in found) if r), None)
    return (None, f"it {reason}") if reason else (backend.state(path), "")


def finalize_store(path: str | os.PathLike) -> dict:
    """Seal a store whose shards are all done (rank 0); idempotent. Returns :func:`summary`."""
    path = Path(path)
    _existing_backend(path).finalize(path)
    return summary(path)


def open_store(path: str | os.PathLike) -> StoreReader:
    """Open a finished store for reading (a context manager)."""
    path = Path(path)
    return _existing_backend(path).open_reader(path)


def summary(path: str | os.PathLike, verify: bool = False) -> dict:
    """What ``wrc info`` shows: counts, first failures, progress, consistency, shape, dtype, bytes on disk, main
    settings; with ``verify``, also ``verify``: the shards whose bytes cannot be read back (every shard decoded)."""
    path = Path(path)
    backend = _existing_backend(path)
    state = backend.state(path)
    info = summarize(path, backend.format, state, backend.paths(path))
    if verify:
        info["verify"] = _verify(backend, path, state)
    return info


def export_store(path: str | os.PathLike, dest: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Copy the finished store at ``path`` (either format) into one self-contained HDF5 file ``dest``
    (:mod:`wrcli.stores.export`); WrcError if the store is unfinished or inconsistent, or the space is short."""
    from wrcli.stores.export import export_single

    path = Path(path)
    backend = _existing_backend(path)
    try:
        with backend.open_reader(path) as reader:
            return export_single(reader, disk_bytes(*backend.paths(path)), dest, overwrite=overwrite)
    except OSError as e:
        raise WrcError(f"cannot export {path} to {dest}: {e.strerror or e}") from e


def _verify(backend: StoreBackend, path: Path, state: StoreState) -> list[dict]:
    """``{"shard": k, "error": ...}`` for each shard that is missing, changed, or does not decode."""
    problems = {k: "missing or changed since it was written" for k in state.inconsistent()}
    for k in sorted(state.done):
        try:
            backend.decode_shard(path, k)
        except Exception as exc:  # noqa: BLE001 - whatever the format's library raises on damaged bytes is reported
            problems[k] = f"does not decode: {first_line(exc)}"
    return [{"shard": k, "error": problems[k]} for k in sorted(problems)]


def _backend_of(path: Path, format: str | None = None) -> StoreBackend:
    """The explicit format's backend, else the suffix's, else the first that detects its layout at ``path``."""
    if format is None and path.suffix.lower() not in _SUFFIXES:
        detected = next((b for b in BACKENDS.values() if b.detect(path)), None)
        if detected is not None:
            return detected
    return BACKENDS[store_format(path, format)]


def _existing_backend(path: Path) -> StoreBackend:
    if not any(b.exists(path) for b in BACKENDS.values()):
        raise WrcError(f"{path} does not exist; check the path")
    return _backend_of(path)
