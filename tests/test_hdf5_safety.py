"""HDF5 stores that are moved, copied or written on a full disk (issue 14 items 4 and 7), and ``wrc export``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.test_stores import FAILED, make_data, make_spec, shard_args, store_files, write
from wrcli.errors import WrcError
from wrcli.stores import create_store, open_store, open_writer, summary

REPO = Path(__file__).resolve().parents[1]


def test_an_index_beside_another_stores_parts_reads_nan_not_its_features(tmp_path, monkeypatch):
    ours, theirs = make_spec(), make_spec(fingerprint="fp-other")
    feats, records = make_data(ours)
    other, _ = make_data(theirs, seed=1)
    write(tmp_path / "a" / "feat.h5", ours, feats, records)
    write(tmp_path / "b" / "feat.h5", theirs, other, records)
    (tmp_path / "c").mkdir()
    copied = Path(shutil.copy(tmp_path / "a" / "feat.h5", tmp_path / "c" / "feat.h5"))
    shutil.copytree(tmp_path / "b" / "feat.h5.parts", tmp_path / "c" / "feat.h5.parts")
    with h5py.File(copied, "r") as f:  # the parts found next to it are another store's
        assert np.isnan(f["features"][:]).all()
    alone = Path(shutil.copy(copied, tmp_path / "feat.h5"))
    monkeypatch.chdir(tmp_path / "b")  # HDF5 also looks for relative sources in the working folder
    with h5py.File(alone, "r") as f:
        assert np.isnan(f["features"][:]).all()
    shutil.rmtree(tmp_path / "c" / "feat.h5.parts")
    shutil.copytree(tmp_path / "a" / "feat.h5.parts", tmp_path / "c" / "feat.h5.parts")
    with h5py.File(copied, "r") as f:  # its own parts copied with it: its own features
        np.testing.assert_array_equal(f["features"][:], feats)


def test_parts_keep_the_plain_features_name(tmp_path):
    spec = make_spec()
    feats, records = make_data(spec)
    path = tmp_path / "x.h5"
    write(path, spec, feats, records)
    with h5py.File(tmp_path / "x.h5.parts" / "shard-00000001.h5", "r") as f:
        names = [n for n in f if n.startswith("features")]
        assert len(names) == 2 and f["features"].id == f[names[1]].id  # one dataset, two names
        np.testing.assert_array_equal(f["features"][:], feats[3:6])


FULL_DISK = """
import resource, signal, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from tests.test_stores import FAILED, make_data, make_spec, shard_args
from wrcli.stores import open_writer
spec = make_spec(grid=(64, 32, 32), dtype="float32")
feats, records = make_data(spec)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
try:
    with open_writer(Path({path!r}), spec) as writer:
        writer.write_shard(*shard_args(spec, feats, records, {k}))
except OSError as exc:
    print("OSError", exc.errno)
"""


@pytest.mark.parametrize("k", [0, 2])
def test_a_write_that_fails_in_the_file_system_is_an_oserror_not_a_crash(tmp_path, k):
    spec = make_spec(grid=(64, 32, 32), dtype="float32")
    feats, records = make_data(spec)
    path = tmp_path / "out.h5"
    create_store(path, spec)
    before = store_files(path)
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(FULL_DISK.format(repo=str(REPO), path=str(path), k=k))],
                         capture_output=True, text=True, timeout=120)
    assert (run.returncode, run.stdout.split(), run.stderr) == (0, ["OSError", "27"], "")  # was a segfault, rc 139
    assert store_files(path) == before  # no part, no temporary file
    with open_writer(path, spec) as writer:  # the rerun writes it
        for j in range(spec.n_shards):
            writer.write_shard(*shard_args(spec, feats, records, j))


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_export_is_one_file_that_reads_anywhere(tmp_path, suffix, monkeypatch):
    from wrcli.stores import export_store

    spec = make_spec()
    feats, records = make_data(spec)
    path = tmp_path / "a" / f"feat{suffix}"
    write(path, spec, feats, records)
    single = export_store(path, tmp_path / "single.h5")
    (tmp_path / "elsewhere").mkdir()
    moved = Path(shutil.move(single, tmp_path / "elsewhere" / "x.h5"))
    shutil.rmtree(tmp_path / "a")  # the store and its parts are gone
    monkeypatch.chdir(tmp_path / "elsewhere")
    with h5py.File(moved, "r") as f:
        assert not f["features"].is_virtual
        np.testing.assert_array_equal(f["features"][:], feats)
        assert list(f["path"].asstr()[:]) == [r.name for r in records]
        assert [d.label for d in f["features"].dims] == ["image", "channel", "y", "x"]
    with open_store(moved) as store:
        assert store.records == records and store.spec == spec
        np.testing.assert_array_equal(store.features(3), feats[3, :, :records[3].feat_hw[0], :records[3].feat_hw[1]])
    info = summary(moved, verify=True)
    assert (info["ok"], info["complete"], info["finalized"], info["inconsistent"], info["verify"]) == (
        spec.n_images - len(FAILED), True, True, [], [])
    with pytest.raises(WrcError, match="single file made by wrc export"):
        create_store(moved, spec)


def test_export_refusals(tmp_path, monkeypatch):
    from wrcli.stores import export_store

    spec = make_spec()
    feats, records = make_data(spec)
    path = tmp_path / "feat.h5"
    write(path, spec, feats, records, shards=[0, 1], finalize=False)
    with pytest.raises(WrcError, match="not finished"):
        export_store(path, tmp_path / "x.h5")
    write(path, spec, feats, records)
    with pytest.raises(WrcError, match=r"name it \*\.h5"):
        export_store(path, tmp_path / "x.zarr")
    (tmp_path / "x.h5").write_text("keep me")
    with pytest.raises(WrcError, match="exists; use --overwrite"):
        export_store(path, tmp_path / "x.h5")
    with pytest.raises(WrcError, match="is the store itself"):
        export_store(path, path, overwrite=True)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(WrcError, match=r"needs about .* GiB and .* has 0\.00 GiB free"):
        export_store(path, tmp_path / "y.h5")
    assert (tmp_path / "x.h5").read_text() == "keep me" and not (tmp_path / "y.h5").exists()


def _file_size_limit(limit: int):
    def apply() -> None:  # in the child: writes past ``limit`` bytes fail (EFBIG) as they would on a full disk
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
def test_extract_to_hdf5_on_a_full_disk_is_one_line_and_the_rerun_finishes(tmp_path, vits_weights):
    from tests.conftest import ARCH, photos
    from tests.test_extract import assert_same_store

    src = photos(tmp_path / "in", 4)
    args = ["--backbone", ARCH, "--backbone-weights", str(vits_weights), "--size", "56", "--workers", "0",
            "--upsampler", "nearest", "--shard-size", "2"]
    out, clean = tmp_path / "full.h5", tmp_path / "clean.h5"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "wrcli", "extract", str(src), str(out), *args]
    full = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300,
                          preexec_fn=_file_size_limit(60_000))  # a part of 2 images is ~1.2 MB
    lines = full.stderr.strip().splitlines()
    assert full.returncode == 1 and lines[-1] == "wrc: error: File too large", full.stderr  # was rc 139
    assert not any(p.name.startswith(".") for p in (tmp_path / "full.h5.parts").iterdir())
    assert subprocess.run(cmd, capture_output=True, env=env, timeout=300).returncode == 0
    assert subprocess.run([*cmd[:5], str(clean), *args], capture_output=True, env=env, timeout=300).returncode == 0
    assert_same_store(out, clean)


def test_cli_export(tmp_path, capsys, monkeypatch):
    from tests.test_extract import error_line, run_cli

    spec = make_spec()
    feats, records = make_data(spec)
    write(tmp_path / "feat.h5", spec, feats, records)
    code, out, err = run_cli(["export", str(tmp_path / "feat.h5"), str(tmp_path / "one.h5")], capsys, monkeypatch)
    assert (code, out) == (0, "") and err.startswith(f"wrc: wrote {tmp_path / 'one.h5'} (")
    code, _, err = run_cli(["export", str(tmp_path / "feat.h5"), str(tmp_path / "one.h5")], capsys, monkeypatch)
    assert code == 1 and error_line(err) == f"wrc: error: {tmp_path / 'one.h5'} exists; use --overwrite to replace it, or another DEST"
    code, _, err = run_cli(["export", str(tmp_path / "nope.h5"), str(tmp_path / "two.h5")], capsys, monkeypatch)
    assert code == 1 and "does not exist" in error_line(err)
    assert run_cli(["export", str(tmp_path / "feat.h5")], capsys, monkeypatch)[0] == 2
