"""WebDataset tar shards as SRC: listing, failures with reasons, forward reading, stores equal to a folder's, resume,
ranks."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from wrcli import cli
from wrcli.data import discover
from wrcli.data.tars import list_shard, list_shards, read_images, shard_urls
from wrcli.errors import WrcError
from wrcli.stores import open_store

from .conftest import PHOTOS, photos
from .test_extract import (
    _cli_cmd, _env, assert_same_store, base_args, error_line, kill_9_after_shards, read_all, run_cli,
)

MTIME = 1_700_000_000


def pack(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar of ``members`` (name, data), as WebDataset writers make them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), MTIME
            tar.addfile(info, io.BytesIO(data))
    return path


def images(tmp_path: Path, n: int) -> list[Path]:
    """``n`` real photos where the shared data are, else small synthetic JPEGs (the tests never skip)."""
    real = sorted(PHOTOS.glob("*.jpg"))[:n] if PHOTOS.is_dir() else []
    return real if len(real) == n else sorted(photos(tmp_path / "synthetic", n).iterdir())


def samples(files: list[Path], first: int) -> list[tuple[str, bytes]]:
    """WebDataset samples: ``{key}.jpg`` and a caption ``{key}.txt`` per image, keys counting from ``first``."""
    out = []
    for i, f in enumerate(files):
        key = f"{first + i:09d}"
        out += [(f"{key}.jpg", f.read_bytes()), (f"{key}.txt", f"caption of {f.name}".encode())]
    return out


def cut_after(path: Path, member: str, into_data: int | None) -> None:
    """Truncate the tar at ``path`` inside ``member``'s data (``into_data`` bytes of it), or right after its padded
    data (``None``: the end-of-archive blocks are lost)."""
    with tarfile.open(path) as tar:
        info = tar.getmember(member)
    end = info.offset_data + (into_data if into_data is not None else -(-info.size // 512) * 512)
    path.write_bytes(path.read_bytes()[:end])


# -- listing and reading ------------------------------------------------------------------------------------------

def test_listing_groups_samples_and_names_images_as_webdataset_keys(tmp_path):
    jpg = images(tmp_path, 1)[0].read_bytes()
    shard = pack(tmp_path / "a.tar", [
        ("dir/0001.jpg", jpg), ("dir/0001.txt", b"x"), ("dir/0001.json", b"{}"),
        ("0002.JPEG", jpg), ("0003.jpg", jpg), ("0003.seg.png", jpg),  # two images in one sample
        ("._0004.jpg", b"apple double"), ("notes.txt", b"x"), ("noext", jpg), ("./0005.webp", jpg),
    ])
    rows = list_shard(str(shard))
    assert [r.name for r in rows] == [f"{shard}/dir/0001", f"{shard}/0002", f"{shard}/0003.jpg",
                                      f"{shard}/0003.seg.png", f"{shard}/0005"]
    assert [r.key for r in rows] == ["dir/0001", "0002", "0003", "0003", "0005"]
    assert [r.ordinal for r in rows] == [0, 3, 4, 5, 9] and not any(r.error for r in rows)
    assert rows[0].stat == (len(jpg), MTIME * 10**9) and rows[0].member == "dir/0001.jpg"


def test_truncated_corrupt_and_unreadable_shards_are_rows_with_reasons(tmp_path):
    files = images(tmp_path, 3)
    members = samples(files, 0)
    mid = pack(tmp_path / "mid.tar", members)
    cut_after(mid, "000000001.jpg", 100)  # inside the second image
    edge = pack(tmp_path / "edge.tar", members)
    cut_after(edge, "000000001.txt", None)  # at a member boundary: the end-of-archive blocks are gone
    damaged = pack(tmp_path / "damaged.tar", members)
    with tarfile.open(damaged) as tar:
        offset = tar.getmember("000000002.jpg").offset
    data = bytearray(damaged.read_bytes())
    data[offset:offset + 100] = b"\xff" * 100
    damaged.write_bytes(bytes(data))
    (tmp_path / "text.tar").write_text("not a tar at all " * 100)
    (tmp_path / "empty.tar").write_bytes(b"")

    def rows(name: str) -> list[tuple[str, str]]:
        return [(r.name.rsplit("/", 1)[-1], r.error) for r in list_shard(str(tmp_path / name))]

    assert rows("mid.tar") == [("000000000", ""), ("000000001", "truncated tar: the member's data are cut off")]
    assert rows("edge.tar") == [("000000000", ""), ("000000001", ""),
                                ("edge.tar", "truncated tar: ends after 4 members without its end-of-archive blocks")]
    damaged_rows = rows("damaged.tar")
    assert damaged_rows[:2] == [("000000000", ""), ("000000001", "")]
    assert damaged_rows[2][0] == "damaged.tar" and damaged_rows[2][1].startswith("corrupt tar: the header after member 4")
    assert rows("text.tar") == [("text.tar", "unreadable shard: not a tar file (invalid header)")]
    assert rows("empty.tar") == [("empty.tar", "unreadable shard: empty file")]
    assert rows("missing.tar") == [("missing.tar", "unreadable shard: No such file or directory")]
    failing = list_shard(f"pipe:cat {tmp_path}/missing.tar")
    assert len(failing) == 1 and failing[0].error.startswith("unreadable shard: the command exited with status 1: cat:")


def test_pipe_and_compressed_shards_list_and_read_like_local_ones(tmp_path):
    import gzip

    files = images(tmp_path, 2)
    local = pack(tmp_path / "a.tar", samples(files, 0))
    (tmp_path / "a.tar.gz").write_bytes(gzip.compress(local.read_bytes()))
    expected = [f.read_bytes() for f in files]
    for url in (str(local), f"pipe:cat {local}", str(tmp_path / "a.tar.gz"), f"pipe:cat {tmp_path}/a.tar.gz"):
        shards = list_shards([url])
        assert [r.key for r in shards.rows] == ["000000000", "000000001"]
        assert [e.data for e in shards.read([0, 1])] == expected, url
        assert [e.data for e in shards.read([1])] == expected[1:], url


def test_reading_stops_after_the_last_image_asked_for(tmp_path):
    """A pipe's command is ended once the images needed are read: the rest of the stream is never waited for."""
    shard = pack(tmp_path / "a.tar", samples(images(tmp_path, 2), 0))
    shards = list_shards([str(shard)])
    slow = f"pipe:cat {shard}; sleep 60"
    start = time.monotonic()
    got = list(read_images(slow, [(0, shards.rows[0])]))
    assert got[0].data and not got[0].error and time.monotonic() - start < 20


def test_a_tar_changed_since_it_was_listed_fails_its_images_with_a_reason(tmp_path):
    files = images(tmp_path, 3)
    shard = pack(tmp_path / "a.tar", samples(files, 0))
    shards = list_shards([str(shard)])
    pack(shard, samples(files[:1], 0) + samples(files[1:], 10))  # keys 1 and 2 replaced
    got = list(shards.read([0, 1, 2]))
    assert got[0].data == files[0].read_bytes() and not got[0].error
    assert all(e.error.startswith("not in the tar as listed") and not e.data for e in got[1:])
    pack(shard, samples(files, 0))
    cut_after(shard, "000000001.txt", None)
    got = list(shards.read([0, 1, 2]))  # cut after the second sample since it was listed
    assert [e.error for e in got] == ["", "", "truncated tar: ends after 4 members without its end-of-archive blocks"]


def test_shard_patterns_lists_and_globs(tmp_path, monkeypatch):
    jpg = images(tmp_path, 1)[0].read_bytes()
    for name in ("00000", "00001", "00002"):
        pack(tmp_path / "s" / f"{name}.tar", [(f"{name}.jpg", jpg)])
    monkeypatch.chdir(tmp_path)
    assert shard_urls("s/{00000..00002}.tar") == ["s/00000.tar", "s/00001.tar", "s/00002.tar"]
    assert shard_urls("s/*.tar") == ["s/00000.tar", "s/00001.tar", "s/00002.tar"]
    assert shard_urls("pipe:cat s/{00000..00001}.tar") == ["pipe:cat s/00000.tar", "pipe:cat s/00001.tar"]
    assert shard_urls("file:s/00001.tar") == ["s/00001.tar"]
    (tmp_path / "s" / "list.txt").write_text("# shards\n{00000..00001}.tar\npipe:cat s/00002.tar\n")
    source = discover("s/list.txt", containers=True)
    assert source.kind == "tar" and [n for n, _ in source.items] == [
        "s/00000.tar/00000", "s/00001.tar/00001", "pipe:cat s/00002.tar/00002"]
    (tmp_path / "s" / "mixed.txt").write_text("00000.tar\nphoto.jpg\n")
    with pytest.raises(WrcError, match="mixes tar shards and other entries"):
        discover("s/mixed.txt", containers=True)


def test_discover_tars(tmp_path):
    files = images(tmp_path, 3)
    pack(tmp_path / "0.tar", samples(files[:2], 0))
    pack(tmp_path / "1.tar", samples(files[2:], 2))
    source = discover(f"{tmp_path}/{{0..2}}.tar", containers=True)
    assert source.kind == "tar" and source.units == (0, 0, 1, 2)  # 2.tar is missing: one row saying so
    assert [n.rsplit("/", 1)[-1] for n, _ in source.items] == ["000000000", "000000001", "000000002", "2.tar"]
    assert list(source.columns["key"]) == ["000000000", "000000001", "000000002", ""]
    assert discover(f"{tmp_path}/{{0..2}}.tar", containers=True, limit=2).units == (0, 0)
    with pytest.raises(WrcError, match="only wrc extract reads"):
        discover(f"{tmp_path}/0.tar")  # training and viz open image files
    with pytest.raises(WrcError, match=r"no images in the 2 tar shards .*unreadable shard"):
        discover(f"{tmp_path}/{{7,8}}.tar", containers=True)
    with pytest.raises(WrcError, match="no tar shards match"):
        discover(f"{tmp_path}/nothing-*.tar", containers=True)


# -- extraction ---------------------------------------------------------------------------------------------------

def shards_and_folder(tmp_path: Path, n_tars: int = 3, per_tar: int = 3) -> tuple[list[Path], Path]:
    """``n_tars`` tars of ``per_tar`` photos each, and a folder with the same photos in the same order."""
    files = images(tmp_path, n_tars * per_tar)
    folder = tmp_path / "folder"
    folder.mkdir()
    tars = []
    for t in range(n_tars):
        chunk = files[t * per_tar:(t + 1) * per_tar]
        tars.append(pack(tmp_path / "shards" / f"{t:05d}.tar", samples(chunk, t * 1000)))
        for i, f in enumerate(chunk):
            shutil.copyfile(f, folder / f"{t:05d}-{i:03d}.jpg")
    return tars, folder


def assert_same_features(tar_store: Path, folder_store: Path) -> None:
    """The same features and sizes image by image (the names differ)."""
    with open_store(tar_store) as a, open_store(folder_store) as b:
        assert len(a) == len(b)
        for i, (ra, rb) in enumerate(zip(a.records, b.records)):
            assert (ra.orig_hw, ra.input_hw, ra.feat_hw, ra.error) == (rb.orig_hw, rb.input_hw, rb.feat_hw, rb.error)
            np.testing.assert_array_equal(a.features(i), b.features(i))


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_tar_store_equals_the_folder_store_of_the_same_images(tmp_path, vits_weights, capsys, monkeypatch, suffix):
    tars, folder = shards_and_folder(tmp_path)
    args = base_args(vits_weights, "--upsampler", "bilinear", "--shard-size", "2", "--batch-size", "2")
    src = f"{tmp_path}/shards/{{00000..00002}}.tar"
    code, out, _ = run_cli(["extract", src, str(tmp_path / f"t{suffix}"), *args, "--json"], capsys, monkeypatch)
    assert code == 0 and json.loads(out)["ok"] == 9
    assert run_cli(["extract", str(folder), str(tmp_path / f"f{suffix}"), *args], capsys, monkeypatch)[0] == 0
    assert_same_features(tmp_path / f"t{suffix}", tmp_path / f"f{suffix}")
    with open_store(tmp_path / f"t{suffix}") as store:
        assert [r.name for r in store.records][:2] == [f"{tars[0]}/000000000", f"{tars[0]}/000000001"]
        assert list(store.columns["key"]) == [f"{t * 1000 + i:09d}" for t in range(3) for i in range(3)]
        assert store.records[0].file_stat == (len(images(tmp_path, 9)[0].read_bytes()), MTIME * 10**9)
        assert store.metadata["source"] == {"kind": "tar", "root": src, "shards": 3}
        assert store.metadata["columns"]["names"] == ["key"]
    code, out, err = run_cli(["extract", src, str(tmp_path / f"t{suffix}"), *args], capsys, monkeypatch)
    assert code == 0 and "already complete" in err  # the listing matches: nothing is read or written


def test_bad_members_and_shards_are_recorded_and_the_run_continues(tmp_path, vits_weights, capsys, monkeypatch):
    files = images(tmp_path, 4)
    pack(tmp_path / "0.tar", samples(files[:2], 0) + [("000000002.jpg", b"\xff\xd8 not really a jpeg")])
    pack(tmp_path / "1.tar", samples(files[2:], 10))
    cut_after(tmp_path / "1.tar", "000000011.jpg", 1000)
    out = tmp_path / "o.zarr"
    args = base_args(vits_weights, "--upsampler", "bilinear", "--jsonl")
    code, stdout, _ = run_cli(["extract", f"pipe:cat {tmp_path}/{{0,1,2}}.tar", str(out), *args], capsys, monkeypatch)
    records = [json.loads(line) for line in stdout.splitlines()]
    assert code == cli.EXIT_PARTIAL
    assert [(r["path"].rsplit("/", 1)[-1], r["status"]) for r in records] == [
        ("000000000", "ok"), ("000000001", "ok"), ("000000002", "failed"), ("000000010", "ok"), ("000000011", "failed"),
        ("2.tar", "failed")]
    reasons = [r["error"] for r in records if r["error"]]
    assert reasons[0].startswith("corrupt") or reasons[0].startswith("not an image")
    assert reasons[1] == "truncated tar: the member's data are cut off"
    assert reasons[2].startswith("unreadable shard: the command exited with status 1")
    code, info, _ = run_cli(["info", str(out)], capsys, monkeypatch)
    assert "6: 3 ok, 3 failed, 0 pending" in info


def test_a_rerun_redoes_missing_shards_and_refuses_another_shard_list(tmp_path, vits_weights, capsys, monkeypatch):
    shards_and_folder(tmp_path)
    out = tmp_path / "o.zarr"
    src = f"{tmp_path}/shards/{{00000..00002}}.tar"
    args = ["extract", src, str(out), *base_args(vits_weights, "--upsampler", "nearest", "--shard-size", "2")]
    assert run_cli(args, capsys, monkeypatch)[0] == 0
    before = read_all(out)
    (out / "features/c/2/0/0/0").unlink()  # images 4, 5: the ends of tars 1 and 2
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0 and "shard 2 marked done but missing" in err
    after = read_all(out)
    assert after[0] == before[0] and all(np.array_equal(before[1][k], after[1][k]) for k in before[1])
    code, _, err = run_cli(["extract", f"{tmp_path}/shards/{{00000..00001}}.tar", *args[2:]], capsys, monkeypatch)
    assert code == 1 and "holds another image list (9 images, now 6)" in error_line(err)


def test_a_changed_tar_member_redoes_its_shard(tmp_path, vits_weights, capsys, monkeypatch):
    tars, _ = shards_and_folder(tmp_path, n_tars=2, per_tar=2)
    out = tmp_path / "o.h5"
    args = ["extract", f"{tmp_path}/shards/*.tar", str(out), *base_args(vits_weights, "--upsampler", "nearest",
                                                                         "--shard-size", "2")]
    assert run_cli(args, capsys, monkeypatch)[0] == 0
    with tarfile.open(tars[1]) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(tars[1], "w") as tar:  # the same names, one image rewritten at another time
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), MTIME + (3600 if name == "000001001.jpg" else 0)
            tar.addfile(info, io.BytesIO(data))
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0 and "1 image changed since it was extracted" in err and "redoing shard 1" in err


# -- crash and ranks (slow) -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_kill_9_mid_shard_then_rerun_equals_uninterrupted(tmp_path, vits_weights):
    shards_and_folder(tmp_path, n_tars=4, per_tar=5)
    args = [a if a != "56" else "112" for a in base_args(vits_weights, "--upsampler", "bilinear", "--batch-size", "1",
                                                         "--shard-size", "3")]
    src = f"pipe:cat {tmp_path}/shards/{{00000..00003}}.tar"
    killed, clean = tmp_path / "killed.zarr", tmp_path / "clean.zarr"
    proc = subprocess.Popen(_cli_cmd("extract", src, str(killed), *args), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    kill_9_after_shards(proc, killed, 2, timeout=180)
    with pytest.raises(WrcError, match="not finished"):
        open_store(killed)
    rerun = subprocess.run(_cli_cmd("extract", src, str(killed), *args), env=_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    full = subprocess.run(_cli_cmd("extract", src, str(clean), *args), env=_env(), capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    assert_same_store(killed, clean)
    with open_store(killed) as a, open_store(clean) as b:
        assert list(a.columns["key"]) == list(b.columns["key"])


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_torchrun_two_ranks_over_four_tars_equal_one_process(tmp_path, vits_weights, suffix):
    shards_and_folder(tmp_path, n_tars=4, per_tar=3)
    args = base_args(vits_weights, "--upsampler", "bilinear", "--batch-size", "2", "--shard-size", "2")
    src = f"{tmp_path}/shards/{{00000..00003}}.tar"
    one, two = tmp_path / f"one{suffix}", tmp_path / f"two{suffix}"
    r1 = subprocess.run(_cli_cmd("extract", src, str(one), *args), env=_env(), capture_output=True, text=True)
    assert r1.returncode == 0, r1.stderr
    port = str(29500 + (os.getpid() + 7) % 1000)
    r2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={port}",
                         "-m", "wrcli", "extract", src, str(two), *args], env=_env(), capture_output=True, text=True,
                        timeout=300)
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert_same_store(one, two)
    assert "extract[rank 0]" in r2.stderr and "extract[rank 1]" in r2.stderr
