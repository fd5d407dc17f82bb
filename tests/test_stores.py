"""Feature stores: the backend contract, round trips, resume and its mismatch message, crash safety, concurrency,
plain zarr/h5py/xarray/dask reading, disk cost."""

from __future__ import annotations

import dataclasses
import errno
import json
import multiprocessing
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore

from wrcli.errors import WrcError
from wrcli.stores import (
    BACKENDS, ImageRecord, StoreBackend, StoreSpec, check_job, create_store, current_job, finalize_store, lock_store,
    open_store, open_writer, store_format, summary,
)
from wrcli.stores.base import stored_metadata
from wrcli.stores.lock import LEASE_S, lock_path
from wrcli.stores.mismatch import difference

SUFFIXES = [".zarr", ".h5"]
FAILED = {2, 5}


def make_spec(n: int = 7, shard: int = 3, dtype: str = "float16", grid: tuple[int, int, int] = (4, 6, 8),
              **metadata) -> StoreSpec:
    meta = {"fingerprint": "fp-1", "images_sha256": "img-1", "upsampler": "wrc", "backbone": "dinov2_vits14",
            "scale": 4, "resize": "long-side 448", "created": "2026-01-01T00:00:00", **metadata}
    return StoreSpec(n, *grid, dtype, shard, meta)


def make_data(spec: StoreSpec, seed: int = 0, valid: tuple[int, int] | None = None):
    """Features zero outside a per-image valid region, failed images all zero; unicode names with spaces; a file
    stat per image."""
    rng = np.random.default_rng(seed)
    feats = np.zeros((spec.n_images, spec.channels, spec.height, spec.width), spec.dtype)
    records = []
    for i in range(spec.n_images):
        h, w = valid or (spec.height - i % 3, spec.width - i % 4)
        name = f"photos/été {i}/ìmage n°{i}.jpg"
        if i in FAILED:
            records.append(ImageRecord(name, (0, 0), (0, 0), (0, 0), f"cannot decode image {i}: truncated file",
                                       (i, 2**62 + i)))
            continue
        feats[i, :, :h, :w] = rng.standard_normal((spec.channels, h, w))
        records.append(ImageRecord(name, (h * 14 + 3, w * 14 + 1), (h * 14, w * 14), (h, w), file_stat=(1000 + i, i)))
    return feats, records


def shard_args(spec: StoreSpec, feats: np.ndarray, records: list[ImageRecord], k: int):
    rng = spec.shard_range(k)
    return k, feats[rng.start:rng.stop], records[rng.start:rng.stop]


def write(path: Path, spec: StoreSpec, feats, records, shards=None, finalize: bool = True) -> None:
    create_store(path, spec)
    with open_writer(path, spec) as writer:
        for k in range(spec.n_shards) if shards is None else shards:
            writer.write_shard(*shard_args(spec, feats, records, k))
    if finalize:
        finalize_store(path)


def tree_bytes(*roots: Path) -> dict[str, bytes]:
    """Every file under the roots, by path relative to its root's parent."""
    return {str(p.relative_to(root.parent)): p.read_bytes() for root in roots for p in sorted(root.rglob("*"))
            if p.is_file()}


def store_files(path: Path) -> dict[str, bytes]:
    return tree_bytes(path) if path.suffix == ".zarr" else tree_bytes(Path(f"{path}.parts"))


def done(path: Path, spec: StoreSpec) -> set[int]:
    with open_writer(path, spec) as writer:
        return writer.done_shards()


def assert_matches(path: Path, spec: StoreSpec, feats: np.ndarray, records: list[ImageRecord]) -> None:
    with open_store(path) as store:
        assert len(store) == spec.n_images and store.spec == spec
        assert store.records == records
        assert store.metadata["store"]["ok"] == spec.n_images - len(FAILED)
        items = list(store)
        assert [name for name, _ in items] == [r.name for r in records if r.ok]
        for i, record in enumerate(records):
            h, w = record.feat_hw
            got = store.features(i)
            assert got.dtype == np.dtype(spec.dtype) and got.shape == (spec.channels, h, w)
            np.testing.assert_array_equal(got, feats[i, :, :h, :w])


# -- the backend contract --------------------------------------------------------------------------------------------

CONTRACT = {"format", "suffixes", "paths", "detect", "existing", "ensure", "read_metadata", "open_writer", "finalize",
            "decode_shard",
            "state", "open_reader"}
FORMATS = sorted(BACKENDS)


def test_every_backend_implements_the_whole_contract():
    assert StoreBackend.__abstractmethods__ == CONTRACT
    assert {type(b) for b in BACKENDS.values()} == set(StoreBackend.__subclasses__())
    for name, backend in BACKENDS.items():
        assert backend.format == name and backend.suffixes and all(s == s.lower() for s in backend.suffixes)
        assert CONTRACT <= set(vars(type(backend))), f"{name} inherits part of the contract"
    assert store_format("x" + BACKENDS["hdf5"].suffixes[-1]) == "hdf5"


@pytest.mark.parametrize("fmt", FORMATS)
def test_backend_protocol(tmp_path, fmt):
    """One extraction through the backend's methods alone; its paths() hold every byte, remove() all of them."""
    backend, spec = BACKENDS[fmt], make_spec()
    feats, records = make_data(spec)
    path = tmp_path / "out.store"
    assert backend.existing(path) == [] and not backend.exists(path) and not backend.detect(path)
    metadata = stored_metadata(spec)
    backend.ensure(path, spec, metadata)
    backend.ensure(path, spec, metadata)  # idempotent
    stored = backend.read_metadata(path)
    assert backend.detect(path) and stored["store"].items() >= metadata["store"].items()  # a format may add keys
    assert {**stored, "store": metadata["store"]} == metadata
    with backend.open_writer(path, spec) as writer:
        writer.write_shard(*shard_args(spec, feats, records, 1))
    state = backend.state(path)
    assert (state.done, state.finalized, state.columns["status"].tolist()) == ({1}, False, [0, 0, 0, 1, 1, 2, 0])
    with pytest.raises(WrcError, match=r"2 of 3 shards are not written \(0, 2\)"):
        backend.finalize(path)
    with backend.open_writer(path, spec) as writer:
        for k in (0, 2):
            writer.write_shard(*shard_args(spec, feats, records, k))
    backend.finalize(path)
    assert backend.state(path).finalized and backend.state(path).metadata["store"]["ok"] == 5
    assert backend.existing(path) and all(found["fingerprint"] == "fp-1" for found in backend.existing(path))
    with backend.open_reader(path) as reader:
        assert reader.format == fmt and reader.records == records
    on_disk = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert on_disk and all(any(root in p.parents or p == root for root in backend.paths(path)) for p in on_disk)
    backend.remove(path)
    assert not backend.exists(path) and not any(tmp_path.iterdir())


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_store_is_detected_as_its_format_only(tmp_path, fmt):
    spec = make_spec()
    feats, records = make_data(spec)
    path = tmp_path / "features.store"
    create_store(path, spec, format=fmt)
    detected = [b.format for b in BACKENDS.values() if b.detect(path)]
    assert (detected, summary(path)["format"], summary(path)["finalized"]) == ([fmt], fmt, False)
    write(path, spec, feats, records)  # resumes it: the format is found on disk
    detected = [b.format for b in BACKENDS.values() if b.detect(path)]
    assert (detected, summary(path)["format"], summary(path)["finalized"]) == ([fmt], fmt, True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_backend_refuses_a_foreign_folder_or_file(tmp_path, fmt):
    backend = BACKENDS[fmt]
    folder, file = tmp_path / "folder", tmp_path / "file"
    folder.mkdir()
    (folder / "zarr.json").write_text('{"node_type": "group", "attributes": {}}')  # a plain zarr group
    file.write_text("precious")
    for path in (folder, file):
        with pytest.raises(WrcError, match="exists and is not a wrcli store"):
            backend.existing(path)
        with pytest.raises(WrcError, match="is not a wrcli feature store"):
            backend.read_metadata(path)
    assert (folder / "zarr.json").is_file() and file.read_text() == "precious"


def test_a_foreign_folder_with_an_odd_name_is_no_format(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("precious")
    with pytest.raises(WrcError, match="cannot tell the store format"):
        create_store(tmp_path / "notes", make_spec())
    assert (tmp_path / "notes" / "a.txt").read_text() == "precious"


# -- round trips and plain readers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip(tmp_path, suffix, dtype):
    spec = make_spec(dtype=dtype)
    feats, records = make_data(spec)
    path = tmp_path / f"my features{suffix}"
    write(path, spec, feats, records)
    assert_matches(path, spec, feats, records)
    assert finalize_store(path) == summary(path)  # idempotent
    assert_matches(path, spec, feats, records)


def test_store_format():
    assert store_format("a/b.zarr") == "zarr" and store_format("x.H5") == "hdf5" and store_format("x.hdf5") == "hdf5"
    assert store_format("x.dat", "zarr") == "zarr"
    for bad in (("x.dat", None), ("x.zarr", "npy")):
        with pytest.raises(WrcError, match="zarr"):
            store_format(*bad)


def test_explicit_format_with_odd_name(tmp_path):
    spec = make_spec()
    feats, records = make_data(spec)
    path = tmp_path / "features.store"
    create_store(path, spec, format="zarr")
    write(path, spec, feats, records)
    assert summary(path)["format"] == "zarr"
    assert_matches(path, spec, feats, records)


def test_plain_zarr(tmp_path):
    spec = make_spec()
    feats, records = make_data(spec)
    path = tmp_path / "out.zarr"
    write(path, spec, feats, records)
    root = json.loads((path / "zarr.json").read_text())
    assert root["attributes"]["wrc"]["fingerprint"] == "fp-1"  # a JSON object, not a pickle
    assert root["consolidated_metadata"] is not None
    group = zarr.open_group(path, mode="r")
    arr = group["features"]
    assert arr.shape == feats.shape and arr.dtype == np.dtype(spec.dtype)
    assert arr.metadata.dimension_names == ("image", "channel", "y", "x")
    assert arr.shards == (spec.shard_size, *feats.shape[1:]) and arr.chunks == (1, *feats.shape[1:])
    np.testing.assert_array_equal(arr[:], feats)
    assert [str(p) for p in group["path"][:]] == [r.name for r in records]
    assert group["status"][:].tolist() == [2 if i in FAILED else 1 for i in range(spec.n_images)]
    np.testing.assert_array_equal(group["feat_hw"][:], [r.feat_hw for r in records])
    assert group["orig_hw"].metadata.dimension_names == ("image", "hw")
    assert group.attrs["wrc"]["store"]["failed"] == len(FAILED)


def test_plain_h5py_after_moving_the_pair(tmp_path, monkeypatch):
    spec = make_spec()
    feats, records = make_data(spec)
    path = tmp_path / "a" / "out.h5"
    write(path, spec, feats, records)
    moved = tmp_path / "b" / "c"
    moved.mkdir(parents=True)
    for p in (path, Path(f"{path}.parts")):
        shutil.move(p, moved / p.name)
    monkeypatch.chdir(tmp_path)
    with h5py.File(moved / "out.h5", "r") as f:
        assert f["features"].is_virtual and f["features"].shape == feats.shape
        np.testing.assert_array_equal(f["features"][3], feats[3])
        np.testing.assert_array_equal(f["features"][:], feats)
        assert list(f["path"].asstr()[:]) == [r.name for r in records]
        assert json.loads(f.attrs["wrc"])["images_sha256"] == "img-1"  # a JSON string
        assert [d.label for d in f["features"].dims] == ["image", "channel", "y", "x"]
    (moved / "out.h5.parts" / "shard-00000001.h5").unlink()
    with h5py.File(moved / "out.h5", "r") as f:  # a lost part reads as NaN, never as plausible zeros
        assert np.isnan(f["features"][3]).all() and not np.isnan(f["features"][0]).any()
    with pytest.raises(WrcError, match="1 of 3 part files are missing"):
        open_store(moved / "out.h5")


def test_xarray_and_dask(tmp_path):
    xr = pytest.importorskip("xarray")
    da = pytest.importorskip("dask.array")
    spec = make_spec()
    feats, records = make_data(spec)
    path = tmp_path / "out.zarr"
    write(path, spec, feats, records)
    ds = xr.open_zarr(path)
    assert ds["features"].dims == ("image", "channel", "y", "x") and ds["orig_hw"].dims == ("image", "hw")
    assert ds.sizes["image"] == spec.n_images and ds.attrs["wrc"]["upsampler"] == "wrc"
    np.testing.assert_array_equal(ds["features"][4].values, feats[4])
    np.testing.assert_array_equal(ds["status"].values, [2 if i in FAILED else 1 for i in range(spec.n_images)])
    assert [str(p) for p in ds["path"].values] == [r.name for r in records]
    np.testing.assert_array_equal(da.from_zarr(str(path), component="features").compute(), feats)


# -- resume and overwrite ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", SUFFIXES)
def test_resume_and_overwrite(tmp_path, suffix):
    spec = make_spec()
    feats, records = make_data(spec)
    path = tmp_path / f"out{suffix}"
    write(path, spec, feats, records, shards=[0, 2], finalize=False)
    create_store(path, make_spec(created="later", command_line="wrc extract again"))  # same settings: resume
    assert done(path, spec) == {0, 2}

    other = make_spec(fingerprint="fp-2", upsampler="bilinear", created="later", options={"batch_size": 8})
    with pytest.raises(WrcError, match=r"other settings \(--upsampler wrc ≠ bilinear\).*--overwrite"):
        create_store(path, other)
    with pytest.raises(WrcError, match="another image list.*--overwrite"):
        create_store(path, make_spec(images_sha256="img-2"))
    with pytest.raises(WrcError, match=r"other settings \(--shard-size 3 ≠ 4\)"):
        create_store(path, make_spec(shard=4))
    with pytest.raises(WrcError, match="settings the store was created with"):
        open_writer(path, other)
    assert done(path, spec) == {0, 2}

    create_store(path, other, overwrite=True)
    assert done(path, other) == set()
    assert summary(path)["upsampler"] == "bilinear"


def extract_spec(size: int = 448, crop: bool = False, max_side: int | None = None, scale: int = 2,
                 out_size: tuple[int, int] | None = None, backbone: str = "vit_small_patch14_dinov2.lvd142m",
                 layers: tuple[int, ...] = (11,), upsampler: str = "wrc", dtype: str = "float16",
                 shard_size: int | None = None, version: str = "0.4.0", height: int | None = None,
                 channels: int | None = None, **metadata) -> StoreSpec:
    """A spec shaped like the one ``wrc extract`` builds (a ViT-S/14, or a ViT-B/16 when ``backbone`` says so);
    ``height`` and ``channels`` replace the layout's own, ``metadata`` adds to it."""
    patch, width = (16, 768) if "base_patch16" in backbone else (14, 384)
    max_side = max_side or 2 * size
    side = min(size, max_side) if crop else max_side
    height = height or (out_size[0] if out_size else side // patch * scale)
    channels = channels or width * len(layers)
    image_bytes = channels * height * height * np.dtype(dtype).itemsize
    shard_size = shard_size or max(1, min(256, (64 << 20) // image_bytes))
    settings = {
        "wrcli_version": version,
        "backbone": {"name": backbone, "arch": backbone.split(".")[0], "patch_size": patch, "embed_dim": width,
                     "layers": list(layers), "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                     "weights_sha256": f"{width}" * 16},
        "upsampler": {"name": upsampler, "checkpoint": None, "checkpoint_sha256": None, "config": {"dim": width}},
        "scale": None if out_size else scale, "out_size": list(out_size) if out_size else None,
        "resize": {"size": size, "patch": patch, "crop": crop, "max_side": max_side, "min_side": patch,
                   "resample": "lanczos"},
        "normalisation": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "on": "device"},
        "dtype": dtype, "shard_size": shard_size,
    }
    metadata = {**settings, "fingerprint": json.dumps(settings, sort_keys=True), "images_sha256": "img-1",
                "created": "2026-12-03T10:00:00", "command_line": "wrc extract in out.zarr",
                "options": {"batch_size": 8}, **metadata}
    return StoreSpec(7, channels, height, height, dtype, shard_size, metadata)


MODEL_S, MODEL_B = "vit_small_patch14_dinov2.lvd142m", "vit_base_patch16_clip_224.openai"


@pytest.mark.parametrize("old, new, shown", [
    ({}, {"size": 224}, "--size 448 ≠ 224"),
    ({"shard_size": 40}, {"shard_size": 10}, "--shard-size 40 ≠ 10"),
    ({}, {"dtype": "float32"}, "--dtype float16 ≠ float32"),
    ({}, {"backbone": MODEL_B, "upsampler": "bilinear"}, f"--backbone {MODEL_S} ≠ {MODEL_B}"),
    ({}, {"layers": (5, 11)}, "--layers 11 ≠ 5,11"),
    ({}, {"out_size": (64, 64)}, "--out-size unset ≠ 64x64"),
    ({}, {"crop": True}, "--crop off ≠ on"),
    ({}, {"max_side": 600}, "--max-side 896 ≠ 600"),
    ({}, {"upsampler": "bilinear"}, "--upsampler wrc ≠ bilinear"),
    ({}, {"version": "0.5.0"}, "wrcli version 0.4.0 ≠ 0.5.0"),
    ({}, {"size": 224, "dtype": "float32", "upsampler": "bilinear", "scale": 4},
     "--upsampler wrc ≠ bilinear; --scale 2 ≠ 4; --size 448 ≠ 224"),
    ({}, {"height": 32}, "feature height 128 ≠ 32 (--size/--crop/--max-side/--scale/--out-size)"),
    ({}, {"channels": 768}, "channels 384 ≠ 768 (--backbone/--layers)"),
])
def test_the_mismatch_message_names_the_users_options(old, new, shown):
    message = difference(stored_metadata(extract_spec(**old)), stored_metadata(extract_spec(**new)))
    assert message == f"was made with other settings ({shown})"


def test_the_mismatch_message_without_a_known_option():
    old, new = (stored_metadata(make_spec(fingerprint=f"fp-{i}", note=i)) for i in (1, 2))
    assert difference(old, new) == "was made with other settings (note: 1 ≠ 2)"
    old, new = (stored_metadata(make_spec(fingerprint=f"fp-{i}")) for i in (1, 2))
    assert difference(old, new) == "was made with other settings (fingerprint: fp-1 ≠ fp-2)"
    rerun = stored_metadata(extract_spec(created="2026-12-04", command_line="wrc extract in/ out.zarr"))
    assert difference(stored_metadata(extract_spec()), rerun) is None


def test_a_rerun_with_another_size_says_so(tmp_path):
    path = tmp_path / "out.zarr"
    create_store(path, extract_spec())
    with pytest.raises(WrcError) as info:
        create_store(path, extract_spec(size=224))
    assert str(info.value) == (f"{path} was made with other settings (--size 448 ≠ 224); "
                               "use --overwrite to replace it, or another OUT")


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_resume_after_finalize(tmp_path, suffix):
    spec = make_spec()
    feats, records = make_data(spec)
    path = tmp_path / f"out{suffix}"
    write(path, spec, feats, records)
    create_store(path, spec)
    assert done(path, spec) == set(range(spec.n_shards))
    with pytest.raises(WrcError, match="--overwrite"):
        create_store(path, make_spec(fingerprint="fp-2"))
    assert_matches(path, spec, feats, records)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_foreign_paths_are_never_deleted(tmp_path, suffix):
    spec = make_spec()
    folder = tmp_path / f"folder{suffix}"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    file = tmp_path / f"file{suffix}"
    file.write_text("precious")
    for path in (folder, file):
        for overwrite in (False, True):
            with pytest.raises(WrcError, match="not a wrcli store.*never deleted"):
                create_store(path, spec, overwrite=overwrite)
    assert (folder / "thesis.tex").read_text() == "precious" and file.read_text() == "precious"
    with pytest.raises(WrcError, match="is not a wrcli feature store"):
        summary(folder)
    with pytest.raises(WrcError, match="does not exist"):
        open_store(tmp_path / f"nothing{suffix}")
    if suffix == ".h5":
        parts = tmp_path / "x.h5.parts"
        parts.mkdir()
        (parts / "notes.txt").write_text("precious")
        with pytest.raises(WrcError, match="x.h5.parts exists and is not a wrcli store"):
            create_store(tmp_path / "x.h5", spec, overwrite=True)
        assert (parts / "notes.txt").read_text() == "precious"
    empty = tmp_path / f"empty{suffix}"
    empty.mkdir()
    create_store(empty, spec)
    assert summary(empty)["done_shards"] == 0


def test_write_shard_checks_its_arguments(tmp_path):
    spec = make_spec()
    feats, records = make_data(spec)
    create_store(tmp_path / "out.zarr", spec)
    with open_writer(tmp_path / "out.zarr", spec) as writer:
        k, shard, recs = shard_args(spec, feats, records, 0)
        for bad in ((k, shard.astype("float32"), recs), (k, shard[:2], recs), (k, shard, recs[:2])):
            with pytest.raises(ValueError, match="shard 0"):
                writer.write_shard(*bad)
        with pytest.raises(IndexError):
            writer.write_shard(spec.n_shards, shard, recs)
        assert writer.done_shards() == set()


def test_unwritable_location(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(WrcError, match="cannot create .*; choose a writable OUT") as info:
        create_store(tmp_path / "file" / "out.zarr", make_spec())
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_finalize_refuses_missing_shards(tmp_path, suffix):
    spec = make_spec(n=10, shard=2)
    feats, records = make_data(spec)
    path = tmp_path / f"out{suffix}"
    write(path, spec, feats, records, shards=[0, 2, 4], finalize=False)
    with pytest.raises(WrcError, match=r"2 of 5 shards are not written \(1, 3\); rerun"):
        finalize_store(path)
    with pytest.raises(WrcError, match="not finished"):
        open_store(path)
    info = summary(path)
    assert (info["complete"], info["finalized"], info["done_shards"], info["n_shards"]) == (False, False, 3, 5)
    assert (info["ok"], info["failed"], info["pending"]) == (5, 1, 4)  # images 0 1 4 5 8 9; 5 failed


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_summary(tmp_path, suffix):
    spec = make_spec()
    feats, records = make_data(spec)
    path = tmp_path / f"out{suffix}"
    write(path, spec, feats, records)
    info = summary(path)
    assert info["format"] == ("zarr" if suffix == ".zarr" else "hdf5") and info["path"] == str(path)
    assert (info["n_images"], info["ok"], info["failed"], info["pending"]) == (7, 5, 2, 0)
    assert info["failures"] == [{"name": records[i].name, "error": records[i].error} for i in sorted(FAILED)]
    assert (info["complete"], info["finalized"], info["done_shards"], info["n_shards"]) == (True, True, 3, 3)
    assert info["shape"] == [7, 4, 6, 8] and info["dtype"] == "float16" and info["bytes_on_disk"] > 0
    assert (info["backbone"], info["upsampler"], info["scale"], info["resize"]) == (
        "dinov2_vits14", "wrc", 4, "long-side 448")
    json.dumps(info)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_padding_and_failed_images_cost_almost_nothing(tmp_path, suffix):
    """The same 16x32x32 valid features stored unpadded, and padded into a 64x64 grid (3/4 zeros)."""
    sizes = {}
    for grid in (32, 64):
        spec = make_spec(n=8, shard=4, grid=(16, grid, grid))
        feats, records = make_data(spec, valid=(32, 32))
        path = tmp_path / f"g{grid}{suffix}"
        write(path, spec, feats, records)
        sizes[grid] = sum(len(b) for name, b in store_files(path).items() if "features" in name or "shard-" in name)
    valid_bytes = (8 - len(FAILED)) * 16 * 32 * 32 * 2
    assert sizes[32] < 1.1 * valid_bytes + 16_000  # failed images: a compressed chunk of zeros at most
    assert sizes[64] < 1.1 * sizes[32]


# -- crash safety, concurrency, disk full ------------------------------------------------------------------------------

def _killed_writer(path: Path, spec: StoreSpec, args, point: str) -> None:
    """Child process: write one shard and SIGKILL itself at ``point``, before the shard is marked done."""
    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point in ("status", "shard_done"):  # zarr: when the first object with this prefix is about to be written
        real_set = LocalStore.set

        async def set_(self, key, value):
            if key.startswith(point):
                die()
            return await real_set(self, key, value)
        LocalStore.set = set_
    elif point == "second image":  # hdf5: the temporary part file holds one image
        real_setitem, calls = h5py.Dataset.__setitem__, []

        def setitem(self, key, value):
            calls.append(key)
            if len(calls) == 2:
                die()
            real_setitem(self, key, value)
        h5py.Dataset.__setitem__ = setitem
    else:  # hdf5: the complete part file is about to be renamed into place
        real_replace = os.replace

        def replace(src, dst):
            if Path(dst).name.startswith("shard-"):
                die()
            real_replace(src, dst)
        os.replace = replace
    open_writer(path, spec).write_shard(*args)


def _writer(path: Path, spec: StoreSpec, shards: list) -> None:
    with open_writer(path, spec) as writer:
        for args in shards:
            writer.write_shard(*args)


def _run(*processes) -> list[int]:
    for p in processes:
        p.start()
    for p in processes:
        p.join(60)
    return [p.exitcode for p in processes]


@pytest.mark.slow
@pytest.mark.parametrize("suffix, point", [(".zarr", "status"), (".zarr", "shard_done"),
                                           (".h5", "second image"), (".h5", "rename")])
def test_killed_writer_leaves_a_resumable_store(tmp_path, suffix, point):
    spec = make_spec()
    feats, records = make_data(spec)
    clean, path = tmp_path / f"clean{suffix}", tmp_path / f"out{suffix}"
    write(clean, spec, feats, records)
    write(path, spec, feats, records, shards=[0, 2], finalize=False)
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_killed_writer, args=(path, spec, shard_args(spec, feats, records, 1), point))
    assert _run(child) == [-signal.SIGKILL]
    if point == "second image":  # hdf5 builds the part in memory: nothing of shard 1 reached the disk
        assert not list(Path(f"{path}.parts").glob("*shard-00000001*"))
    else:
        leftovers = [path / "features/c/1/0/0/0"] if suffix == ".zarr" else list(Path(f"{path}.parts").glob(".shard-*"))
        assert leftovers and all(p.is_file() for p in leftovers)  # it died with part of shard 1 on disk
    assert done(path, spec) == {0, 2}
    with pytest.raises(WrcError, match="not written"):
        finalize_store(path)
    with open_writer(path, spec) as writer:
        writer.write_shard(*shard_args(spec, feats, records, 1))
    finalize_store(path)
    assert_matches(path, spec, feats, records)
    assert store_files(path) == {k.replace("clean", "out"): v for k, v in store_files(clean).items()}


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_concurrent_writers_equal_one_writer(tmp_path, suffix):
    spec = make_spec(n=11, shard=2)
    feats, records = make_data(spec)
    single, multi = tmp_path / f"single{suffix}", tmp_path / f"multi{suffix}"
    write(single, spec, feats, records)
    create_store(multi, spec)
    ctx = multiprocessing.get_context("spawn")
    ranks = [[shard_args(spec, feats, records, k) for k in range(r, spec.n_shards, 2)] for r in (0, 1)]
    assert _run(*(ctx.Process(target=_writer, args=(multi, spec, shards)) for shards in ranks)) == [0, 0]
    finalize_store(multi)
    assert store_files(multi) == {k.replace("single", "multi"): v for k, v in store_files(single).items()}
    if suffix == ".h5":
        with h5py.File(single) as a, h5py.File(multi) as b:
            for name in a:
                np.testing.assert_array_equal(a[name][:], b[name][:])
    assert_matches(multi, spec, feats, records)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_disk_full_leaves_store_consistent(tmp_path, suffix, monkeypatch):
    spec = make_spec()
    feats, records = make_data(spec)
    path = tmp_path / f"out{suffix}"
    write(path, spec, feats, records, shards=[0], finalize=False)
    before = store_files(path)
    full = OSError(errno.ENOSPC, "No space left on device")
    if suffix == ".zarr":
        real_set = LocalStore.set

        async def set_(self, key, value):
            if key.startswith("input_hw"):  # features, path and orig_hw of the shard are already written
                raise full
            return await real_set(self, key, value)
        monkeypatch.setattr(LocalStore, "set", set_)
    else:
        real_setitem, calls = h5py.Dataset.__setitem__, []

        def setitem(self, key, value):
            calls.append(key)
            if len(calls) == 2:
                raise full
            real_setitem(self, key, value)
        monkeypatch.setattr(h5py.Dataset, "__setitem__", setitem)
    with open_writer(path, spec) as writer, pytest.raises(OSError) as info:
        writer.write_shard(*shard_args(spec, feats, records, 1))
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert done(path, spec) == {0}
    assert store_files(path) == before  # nothing of shard 1 is left, no temporary files
    write(path, spec, feats, records, shards=[1, 2])
    assert_matches(path, spec, feats, records)


# -- one writer per store ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_second_writer_is_refused_while_the_first_holds_the_lease(tmp_path, suffix, held_by_child):
    spec = make_spec()
    feats, records = make_data(spec)
    path = tmp_path / f"out{suffix}"
    write(path, spec, feats, records, shards=[0], finalize=False)
    before = store_files(path)
    child = held_by_child(path)
    with pytest.raises(WrcError) as info, lock_store(path):
        create_store(path, make_spec(fingerprint="other"), overwrite=True)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and f"pid {child.pid}" in message
    assert f"host {socket.gethostname()}" in message
    assert store_files(path) == before
    with pytest.raises(WrcError, match=f"pid {child.pid}"):
        check_job(path, "another job")
    assert check_job(path, f"process {socket.gethostname()}:{child.pid}")


def test_the_lease_is_released_and_names_the_job(tmp_path):
    path = tmp_path / "out.zarr"
    assert not check_job(path, "job 1")  # no lease yet: rank 0 has not taken it
    with lock_store(path, "job 1"):
        assert check_job(path, "job 1")
        with pytest.raises(WrcError, match="being written by another wrc extract"):
            lock_store(path, "job 2").acquire()
    assert not lock_path(path).exists()
    with lock_store(path, "job 2"):
        assert check_job(path, "job 2")


def _dead_pid() -> int:
    child = multiprocessing.get_context("spawn").Process(target=int)
    child.start()
    child.join()
    return child.pid


@pytest.mark.parametrize("host, age, stale", [("here", 0, True), ("elsewhere", 0, False),
                                              ("elsewhere", 2 * LEASE_S, True)])
def test_a_stale_lease_is_taken_over(tmp_path, caplog, host, age, stale):
    path = tmp_path / "out.h5"
    lease = lock_path(path)
    host = socket.gethostname() if host == "here" else "some-other-host"
    lease.write_text(json.dumps({"host": host, "pid": _dead_pid(), "job": "killed", "since": "then"}))
    os.utime(lease, (time.time() - age, time.time() - age))
    if not stale:
        with pytest.raises(WrcError, match="host some-other-host"):
            lock_store(path).acquire()
        assert json.loads(lease.read_text())["job"] == "killed"
        return
    with lock_store(path, "new job"):
        assert check_job(path, "new job")
    assert "took over the lease" in caplog.text
    assert not any(p.name != "out.h5" for p in tmp_path.iterdir() if p.name.startswith(".out.h5"))


def test_the_job_comes_from_torchrun_or_slurm(monkeypatch):
    for var in ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_NTASKS", "WORLD_SIZE", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert current_job() == f"process {socket.gethostname()}:{os.getpid()}"
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert current_job().startswith("slurm 77.")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setenv("MASTER_ADDR", "node1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert current_job() == "torchrun none@node1:29500"


# -- consistency: what a done marker promises is checked -----------------------------------------------------------

def shard_object(path: Path, name: str, k: int) -> Path:
    """The file of shard ``k`` of ``name`` (zarr: an array; hdf5: ``part`` or ``marker``)."""
    if path.suffix == ".h5":
        return Path(f"{path}.parts") / (f"shard-{k:08d}.h5" if name == "part" else f"shard-{k:08d}.done")
    tail = {"features": "/0/0/0", "shard_done": "/0", "orig_hw": "/0"}.get(name, "")
    return path / name / "c" / f"{k}{tail}"


@pytest.mark.parametrize("suffix, name", [(".zarr", "features"), (".zarr", "status"), (".h5", "part")])
@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_done_shard_whose_files_changed_is_reported_and_redone(tmp_path, suffix, name, damage):
    spec = make_spec()
    feats, records = make_data(spec)
    path = tmp_path / f"out{suffix}"
    write(path, spec, feats, records)
    target = shard_object(path, name, 1)
    if damage == "delete":
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[:-1])
    info = summary(path)
    assert info["inconsistent"] == [1] and not info["complete"] and info["done_shards"] == 2
    assert (info["ok"], info["failed"], info["pending"]) == (3, 1, 3)  # only shards 0 and 2 count
    with pytest.raises(WrcError, match=r"shard 1\b.*(rerun|keep)"):
        open_store(path)
    with open_writer(path, spec) as writer:
        assert writer.check_shards() == ({0, 2}, {1})
        writer.write_shard(*shard_args(spec, feats, records, 1))
    finalize_store(path)
    assert summary(path)["inconsistent"] == []
    assert_matches(path, spec, feats, records)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_lost_done_marker_of_a_finalized_store_is_inconsistent(tmp_path, suffix):
    spec = make_spec()
    feats, records = make_data(spec)
    path = tmp_path / f"out{suffix}"
    write(path, spec, feats, records)
    shard_object(path, "shard_done" if suffix == ".zarr" else "marker", 2).unlink()
    info = summary(path)
    assert info["inconsistent"] == [2] and (info["ok"], info["pending"]) == (4, 1)
    assert done(path, spec) == {0, 1}  # a rerun redoes it


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_an_unfinished_store_counts_only_done_shards(tmp_path, suffix):
    """A killed writer may leave shard 1's rows without its done marker: they are pending, not ok."""
    spec = make_spec()
    feats, records = make_data(spec)
    path = tmp_path / f"out{suffix}"
    write(path, spec, feats, records, shards=[0, 1], finalize=False)
    shard_object(path, "shard_done" if suffix == ".zarr" else "marker", 1).unlink()
    info = summary(path)
    assert (info["ok"], info["failed"], info["pending"], info["done_shards"]) == (2, 1, 4, 1)
    assert info["inconsistent"] == [] and not info["finalized"]


def test_a_moved_index_without_its_parts_counts_nothing_ok(tmp_path):
    spec = make_spec()
    feats, records = make_data(spec)
    path = tmp_path / "a" / "out.h5"
    write(path, spec, feats, records)
    (tmp_path / "b").mkdir()
    moved = shutil.copy(path, tmp_path / "b" / "out.h5")
    info = summary(moved)
    assert (info["ok"], info["failed"], info["pending"], info["complete"]) == (0, 0, 7, False)
    assert info["inconsistent"] == [0, 1, 2]


@pytest.mark.parametrize("suffix, name", [(".zarr", "features"), (".zarr", "orig_hw"), (".h5", "part")])
def test_verify_decodes_every_shard(tmp_path, suffix, name):
    spec = make_spec()
    feats, records = make_data(spec)
    path = tmp_path / f"out{suffix}"
    write(path, spec, feats, records)
    assert summary(path, verify=True)["verify"] == [] and "verify" not in summary(path)
    target = shard_object(path, name, 0)
    target.write_bytes(bytes(target.stat().st_size))  # same size, so only decoding finds it
    shard_object(path, "features" if suffix == ".zarr" else "part", 2).unlink()
    rows = name == "orig_hw"  # wrc info reads the per-image rows itself: their shard is then inconsistent already
    assert summary(path)["inconsistent"] == ([0, 2] if rows else [2])
    problems = summary(path, verify=True)["verify"]
    assert [p["shard"] for p in problems] == [0, 2]
    assert problems[1]["error"] == "missing or changed since it was written"
    if not rows:
        assert problems[0]["error"].startswith("does not decode: ") and "\n" not in problems[0]["error"]


def _as_layout(path: Path, version: int) -> None:
    """Turn a finished store into what wrcli wrote before ``file_stat`` (store layout 2), or also before the done
    markers recorded sizes (layout 1)."""
    if path.suffix == ".zarr":
        group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
        markers, objects = group["shard_done"][:], list(group["shard_done"].attrs["objects"])
        keep = [j for j, name in enumerate(objects) if name != "file_stat"]
        del group["shard_done"], group["file_stat"]
        if version == 1:
            group.create_array("shard_done", shape=(len(markers),), chunks=(1,), dtype="uint8", fill_value=0)[:] = 1
        else:
            group.create_array("shard_done", shape=(len(markers), len(keep)), chunks=(1, len(keep)), dtype="int64",
                               fill_value=0, attributes={"objects": [objects[j] for j in keep]})[:] = markers[:, keep]
        wrc = dict(group.attrs["wrc"])
        group.update_attributes({"wrc": {**wrc, "store": {**wrc["store"], "layout_version": version}}})
        zarr.consolidate_metadata(str(path))
        return
    parts = Path(f"{path}.parts")
    for part in parts.glob("*.h5"):
        with h5py.File(part, "r+") as f:
            del f["file_stat"]
        marker = part.with_suffix(".done")
        if version == 1:
            marker.unlink()
        else:
            marker.write_text(json.dumps({"bytes": part.stat().st_size}))
    meta = json.loads((parts / "wrc.json").read_text())
    meta["store"]["layout_version"] = version
    (parts / "wrc.json").write_text(json.dumps(meta))
    with h5py.File(path, "r+") as f:
        del f["file_stat"]
        index = json.loads(f.attrs["wrc"])
        index["store"]["layout_version"] = version
        f.attrs["wrc"] = json.dumps(index)


@pytest.mark.filterwarnings("ignore:Consolidated metadata")
@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
@pytest.mark.parametrize("version", [1, 2])
def test_a_store_of_the_earlier_layout_still_reads(tmp_path, suffix, version):
    """Finished stores written before ``file_stat`` (layout 2; read as (-1, -1)) or also before the size records
    (layout 1: their markers are taken as they say) stay readable and verify; only writing into one is refused
    (another layout: --overwrite)."""
    spec = make_spec()
    feats, records = make_data(spec)
    path = tmp_path / f"old{suffix}"
    write(path, spec, feats, records)
    _as_layout(path, version)
    assert_matches(path, spec, feats, [dataclasses.replace(r, file_stat=(-1, -1)) for r in records])
    info = summary(path, verify=True)
    assert info["complete"] and info["inconsistent"] == [] and info["ok"] == spec.n_images - len(FAILED)
    assert info["verify"] == []
    with pytest.raises(WrcError, match=f"older wrcli \\(store layout {version}; this one writes 3\\); use --overwrite"):
        create_store(path, spec)
