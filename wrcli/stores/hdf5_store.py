"""HDF5 feature stores (``*.h5`` / ``*.hdf5``): one part file per shard, assembled by a virtual dataset.

**OUT.parts/ must travel with OUT.** ``OUT`` holds ``features`` as a virtual dataset whose sources are the part
files, referenced by the relative path ``<OUT name>.parts/shard-XXXXXXXX.h5``: move or copy the pair together, into
one directory, and keep both names. HDF5 looks for the parts next to ``OUT`` first, then in the working folder. A
part that cannot be found, or that belongs to a store made with other settings or images, reads as NaN (the virtual
dataset's fill value: the sources are named by a hash of the store's identity); wrcli's own reader refuses such a
store with one line. ``wrc export OUT single.h5`` makes one self-contained file (:mod:`wrcli.stores.export`).

Layout (plain h5py reads it)::

    OUT.parts/wrc.json              the ``wrc`` metadata, written when the store is created; ``store.dataset`` is
                                    ``features-<hash>``, the second name of each part's features
    OUT.parts/columns.h5            only for inputs with per-image columns (tar shards: ``key``; tables: the
                                    ``--keep-columns``), written with wrc.json: group ``columns``, one (N,) dataset
                                    per column
    OUT.parts/shard-00000123.h5     shard 123: ``features`` (n, C, H, W), one lzf chunk per image, fill 0, also
                                    linked as ``store.dataset``, plus the per-image datasets; written under a
                                    temporary name and renamed into place (a killed writer cannot corrupt it)
    OUT.parts/shard-00000123.done   the shard's done marker, written after its part: ``{"bytes": <part size>}``;
                                    the shard counts as done only while its part has that size
    OUT                             written by finalize: ``features`` (N, C, H, W) virtual over the parts'
                                    ``store.dataset``; ``path``, ``error`` (UTF-8 strings: read them with
                                    ``.asstr()[:]``); ``orig_hw``, ``input_hw``, ``feat_hw`` (N, 2) int32
                                    (``feat_hw``: valid top-left region of the padded grid); ``file_stat`` (N, 2)
                                    int64 (size, st_mtime_ns) of the image file as read, (-1, -1) if not stat'ed;
                                    ``status`` (N,) int8 0 pending / 1 ok / 2 failed; attribute ``wrc`` (JSON
                                    string); dimension labels on every dataset; group ``columns``: the
                                    per-image columns from the input, copied from ``columns.h5``

Layout 3 added ``file_stat`` (a rerun compares it with the files and redoes the shards of changed images; ``wrc
info`` does not, having no SRC); stores of layouts 1 and 2 read it as (-1, -1).

Every file is built in memory and then written under a private temporary name and renamed: a full disk is then an
ordinary OSError (HDF5's own failed writes end the process), and HDF5 file locking can stay off (it fails on some
cluster file systems).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import h5py
import numpy as np

from wrcli.errors import WrcError
from wrcli.files import TMP_TAG, atomic_write, remove_stale_tmps
from wrcli.stores.backend import StoreBackend
from wrcli.stores.base import (
    COLUMNS, FAILED, FEATURE_DIMS, KEPT_GROUP, OK, STATUS_ATTRS, ImageRecord, StoreReader, StoreSpec, StoreState, StoreWriter,
    check_shard, columns_from_records, foreign_error, gather_columns, incomplete_error, inconsistent_error,
    is_empty_dir, is_wrc_metadata, kept_names, shard_list, spec_from_metadata, unfinished_error, with_all_columns,
)

_MARKER = re.compile(r"shard-(\d{8})\.done")
KEPT_FILE = "columns.h5"
_TEXT = h5py.string_dtype("utf-8")


def parts_dir(path: Path) -> Path:
    return path.with_name(path.name + ".parts")


def part_name(k: int) -> str:
    return f"shard-{k:08d}.h5"


def marker_name(k: int) -> str:
    return f"shard-{k:08d}.done"


class Hdf5Backend(StoreBackend):
    """An HDF5 index file ``OUT`` over the part files in ``OUT.parts/`` (layout above)."""

    format = "hdf5"
    suffixes = (".h5", ".hdf5")

    def paths(self, path: Path) -> list[Path]:
        return [path, parts_dir(path)]

    def detect(self, path: Path) -> bool:
        return path.is_file() or parts_dir(path).is_dir()

    def existing(self, path: Path) -> list[dict]:
        """The ``wrc`` metadata found in ``OUT.parts/`` and in ``OUT``."""
        found = []
        for where, read in ((parts_dir(path), lambda p: _read_json(p / "wrc.json")), (path, _index_metadata)):
            if (where.exists() or where.is_symlink()) and not is_empty_dir(where):
                metadata = read(where)
                if metadata is None:
                    raise foreign_error(where)
                found.append(metadata)
        return found

    def ensure(self, path: Path, spec: StoreSpec, metadata: dict) -> None:
        """Create ``OUT.parts/`` holding ``wrc.json`` unless it exists (``OUT`` is written by finalize)."""
        if is_empty_dir(path):
            path.rmdir()
        if _single_metadata(path) is not None:
            raise WrcError(f"{path} is a single file made by wrc export, which extract does not write into; "
                           "choose another OUT")
        parts = parts_dir(path)
        if (parts / "wrc.json").is_file():
            return
        remove_stale_tmps(parts)
        identity = json.dumps([metadata["fingerprint"], metadata["images_sha256"], metadata["store"]], sort_keys=True)
        dataset = f"features-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"
        metadata = {**metadata, "store": {**metadata["store"], "dataset": dataset}}
        with atomic_write(parts) as tmp:
            tmp.mkdir()
            (tmp / "wrc.json").write_text(json.dumps(metadata, ensure_ascii=False, indent=1), encoding="utf-8")
            if spec.kept:
                (tmp / KEPT_FILE).write_bytes(_file_bytes(partial(write_kept, kept=spec.kept)))

    def open_writer(self, path: Path, spec: StoreSpec) -> Hdf5Writer:
        return Hdf5Writer(path, spec)

    def finalize(self, path: Path) -> None:
        """Check that every part exists, drop temporaries of killed writers, write ``OUT`` (temporary name + rename)."""
        parts = parts_dir(path)
        metadata = self.read_metadata(path)
        spec = spec_from_metadata(metadata)
        missing = sorted(set(range(spec.n_shards)) - _check(parts, spec, metadata)[0])
        if missing:
            raise incomplete_error(path, missing, spec.n_shards)
        for stale in parts.glob(f".shard-*{TMP_TAG}*"):
            stale.unlink()
        remove_stale_tmps(path)
        columns, unreadable = gather_columns(spec, set(range(spec.n_shards)), partial(_read_part_columns, parts))
        if unreadable:
            raise inconsistent_error(path, sorted(unreadable))
        status = columns["status"]
        metadata["store"] = {**metadata["store"], "ok": int((status == OK).sum()),
                             "failed": int((status == FAILED).sum())}
        kept = _read_kept_file(parts, metadata)
        data = _file_bytes(partial(_write_index, spec=spec, metadata=metadata, columns=columns, parts_name=parts.name,
                                   kept=kept))
        with atomic_write(path, durable=True) as tmp:
            tmp.write_bytes(data)

    def read_metadata(self, path: Path) -> dict:
        metadata = _read_json(parts_dir(path) / "wrc.json") or _single_metadata(path)
        if metadata is None:
            raise WrcError(f"{path} is not a wrcli feature store (no {parts_dir(path).name}/wrc.json); check the path")
        return metadata

    def state(self, path: Path) -> StoreState:
        """Works before finalize too (the columns are then gathered from the done parts)."""
        parts = parts_dir(path)
        index = _index_metadata(path)
        metadata = index or self.read_metadata(path)
        spec = spec_from_metadata(metadata)
        done, broken = _check(parts, spec, metadata)
        if index is None:
            columns, unreadable = gather_columns(spec, done, partial(_read_part_columns, parts))
            return StoreState(metadata, columns, done - unreadable, finalized=False, broken=broken | unreadable)
        with h5py.File(path, "r") as f:
            return StoreState(metadata, _read_columns(f), done, finalized=True, broken=broken)

    def decode_shard(self, path: Path, k: int) -> None:
        if _single_metadata(path) is not None:
            with h5py.File(path, "r", locking=False) as f:
                rng = spec_from_metadata(json.loads(f.attrs["wrc"])).shard_range(k)
                f["features"][rng.start:rng.stop]
            return
        with h5py.File(parts_dir(path) / part_name(k), "r", locking=False) as f:
            f["features"][:]
            _read_columns(f)

    def open_reader(self, path: Path) -> StoreReader:
        metadata = _index_metadata(path)
        if metadata is None:
            self.read_metadata(path)  # not a store at all, or
            raise unfinished_error(path)
        spec = spec_from_metadata(metadata)
        parts = parts_dir(path)
        missing = sorted(set(range(spec.n_shards)) - _check(parts, spec, metadata)[0])
        if missing:
            raise WrcError(f"{path} reads its features from {parts.name}/, where {len(missing)} of {spec.n_shards} "
                           f"part files are missing or changed ({shard_list(missing)}); keep {parts.name}/ next to "
                           f"{path.name}, or rerun the same extract command")
        f = h5py.File(path, "r")
        return StoreReader(path, self.format, metadata, _read_columns(f), f["features"], close=f.close,
                           kept=read_kept(f, metadata))


class Hdf5Writer(StoreWriter):
    """Writes each shard to its own part file (temporary name, fsync, atomic rename)."""

    def __init__(self, path: Path, spec: StoreSpec) -> None:
        super().__init__(path, spec)
        self._parts = parts_dir(path)
        self._dataset = source_dataset(Hdf5Backend().read_metadata(path))

    def check_shards(self) -> tuple[set[int], set[int]]:
        return _check(self._parts, self.spec)

    def write_shard(self, k: int, features: np.ndarray, records: Sequence[ImageRecord]) -> None:
        check_shard(self.spec, k, features, records)
        final, marker = self._parts / part_name(k), self._parts / marker_name(k)
        marker.unlink(missing_ok=True)  # a rewrite is not done until complete
        remove_stale_tmps(final)  # left by a writer of this shard that was killed
        data = _file_bytes(partial(_write_part, features=features, records=records, dataset=self._dataset))
        with atomic_write(final, durable=True) as tmp:
            tmp.write_bytes(data)
        with atomic_write(marker, durable=True) as tmp:
            tmp.write_text(json.dumps({"bytes": final.stat().st_size}), encoding="utf-8")


def _check(parts: Path, spec: StoreSpec, metadata: dict | None = None) -> tuple[set[int], set[int]]:
    """The shards marked done whose part has the recorded size, and those marked done whose part does not. In a
    store of layout 1 (wrcli before the ``.done`` markers; ``metadata`` says which) a part's existence marked it;
    a single file (``wrc export``) holds every shard itself."""
    if metadata is not None and metadata["store"].get("single_file"):
        return set(range(spec.n_shards)), set()
    if metadata is not None and metadata["store"].get("layout_version", 1) < 2:
        found = (re.fullmatch(r"shard-(\d{8})\.h5", p.name) for p in parts.glob("shard-*.h5"))
        return {k for m in found if m and (k := int(m[1])) < spec.n_shards}, set()
    done, broken = set(), set()
    for marker in parts.glob("shard-*.done"):
        if (m := _MARKER.fullmatch(marker.name)) is None or (k := int(m[1])) >= spec.n_shards:
            continue
        part = parts / part_name(k)
        try:
            ok = json.loads(marker.read_text(encoding="utf-8"))["bytes"] == part.stat().st_size
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        (done if ok else broken).add(k)
    return done, broken


def source_dataset(metadata: dict) -> str:
    """The name under which the parts of this store hold their features for ``OUT``'s virtual dataset:
    ``features-<16 hex digits of a hash of the settings, image list and layout>``, so that ``OUT`` next to the parts
    of a store made otherwise reads NaN rather than that store's features (``features`` in stores of wrcli
    before it)."""
    return metadata["store"].get("dataset", "features")


def _file_bytes(write: Callable[[h5py.File], None]) -> memoryview:
    """The bytes of the HDF5 file that ``write`` fills, built in memory: a full disk then fails in a plain
    write with OSError, never inside HDF5 (whose failed writes end the process with a segfault)."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        write(f)
    return buffer.getbuffer()


def _write_part(f: h5py.File, features: np.ndarray, records: Sequence[ImageRecord], dataset: str) -> None:
    columns = columns_from_records(records)
    dset = f.create_dataset("features", shape=features.shape, dtype=features.dtype,
                            chunks=(1, *features.shape[1:]), compression="lzf", fillvalue=0)
    for j in np.flatnonzero(columns["status"] == OK):  # failed images stay unwritten: fill 0, no bytes
        dset[j] = features[j]
    if dataset != "features":
        f[dataset] = dset  # a second name of the same data (a hard link: no bytes)
    for name, values in columns.items():
        f.create_dataset(name, data=values, dtype=_TEXT if values.dtype == object else values.dtype)


def _read_part_columns(parts: Path, k: int) -> dict[str, np.ndarray]:
    with h5py.File(parts / part_name(k), "r", locking=False) as f:
        return _read_columns(f)


def _read_columns(f: h5py.File) -> dict[str, np.ndarray]:
    """The per-image datasets; a store of layout < 3 has no ``file_stat`` (read as (-1, -1))."""
    return with_all_columns({name: f[name].asstr()[:] if dtype == "str" else f[name][:]
                             for name, (dtype, _, _) in COLUMNS.items() if name in f})


def write_kept(f: h5py.File, kept: Mapping[str, np.ndarray]) -> None:
    """The per-image columns from the input as the group ``columns`` (of an index, a single file or ``columns.h5``)."""
    if not kept:
        return
    group = f.create_group(KEPT_GROUP)
    for name, values in kept.items():
        text = values.dtype == object
        label(group.create_dataset(name, data=values, dtype=_TEXT if text else values.dtype), ("image",))


def read_kept(f: h5py.File, metadata: dict) -> dict[str, np.ndarray]:
    """The per-image columns from the input that :func:`write_kept` wrote, in the order the metadata names them."""
    return {name: f[KEPT_GROUP][name].asstr()[:].astype(object) if h5py.check_string_dtype(f[KEPT_GROUP][name].dtype)
            else f[KEPT_GROUP][name][:] for name in kept_names(metadata)}


def _read_kept_file(parts: Path, metadata: dict) -> dict[str, np.ndarray]:
    if not kept_names(metadata):
        return {}
    with h5py.File(parts / KEPT_FILE, "r", locking=False) as f:
        return read_kept(f, metadata)


def _write_index(f: h5py.File, spec: StoreSpec, metadata: dict, columns: dict[str, np.ndarray], parts_name: str,
                 kept: Mapping[str, np.ndarray]) -> None:
    grid = (spec.channels, spec.height, spec.width)
    layout = h5py.VirtualLayout(shape=(spec.n_images, *grid), dtype=spec.dtype)
    dataset = source_dataset(metadata)
    for k in range(spec.n_shards):
        rng = spec.shard_range(k)
        layout[rng.start:rng.stop] = h5py.VirtualSource(f"{parts_name}/{part_name(k)}", dataset,
                                                        shape=(len(rng), *grid))
    label(f.create_virtual_dataset("features", layout, fillvalue=np.nan), FEATURE_DIMS)
    write_columns(f, columns, metadata)
    write_kept(f, kept)


def write_columns(f: h5py.File, columns: dict[str, np.ndarray], metadata: dict) -> None:
    """The per-image datasets (labelled) and the ``wrc`` attribute of an index or single file."""
    for name, values in columns.items():
        dtype, _, dims = COLUMNS[name]
        dset = f.create_dataset(name, data=values, dtype=_TEXT if dtype == "str" else dtype)
        label(dset, dims)
        if name == "status":
            dset.attrs.update(STATUS_ATTRS)
    f.attrs["wrc"] = json.dumps(metadata, ensure_ascii=False)


def label(dset: h5py.Dataset, dims: Sequence[str]) -> None:
    for axis, name in enumerate(dims):
        dset.dims[axis].label = name


def _index_metadata(path: Path) -> dict | None:
    """The ``wrc`` attribute of a finalized ``OUT`` (None if ``path`` is not one)."""
    if not path.is_file() or not h5py.is_hdf5(path):
        return None
    try:
        with h5py.File(path, "r") as f:
            metadata = json.loads(f.attrs["wrc"])
    except (OSError, KeyError, ValueError, TypeError):
        return None
    return metadata if is_wrc_metadata(metadata) else None


def _single_metadata(path: Path) -> dict | None:
    """The metadata of a single file written by ``wrc export`` (None if ``path`` is not one)."""
    metadata = _index_metadata(path)
    return metadata if metadata is not None and metadata["store"].get("single_file") else None


def _read_json(path: Path) -> dict | None:
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return metadata if is_wrc_metadata(metadata) else None
