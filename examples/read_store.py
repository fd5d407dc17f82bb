"""Read a store written by `wrc extract` — with wrcli, and with plain zarr / xarray / h5py / numpy.

Run: python examples/read_store.py out/examples.zarr   (or an .h5 store)
"""

import json
import sys

import numpy as np

path = sys.argv[1] if len(sys.argv) > 1 else "out/examples.zarr"

# 1. wrcli's reader: (path, features cropped to the image's valid region) per successfully extracted image
from wrcli.stores import open_store  # noqa: E402

with open_store(path) as store:
    for name, feats in store:
        print(f"{name}: {feats.shape} {feats.dtype}")

# 2. without wrcli: every store is an array features[N, C, H, W] (padded) + per-image arrays
if path.endswith(".zarr"):
    import zarr

    root = zarr.open_group(path, mode="r")
    meta = root.attrs["wrc"]
    h, w = root["feat_hw"][0]
    first = np.asarray(root["features"][0, :, :h, :w])  # reads one image (one inner chunk)
    print("zarr:", root["path"][0], first.shape, "upsampler:", meta["upsampler"]["name"])

    import xarray as xr  # lazy, dask-backed: one chunk per image

    ds = xr.open_zarr(path)
    print("xarray:", ds["features"].dims, ds["features"].shape, "failed:", int((ds["status"] == 2).sum()))
else:
    import h5py

    with h5py.File(path, "r") as f:  # OUT.h5 reads its features from OUT.h5.parts/ (keep them together)
        meta = json.loads(f.attrs["wrc"])
        h, w = f["feat_hw"][0]
        first = f["features"][0, :, :h, :w]
        print("h5py:", f["path"][0].decode(), first.shape, "upsampler:", meta["upsampler"]["name"])
