"""``wrc export``: a finished store copied into one self-contained HDF5 file.

An HDF5 store is an index ``OUT`` over ``OUT.parts/`` (a virtual dataset); a Zarr store is a folder. The export
holds everything in one ordinary HDF5 file that plain h5py reads anywhere::

    DEST    features (N, C, H, W): a real dataset, one lzf chunk per image, fill 0 (failed images hold no bytes);
            the per-image datasets, the group ``columns`` (per-image columns from the input, if the store has
            them) and the ``wrc`` attribute of the store, whose ``store`` section says
            ``"single_file": true`` (wrcli then reads DEST as a finished store: ``wrc info``, ``open_store``)

The copy is checked against the free space first and written under a temporary name, then renamed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np

from wrcli.errors import WrcError
from wrcli.files import atomic_write
from wrcli.stores.base import FEATURE_DIMS, StoreReader, columns_from_records
from wrcli.stores.hdf5_store import Hdf5Backend, label, write_columns, write_kept

HEADROOM = 1.05  # lzf re-compresses the features to about their size in the store; 5 % for HDF5's own metadata


def export_single(reader: StoreReader, stored_bytes: int, dest: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the finished store of ``reader`` (whose files take ``stored_bytes``) to ``dest`` as one HDF5 file."""
    dest = Path(dest)
    if dest.suffix.lower() not in Hdf5Backend.suffixes:
        raise WrcError(f"{dest}: the export is one HDF5 file; name it *.h5 or *.hdf5")
    if dest.exists() and not overwrite:
        raise WrcError(f"{dest} exists; use --overwrite to replace it, or another DEST")
    if dest.is_dir():
        raise WrcError(f"{dest} is a folder; give a file name")
    if dest.resolve() == Path(reader.path).resolve():
        raise WrcError(f"{dest} is the store itself; give another DEST")
    dest.parent.mkdir(parents=True, exist_ok=True)
    needed, free = int(stored_bytes * HEADROOM) + 2**20, shutil.disk_usage(dest.parent).free
    if needed > free:
        raise WrcError(f"{dest}: the export needs about {needed / 2**30:.2f} GiB and {dest.parent} has "
                       f"{free / 2**30:.2f} GiB free; free space or export elsewhere")
    metadata = json.loads(json.dumps(reader.metadata))
    metadata["store"] = {**metadata["store"], "single_file": True}
    with atomic_write(dest, durable=True) as tmp, h5py.File(tmp, "w", locking=False) as f:
        _copy_features(reader, f)
        write_columns(f, columns_from_records(reader.records), metadata)
        write_kept(f, reader.columns)
    return dest


def _copy_features(reader: StoreReader, f: h5py.File) -> None:
    spec = reader.spec
    grid = (spec.channels, spec.height, spec.width)
    dset = f.create_dataset("features", shape=(spec.n_images, *grid), dtype=spec.dtype, chunks=(1, *grid),
                            compression="lzf", fillvalue=0)
    label(dset, FEATURE_DIMS)
    block = np.zeros(grid, dtype=spec.dtype)
    for i, record in enumerate(reader.records):
        if not record.ok:
            continue  # failed images stay unwritten: fill 0, no bytes
        block[...] = 0
        valid = reader.features(i)
        block[:, :valid.shape[1], :valid.shape[2]] = valid
        dset[i] = block
