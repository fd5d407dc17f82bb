"""End-to-end ``wrc extract``: stores equal direct computation, resume after kill -9, torchrun, bad input."""

from __future__ import annotations

import errno
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from wrcli import cli, extract
from wrcli.backbones import load_backbone
from wrcli.data import ResizePolicy, load_image
from wrcli.models import load_upsampler
from wrcli.runtime import lean_forks, run_when_idle
from wrcli.stores import open_store

from .conftest import ARCH, photos


def run_cli(args: list[str], capsys, monkeypatch, stdin: str | None = None) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["wrc", *args])
    if stdin is not None:
        import io

        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """The one error line of a failed command (progress lines may precede it; no traceback)."""
    errors = [line for line in err.splitlines() if line.startswith("wrc: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def base_args(weights: Path, *extra: str) -> list[str]:
    """Quick settings, at ``--precision fp32``: the tests compare stores with fp32 computations bit for bit."""
    return ["--backbone", ARCH, "--backbone-weights", str(weights), "--size", "56", "--workers", "0",
            "--precision", "fp32", *extra]


def read_all(path: Path) -> tuple[list, dict[str, np.ndarray]]:
    with open_store(path) as store:
        return store.records, {name: feats for name, feats in store}


@pytest.fixture(scope="session")
def wrc_checkpoint(tmp_path_factory) -> Path:
    """An (untrained, fixed) WRC upsampler for ViT-S/14 saved as a wrcli checkpoint."""
    from wrcli.models import create_upsampler, save_upsampler

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("ckpt") / "wrc-random.safetensors"
    save_upsampler(create_upsampler("wrc", 384, 14), path)
    return path


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
@pytest.mark.parametrize("upsampler", ["bilinear", "checkpoint"])
def test_store_equals_direct_computation(tmp_path, vits_weights, wrc_checkpoint, capsys, monkeypatch, suffix, upsampler):
    upsampler = str(wrc_checkpoint) if upsampler == "checkpoint" else upsampler
    src = photos(tmp_path / "in", 5)
    out = tmp_path / f"out{suffix}"
    code, stdout, _ = run_cli(["extract", str(src), str(out), *base_args(vits_weights, "--upsampler", upsampler,
                                                                        "--batch-size", "1", "--json")], capsys, monkeypatch)
    assert code == 0
    summary = json.loads(stdout)
    assert summary["ok"] == 5 and summary["failed"] == 0 and summary["complete"]

    backbone = load_backbone(ARCH, vits_weights)
    up = load_upsampler(upsampler, backbone).fold_batchnorm().to(memory_format=torch.channels_last)  # as extract runs it on a CPU
    policy = ResizePolicy(size=56, patch=14)
    records, feats = read_all(out)
    assert [r.name for r in records] == sorted(p.name for p in src.iterdir())
    for rec in records:
        pixels, orig = load_image(str(src / rec.name), policy)
        x = torch.from_numpy(pixels).permute(2, 0, 1)[None]
        with torch.inference_mode():
            img = backbone.normalize(x)
            ref = up.upsample(backbone(img), img, scale=2).half()[0].numpy()
        assert rec.orig_hw == orig and rec.input_hw == pixels.shape[:2]
        assert rec.feat_hw == ref.shape[-2:] == (pixels.shape[0] // 14 * 2, pixels.shape[1] // 14 * 2)
        np.testing.assert_array_equal(feats[rec.name], ref)

    with open_store(out) as store:
        meta = store.metadata
    assert meta["backbone"]["weights_sha256"] and meta["upsampler"]["name"] == up.name
    assert (meta["upsampler"]["checkpoint_sha256"] is not None) == (upsampler == str(wrc_checkpoint))
    assert meta["resize"]["size"] == 56 and meta["dtype"] == "float16" and meta["command_line"].startswith("wrc extract")
    code, info, _ = run_cli(["info", str(out), "--json"], capsys, monkeypatch)
    assert code == 0 and json.loads(info)["ok"] == 5


def test_batching_and_workers_do_not_change_the_store(tmp_path, vits_weights, capsys, monkeypatch):
    src = photos(tmp_path / "in", 9)
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    assert run_cli(["extract", str(src), str(a), *base_args(vits_weights, "--upsampler", "bilinear", "--batch-size", "1")],
                   capsys, monkeypatch)[0] == 0
    args = ["extract", str(src), str(b), *base_args(vits_weights, "--upsampler", "bilinear", "--batch-size", "4")]
    args[args.index("--workers") + 1] = "2"
    assert run_cli(args, capsys, monkeypatch)[0] == 0
    ra, fa = read_all(a)
    rb, fb = read_all(b)
    assert ra == rb
    for name in fa:
        np.testing.assert_allclose(fa[name].astype(np.float32), fb[name].astype(np.float32), rtol=2e-3, atol=2e-3)


def test_sources_stdin_glob_list_limit_and_jsonl(tmp_path, vits_weights, capsys, monkeypatch):
    src = photos(tmp_path / "in", 4)
    names = sorted(p.name for p in src.iterdir())
    stdin = "".join(f"{src / n}\n" for n in names[::-1])
    code, out, _ = run_cli(["extract", "-", str(tmp_path / "s.zarr"), *base_args(vits_weights, "--upsampler", "nearest",
                                                                             "--jsonl")], capsys, monkeypatch, stdin)
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [Path(r["path"]).name for r in lines] == names[::-1] and all(r["status"] == "ok" for r in lines)
    code, out, _ = run_cli(["extract", str(src / "*.jpg"), str(tmp_path / "g.h5"),
                            *base_args(vits_weights, "--upsampler", "nearest", "--limit", "2", "--json")], capsys, monkeypatch)
    assert code == 0 and json.loads(out)["n_images"] == 2
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"in/{n}\n" for n in names[:3]))
    code, out, _ = run_cli(["extract", str(listing), str(tmp_path / "l.zarr"),
                            *base_args(vits_weights, "--upsampler", "nearest", "--json")], capsys, monkeypatch)
    assert code == 0 and json.loads(out)["ok"] == 3


def test_crop_scale_out_size_layers_and_dtype(tmp_path, vits_weights, wrc_checkpoint, capsys, monkeypatch):
    src = photos(tmp_path / "in", 3)
    out = tmp_path / "c.zarr"
    args = base_args(vits_weights, "--upsampler", "bilinear", "--crop", "--scale", "4", "--layers", "5,-1", "--dtype", "float32")
    assert run_cli(["extract", str(src), str(out), *args], capsys, monkeypatch)[0] == 0
    records, feats = read_all(out)
    assert all(f.shape == (768, 16, 16) and f.dtype == np.float32 for f in feats.values())
    learned = tmp_path / "l.zarr"  # a learned upsampler takes one layer's channels and runs on each layer
    args = base_args(vits_weights, "--upsampler", str(wrc_checkpoint), "--layers", "5,-1", "--batch-size", "1")
    assert run_cli(["extract", str(src), str(learned), *args], capsys, monkeypatch)[0] == 0
    backbone = load_backbone(ARCH, vits_weights, layers=[5, -1])
    up = load_upsampler(str(wrc_checkpoint), backbone)
    name = read_all(learned)[0][0].name
    pixels = torch.from_numpy(load_image(str(src / name), ResizePolicy(size=56, patch=14))[0]).permute(2, 0, 1)[None]
    with torch.inference_mode():
        img = backbone.normalize(pixels)
        both = backbone(img)
        ref = torch.cat([up.upsample(both[:, :384], img, scale=2), up.upsample(both[:, 384:], img, scale=2)], 1)
    got = read_all(learned)[1][name].astype(np.float32)  # both layers in one batch: equal up to float rounding
    np.testing.assert_allclose(got, ref[0].numpy(), rtol=2e-3, atol=2e-3)
    out2 = tmp_path / "o.zarr"
    assert run_cli(["extract", str(src), str(out2), *base_args(vits_weights, "--upsampler", "bicubic", "--out-size", "10x12")],
                   capsys, monkeypatch)[0] == 0
    assert all(f.shape == (384, 10, 12) for f in read_all(out2)[1].values())
    out3 = tmp_path / "raw.zarr"
    assert run_cli(["extract", str(src), str(out3), *base_args(vits_weights, "--scale", "1")], capsys, monkeypatch)[0] == 0
    with open_store(out3) as store:
        assert store.metadata["upsampler"] == {"name": "none"}
        assert all(f.shape[0] == 384 for _, f in store)


def bad_inputs(folder: Path) -> dict[str, str]:
    """Write every kind of awkward input; returns name → expected status."""
    folder.mkdir(parents=True)
    good = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 80, 3), dtype=np.uint8))
    good.save(folder / "ok plain.jpg")
    good.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((np.linspace(0, 65535, 64 * 80).reshape(64, 80)).astype(np.uint16)).save(folder / "grey16.png")
    good.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png", transparency=0)
    good.convert("RGBA").save(folder / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    good.save(folder / "rotated.jpg", exif=exif)
    (folder / "ünïcode ñame.png").write_bytes((folder / "alpha.png").read_bytes())
    Image.new("RGB", (5, 3)).save(folder / "tiny.png")
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    data = (folder / "ok plain.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    Image.new("1", (20000, 20000)).save(folder / "bomb.png")  # 400 Mpx: over Pillow's bomb limit, a few kB on disk
    (folder / "loop").mkdir()
    os.symlink("..", folder / "loop" / "up")
    ok = ["ok plain.jpg", "cmyk.jpg", "grey16.png", "palette.png", "alpha.png", "rotated.jpg", "ünïcode ñame.png"]
    failed = ["tiny.png", "zero.jpg", "text.jpg", "truncated.jpg", "corrupt.png", "bomb.png"]
    return {**{n: "ok" for n in ok}, **{n: "failed" for n in failed}}


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_bad_inputs_are_recorded_and_the_run_continues(tmp_path, vits_weights, capsys, monkeypatch, suffix):
    expected = bad_inputs(tmp_path / "in")
    out = tmp_path / f"bad{suffix}"
    code, stdout, stderr = run_cli(["extract", str(tmp_path / "in"), str(out),
                                    *base_args(vits_weights, "--upsampler", "bilinear", "--json")], capsys, monkeypatch)
    assert code == cli.EXIT_PARTIAL
    summary = json.loads(stdout)
    assert summary["ok"] == 7 and summary["failed"] == 6
    with open_store(out) as store:
        status = {r.name: ("failed" if r.error else "ok") for r in store.records}
        reasons = {r.name: r.error for r in store.records if r.error}
        rotated = next(r for r in store.records if r.name == "rotated.jpg")
    assert status == expected  # the symlink loop adds no duplicates and no hang
    assert all(reasons.values()) and all("\n" not in r for r in reasons.values())
    assert "bomb" in reasons["bomb.png"] and "patch" in reasons["tiny.png"]
    assert rotated.orig_hw == (80, 64)  # EXIF orientation 6 applied
    code, info, _ = run_cli(["info", str(out)], capsys, monkeypatch)
    assert code == 0 and "13: 7 ok, 6 failed, 0 pending" in info and "bomb.png:" in info


def test_usage_errors_are_one_line(tmp_path, vits_weights, capsys, monkeypatch):
    src = photos(tmp_path / "in", 2)
    args = base_args(vits_weights, "--upsampler", "nearest")
    code, _, err = run_cli(["extract", str(tmp_path / "missing"), str(tmp_path / "x.zarr"), *args], capsys, monkeypatch)
    assert code == 1 and "missing" in error_line(err)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(["extract", str(src), str(blocker / "out.zarr"), *args], capsys, monkeypatch)
    assert code == 1 and error_line(err)
    code, _, err = run_cli(["extract", str(src), str(tmp_path / "out.txt"), *args], capsys, monkeypatch)
    assert code == cli.EXIT_USAGE and "--format" in err  # a usage error (typer's message), before any loading
    out = tmp_path / "o.zarr"
    assert run_cli(["extract", str(src), str(out), *args], capsys, monkeypatch)[0] == 0
    code, _, err = run_cli(["extract", str(src), str(out), *base_args(vits_weights, "--upsampler", "bilinear")], capsys, monkeypatch)
    assert code == 1 and "--overwrite" in error_line(err)
    code, _, _ = run_cli(["extract", str(src), str(out), *base_args(vits_weights, "--upsampler", "bilinear", "--overwrite")],
                         capsys, monkeypatch)
    assert code == 0
    with open_store(out) as store:
        assert store.metadata["upsampler"]["name"] == "bilinear"
    code, _, err = run_cli(["extract", str(src), str(tmp_path / "w.zarr"), "--backbone", ARCH, "--size", "56",
                            "--backbone-weights", str(tmp_path / "nope.safetensors")], capsys, monkeypatch)
    assert code == 1 and "nope.safetensors" in error_line(err)


def test_full_disk_is_one_line_and_the_rerun_finishes(tmp_path, vits_weights, capsys, monkeypatch):
    src = photos(tmp_path / "in", 6)
    out = tmp_path / "full.zarr"
    args = ["extract", str(src), str(out), *base_args(vits_weights, "--upsampler", "nearest", "--shard-size", "2")]
    from wrcli.stores import zarr_store

    real = zarr_store.ZarrWriter.write_shard
    calls = {"n": 0}

    def filling(self, k, features, records):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(out))
        return real(self, k, features, records)

    monkeypatch.setattr(zarr_store.ZarrWriter, "write_shard", filling)
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 1 and "no space left" in error_line(err)
    monkeypatch.setattr(zarr_store.ZarrWriter, "write_shard", real)
    code, _, _ = run_cli(args, capsys, monkeypatch)
    assert code == 0
    clean = tmp_path / "clean.zarr"
    assert run_cli(["extract", str(src), str(clean), *args[3:]], capsys, monkeypatch)[0] == 0
    assert_same_store(out, clean)


def assert_same_store(a: Path, b: Path) -> None:
    ra, fa = read_all(a)
    rb, fb = read_all(b)
    assert ra == rb
    assert fa.keys() == fb.keys()
    for name in fa:
        np.testing.assert_array_equal(fa[name], fb[name])


def _cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "wrcli", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def kill_9_after_shards(proc: subprocess.Popen, store: Path, shards: int, timeout: float) -> None:
    """``kill -9`` the extract ``proc`` as soon as ``shards`` shards of the Zarr ``store`` are marked done."""
    done, deadline = store / "shard_done", time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if done.exists() and sum(1 for p in done.rglob("*") if p.is_file() and p.name != "zarr.json") >= shards:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_kill_9_then_rerun_equals_uninterrupted(tmp_path, vits_weights):
    src = photos(tmp_path / "in", 24)
    args = ["extract", str(src), "OUT", *base_args(vits_weights, "--upsampler", "bilinear", "--size", "112",
                                                   "--batch-size", "1", "--shard-size", "2")]
    args.remove("56")
    args.insert(args.index("--size") + 1, "112") if args[args.index("--size") + 1] != "112" else None
    killed = tmp_path / "killed.zarr"
    cmd = _cli_cmd(*[str(killed) if a == "OUT" else a for a in args])
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kill_9_after_shards(proc, killed, 3, timeout=120)
    rerun = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    clean = tmp_path / "clean.zarr"
    full = subprocess.run(_cli_cmd(*[str(clean) if a == "OUT" else a for a in args]), env=_env(), capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    assert_same_store(killed, clean)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_torchrun_two_processes_equal_one(tmp_path, vits_weights, suffix):
    src = photos(tmp_path / "in", 7)
    args = base_args(vits_weights, "--upsampler", "bilinear", "--batch-size", "2", "--shard-size", "2")
    one = tmp_path / f"one{suffix}"
    two = tmp_path / f"two{suffix}"
    r1 = subprocess.run(_cli_cmd("extract", str(src), str(one), *args), env=_env(), capture_output=True, text=True)
    assert r1.returncode == 0, r1.stderr
    port = str(29500 + os.getpid() % 1000)
    r2 = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={port}",
         "-m", "wrcli", "extract", str(src), str(two), *args],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert_same_store(one, two)
    assert "extract[rank 0]" in r2.stderr and "extract[rank 1]" in r2.stderr


def test_lean_forks_freezes_the_collector_only_inside():
    """Objects frozen for the DataLoader's fork are handed back to the collector (frozen ones are never freed)."""
    with lean_forks():
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


def policy_after(fn, *args) -> int:
    """The scheduling policy of a fresh thread after it ran ``fn(*args)``."""
    seen = []
    thread = threading.Thread(target=lambda: (fn(*args), seen.append(os.sched_getscheduler(0))))
    thread.start()
    thread.join()
    return seen[0]


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policies")
def test_run_when_idle_changes_the_calling_thread_only():
    assert policy_after(run_when_idle) == os.SCHED_IDLE
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policies")
def test_cpu_extract_writes_and_decodes_on_idle_time(tmp_path, vits_weights, capsys, monkeypatch):
    """On a CPU run the writer, zarr's I/O threads and the decode workers yield to the compute's threads."""
    writer_policy, loaders = [], []
    write_shards = extract._ShardWriter.run

    def writer_run(self):  # the writer thread's policy, read in that thread once it has written everything
        write_shards(self)
        writer_policy.append(os.sched_getscheduler(0))

    monkeypatch.setattr(extract._ShardWriter, "run", writer_run)
    monkeypatch.setattr("wrcli.extract.DataLoader", lambda *a, **kw: loaders.append(kw) or DataLoader(*a, **kw))
    src = photos(tmp_path / "in", 3)
    out = tmp_path / "out.zarr"
    args = ["extract", str(src), str(out), *base_args(vits_weights, "--upsampler", "bilinear")]
    args[args.index("--workers") + 1] = "1"
    assert run_cli(args, capsys, monkeypatch)[0] == 0
    assert writer_policy == [os.SCHED_IDLE]
    zarr_threads = [t.native_id for t in threading.enumerate() if t.name.startswith("zarr_")]
    assert zarr_threads and all(os.sched_getscheduler(tid) == os.SCHED_IDLE for tid in zarr_threads)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    assert policy_after(loaders[0]["worker_init_fn"], 0) == os.SCHED_IDLE  # what each decode worker runs first


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_second_extract_on_a_store_being_written_is_refused(tmp_path, vits_weights, capsys, monkeypatch, suffix,
                                                              held_by_child):
    src = photos(tmp_path / "in", 3)
    out = tmp_path / f"busy{suffix}"
    args = ["extract", str(src), str(out), *base_args(vits_weights, "--upsampler", "nearest")]
    assert run_cli(args, capsys, monkeypatch)[0] == 0
    before = read_all(out)
    writer = held_by_child(out)  # a running extraction of this store, as far as the lease tells
    for extra in ([], ["--overwrite", "--scale", "1"]):
        code, _, err = run_cli(args + extra, capsys, monkeypatch)
        line = error_line(err)
        assert code == 1 and str(out) in line and f"pid {writer.pid}" in line and "another wrc extract" in line
    records, feats = read_all(out)
    assert records == before[0] and all(np.array_equal(feats[k], before[1][k]) for k in feats)


def test_a_rerun_redoes_the_shards_whose_files_are_gone_and_info_reports_them(tmp_path, vits_weights, capsys,
                                                                               monkeypatch):
    src = photos(tmp_path / "in", 6)
    out = tmp_path / "out.zarr"
    args = ["extract", str(src), str(out), *base_args(vits_weights, "--upsampler", "nearest", "--shard-size", "2")]
    assert run_cli(args, capsys, monkeypatch)[0] == 0
    records, feats = read_all(out)
    code, info, _ = run_cli(["info", str(out), "--verify"], capsys, monkeypatch)
    assert code == 0 and "inconsistent" not in info and "every shard reads back (3 decoded)" in info
    (out / "features/c/1/0/0/0").unlink()
    (out / "status/c/2").unlink()
    code, info, _ = run_cli(["info", str(out)], capsys, monkeypatch)
    assert code == 0 and "inconsistent  shards 1, 2 missing or changed; rerun the same command" in info
    assert "6: 2 ok, 0 failed, 4 pending" in info
    code, info, _ = run_cli(["info", str(out), "--verify", "--json"], capsys, monkeypatch)
    assert code == 1 and [p["shard"] for p in json.loads(info)["verify"]] == [1, 2]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0 and "shards 1, 2 marked done but missing or changed since written; redoing them" in err
    assert "6 ok, 0 failed" in err and "already complete" not in err
    again, feats_again = read_all(out)
    assert again == records and all(np.array_equal(feats[k], feats_again[k]) for k in feats)
    assert run_cli(["info", str(out), "--verify"], capsys, monkeypatch)[0] == 0
