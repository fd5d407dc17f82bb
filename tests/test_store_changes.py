"""Reruns of ``wrc extract`` on a store that exists: a finished one needs no write (and reruns where OUT's folder is
read-only), and the images whose file changed since they were extracted are redone (``file_stat``)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from wrcli import cli, extract
from wrcli.data import ImageDataset, ResizePolicy
from wrcli.errors import WrcError
from wrcli.stores import create_store, finalize_store, lock, open_store  # lock: the lease's module
from wrcli.stores.base import stored_metadata
from wrcli.stores.mismatch import difference

from .conftest import ARCH, photos
from .test_extract import base_args, error_line, read_all, run_cli
from .test_stores import make_data, make_spec, shard_object, write


def extract_args(src: Path, out: Path, weights: Path, *extra: str) -> list[str]:
    return ["extract", str(src), str(out), *base_args(weights, "--upsampler", "nearest", "--shard-size", "2", *extra)]


def store_roots(out: Path) -> list[Path]:
    return [out] if out.suffix == ".zarr" else [out, Path(f"{out}.parts")]


def snapshot(out: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every file and folder of the store: inode, modification time and content (None for a folder)."""
    found = {}
    for root in store_roots(out):
        for p in [root, *sorted(root.rglob("*"))]:
            st = p.stat()
            found[str(p)] = (st.st_ino, st.st_mtime_ns, p.read_bytes() if p.is_file() else None)
    return found


def read_only(file: Path, text: str) -> bool:
    """The lease's file cannot be made: what a read-only disk (or a folder of another user) answers."""
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))


def touch_later(path: Path, seconds: int = 10) -> None:
    """The same bytes, a later modification time."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 10**9))


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_rerun_of_a_finished_store_writes_nothing_even_where_it_cannot(tmp_path, vits_weights, capsys,
                                                                         monkeypatch, suffix):
    src = photos(tmp_path / "in", 5)
    out = tmp_path / f"out{suffix}"
    args = extract_args(src, out, vits_weights)
    assert run_cli(args, capsys, monkeypatch)[0] == 0
    before = snapshot(out)
    complete = f"wrc: {out} is already complete (5 ok, 0 failed of 5 images); nothing to do"
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0 and complete in err
    assert snapshot(out) == before  # finalize rewrote no metadata
    with monkeypatch.context() as m:
        m.setattr(lock, "_create", read_only)
        code, _, err = run_cli(args, capsys, monkeypatch)
        assert code == 0 and complete in err
        assert snapshot(out) == before
        touch_later(src / "img 003.jpg")
        code, _, err = run_cli(args, capsys, monkeypatch)
        assert code == 1 and error_line(err) == (
            f"wrc: error: {out} needs writing, as 1 image changed since it was extracted (size or modification time): "
            f"'img 003.jpg', but its folder {tmp_path} is not writable (Read-only file system); make it writable or "
            "choose another OUT")
        (src / "img 003.jpg").unlink()
        code, _, err = run_cli(args, capsys, monkeypatch)
        assert code == 1 and "needs writing, as it holds another image list (5 images, now 4), but" in error_line(err)
    assert snapshot(out) == before
    code, _, err = run_cli(args, capsys, monkeypatch)  # the lease can be made: a mismatch is the usual refusal
    assert code == 1 and "holds another image list (5 images, now 4); use --overwrite" in error_line(err)


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_store_to_write_on_a_read_only_folder_is_one_line(tmp_path, vits_weights, capsys, monkeypatch, suffix):
    src = photos(tmp_path / "in", 3)
    out = tmp_path / f"out{suffix}"
    args = extract_args(src, out, vits_weights)

    def refused() -> str:
        with monkeypatch.context() as m:
            m.setattr(lock, "_create", read_only)
            code, _, err = run_cli(args, capsys, monkeypatch)
        assert code == 1
        return error_line(err)

    assert refused() == (f"wrc: error: {out} needs writing, as there is no store yet, but its folder {tmp_path} is "
                         "not writable (Read-only file system); make it writable or choose another OUT")
    assert not any(p.exists() for p in store_roots(out))
    assert run_cli(args, capsys, monkeypatch)[0] == 0
    shard_object(out, "features" if suffix == ".zarr" else "part", 1).unlink()
    assert f"{out} needs writing, as shard 1 is missing or changed, but its folder" in refused()


def _read_only_mount(folder: Path) -> list[str] | None:
    """A command prefix that runs a command with ``folder`` mounted read-only for it alone (a private mount
    namespace), or None where this system does not allow one."""
    if shutil.which("unshare") is None:
        return None
    prefix = ["unshare", "--mount", "--map-root-user", "sh", "-c",
              'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"', str(folder)]
    probe = subprocess.run([*prefix, "sh", "-c", f'! touch "{folder}/probe" 2>/dev/null'], capture_output=True,
                           check=False)
    return prefix if probe.returncode == 0 and not (folder / "probe").exists() else None


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_finished_store_reruns_on_a_read_only_file_system(tmp_path, vits_weights, capsys, monkeypatch, suffix):
    """A real read-only file system (EROFS for every write), not an injected error: the rerun reads only."""
    src, folder = photos(tmp_path / "in", 3), tmp_path / "ro"
    folder.mkdir()
    out = folder / f"out{suffix}"
    prefix = _read_only_mount(folder)
    if prefix is None:
        pytest.skip("no read-only bind mount in a private mount namespace here (unshare)")
    args = extract_args(src, out, vits_weights)
    assert run_cli(args, capsys, monkeypatch)[0] == 0
    before = snapshot(out)
    rerun = subprocess.run([*prefix, sys.executable, "-m", "wrcli", *args], capture_output=True, text=True,
                           env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert f"wrc: {out} is already complete (3 ok, 0 failed of 3 images); nothing to do" in rerun.stderr
    assert snapshot(out) == before and sorted(p.name for p in folder.iterdir()) == [p.name for p in store_roots(out)]


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_rerun_redoes_the_shards_of_images_that_changed(tmp_path, vits_weights, capsys, monkeypatch, suffix):
    """A changed image (other bytes, or only a later modification time) and a failed one that was fixed are
    redone, with their shards; the others are kept. The result equals a fresh extraction of the new images."""
    src = photos(tmp_path / "in", 6)
    (src / "img 005.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / f"out{suffix}"
    args = extract_args(src, out, vits_weights)
    assert run_cli(args, capsys, monkeypatch)[0] == cli.EXIT_PARTIAL
    records, feats = read_all(out)
    for record in records:
        st = (src / record.name).stat()
        assert record.file_stat == (st.st_size, st.st_mtime_ns)
    shutil.copyfile(src / "img 001.jpg", src / "img 005.jpg")  # fixed
    photos(tmp_path / "other", 1, seed=7)
    shutil.copyfile(tmp_path / "other/img 000.jpg", src / "img 000.jpg")  # other content
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0 and (f"{out}: 2 images changed since they were extracted (size or modification time), "
                          "e.g. 'img 000.jpg'; redoing shards 0, 2") in err
    assert "6 ok, 0 failed of 6 images" in err
    again, feats_again = read_all(out)
    assert [r.name for r in again if r.ok] == [r.name for r in records] and again[2:4] == records[2:4]
    assert not np.array_equal(feats["img 000.jpg"], feats_again["img 000.jpg"])
    assert all(np.array_equal(feats[name], feats_again[name]) for name in ("img 001.jpg", "img 002.jpg"))
    fresh = tmp_path / f"fresh{suffix}"
    assert run_cli(extract_args(src, fresh, vits_weights), capsys, monkeypatch)[0] == 0
    expected, feats_fresh = read_all(fresh)
    assert again == expected and all(np.array_equal(feats_again[k], feats_fresh[k]) for k in feats_fresh)
    touch_later(src / "img 002.jpg")  # same bytes, touched: redone all the same
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0 and (f"{out}: 1 image changed since it was extracted (size or modification time): "
                          "'img 002.jpg'; redoing shard 1") in err
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0 and "already complete" in err and "changed" not in err


def test_the_dataset_stats_each_file_before_reading_it(tmp_path):
    src = photos(tmp_path / "in", 1)
    path = src / "img 000.jpg"
    st = path.stat()
    items = ImageDataset([(0, str(path)), (1, str(tmp_path / "gone.jpg"))], ResizePolicy(size=56))
    assert items[0]["file_stat"] == (st.st_size, st.st_mtime_ns) and items[0]["error"] is None
    assert items[1]["file_stat"] == (-1, -1) and items[1]["error"] == "file not found"


@pytest.mark.filterwarnings("ignore:Consolidated metadata")
def test_finalizing_a_finalized_zarr_store_again_writes_nothing(tmp_path):
    spec = make_spec()
    feats, records = make_data(spec)
    path = tmp_path / "out.zarr"
    write(path, spec, feats, records)
    before = snapshot(path)
    assert finalize_store(path)["ok"] == spec.n_images - 2
    assert snapshot(path) == before
    with open_store(path) as store:
        assert store.records == records
    zarr.open_group(str(path), mode="r+", use_consolidated=False)["status"][0] = 2  # the counts changed: recorded
    assert finalize_store(path)["ok"] == spec.n_images - 3


def test_a_store_of_an_earlier_layout_is_named_as_such():
    spec = make_spec()
    old = stored_metadata(spec)
    old["store"]["layout_version"] = 2
    assert difference(old, stored_metadata(spec)) == "was written by an older wrcli (store layout 2; this one writes 3)"
    del old["store"]["layout_version"]  # before any layout was recorded
    assert "store layout 1;" in difference(old, stored_metadata(spec))


def test_resuming_a_store_of_an_earlier_layout_needs_overwrite(tmp_path):
    spec = make_spec()
    path = tmp_path / "out.zarr"
    create_store(path, spec)
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    wrc = dict(group.attrs["wrc"])
    group.update_attributes({"wrc": {**wrc, "store": {**wrc["store"], "layout_version": 2}}})
    with pytest.raises(WrcError) as info:
        create_store(path, spec)
    assert str(info.value) == (f"{path} was written by an older wrcli (store layout 2; this one writes 3); "
                               "use --overwrite to replace it, or another OUT")
    create_store(path, spec, overwrite=True)
    assert zarr.open_group(str(path), mode="r").attrs["wrc"]["store"]["layout_version"] == 3


def test_a_resumed_unfinished_store_redoes_its_changed_images_too(tmp_path, vits_weights, capsys, monkeypatch):
    src = photos(tmp_path / "in", 4)
    out = tmp_path / "out.zarr"
    args = extract_args(src, out, vits_weights)
    with monkeypatch.context() as m:
        m.setattr(extract, "finalize_store", lambda out: sys.exit(9))  # killed once every shard was written
        assert run_cli(args, capsys, monkeypatch)[0] == 9
        m.setattr(lock, "_create", read_only)
        code, _, err = run_cli(args, capsys, monkeypatch)
        assert code == 1 and "needs writing, as it is not finalized (2 of 2 shards written), but" in error_line(err)
    touch_later(src / "img 003.jpg")
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0 and (f"{out}: 1 image changed since it was extracted (size or modification time): "
                          "'img 003.jpg'; redoing shard 1") in err and "4 ok, 0 failed of 4 images" in err
    assert read_all(out)[0][3].file_stat[1] == (src / "img 003.jpg").stat().st_mtime_ns


def test_the_other_ranks_of_a_rerun_of_a_finished_store_wait_for_no_lease(tmp_path, vits_weights, capsys,
                                                                           monkeypatch):
    """Rank 0 takes no lease when it has nothing to write (or cannot): rank 1 does not wait for one."""
    src = photos(tmp_path / "in", 3)
    out = tmp_path / "out.zarr"
    assert run_cli(extract_args(src, out, vits_weights), capsys, monkeypatch)[0] == 0
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    opts = extract.ExtractOptions(backbone=ARCH, backbone_weights=str(vits_weights), upsampler="nearest", size=56,
                                  workers=0, shard_size=2, wait_timeout=1.0, precision="fp32")  # as base_args
    assert extract.extract(str(src), str(out), opts, progress=False) == {
        "rank": 1, "ok": 0, "failed": 0, "processed": 0, "seconds": 0.0, "images_per_s": 0.0}
