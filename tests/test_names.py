"""File names that are not UTF-8 (issue 14 item 5): recorded as escaped text, mapped back to their bytes, never abort."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from PIL import Image

from wrcli import cli
from wrcli.data import ImageDataset, ImageError, ResizePolicy, discover, name_bytes, name_text, printable
from wrcli.data import images as images_mod
from wrcli.errors import WrcError
from wrcli.stores import open_store

from .test_extract import base_args, run_cli

CAFE = b"caf\xe9.jpg"  # Latin-1 'é': not UTF-8, so Python gives 'caf\udce9.jpg'
BROKEN = b"bad\xff name.jpg"  # not an image either: fails at decode


@pytest.mark.parametrize("raw, text", [
    (b"plain.jpg", "plain.jpg"),
    ("日本 語/ç.png".encode(), "日本 語/ç.png"),
    (CAFE, "caf\\xe9.jpg"),
    (b"a\\b.jpg", "a\\\\b.jpg"),
    (b"a\\xe9.jpg", "a\\\\xe9.jpg"),  # a literal backslash-x is not mistaken for an escaped byte
    (b"\\\xff\\x41\x80", "\\\\\\xff\\\\x41\\x80"),
])
def test_name_text_is_utf8_and_name_bytes_inverts_it(raw, text):
    name = os.fsdecode(raw)
    assert name_text(name) == text
    text.encode("utf-8")  # valid text: zarr, HDF5 and JSON accept it
    assert name_bytes(text) == raw


def test_name_text_is_injective_over_random_bytes():
    rng = np.random.default_rng(0)
    alphabet = np.frombuffer(b"\\x9aeAf\xe9\xff\x80\xc3\xa9/", dtype=np.uint8)
    raws = {bytes(rng.choice(alphabet, rng.integers(1, 8))) for _ in range(3000)}
    texts = {name_text(os.fsdecode(raw)) for raw in raws}
    assert len(texts) == len(raws)
    assert all(name_bytes(name_text(os.fsdecode(raw))) == raw for raw in raws)


def test_printable_writes_undecodable_bytes_as_hex():
    assert printable("caf\udce9 a\\b") == "caf\\xe9 a\\b"


def names_folder(folder: Path) -> Path:
    """A folder with a non-UTF-8 image name, a non-UTF-8 broken file and a plain image."""
    folder.mkdir(parents=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    for raw in (CAFE, b"plain.jpg"):
        image.save(os.fsdecode(os.fsencode(folder) + b"/" + raw))
    Path(os.fsdecode(os.fsencode(folder) + b"/" + BROKEN)).write_bytes(b"not an image")
    return folder


def test_discover_records_text_names_that_map_back_to_the_files(tmp_path):
    folder = names_folder(tmp_path / "in")
    source = discover(str(folder))
    names = [name for name, _ in source.items]
    assert names == ["bad\\xff name.jpg", "caf\\xe9.jpg", "plain.jpg"]
    for name, fs_path in source.items:
        assert os.fsencode(fs_path) == os.fsencode(folder) + b"/" + name_bytes(name)
    # the same hash as the raw names had, so a store begun before names were escaped still resumes
    old = hashlib.sha256(b"".join(raw + b"\0" for raw in (BROKEN, CAFE, b"plain.jpg"))).hexdigest()
    assert source.sha256() == old
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"in/" + CAFE + b"\n")
    [(name, fs_path)] = discover(str(listing)).items
    assert name == "in/caf\\xe9.jpg" and Path(fs_path).is_file()


def test_messages_and_reasons_are_valid_text(tmp_path, monkeypatch):
    missing = os.fsdecode(os.fsencode(tmp_path) + b"/gone\xff")
    with pytest.raises(WrcError) as exc:
        discover(missing)
    assert "gone\\xff' does not exist" in str(exc.value)

    def fail(fs_path, policy):
        raise ImageError(f"corrupt JPEG data (cannot read {fs_path})")

    monkeypatch.setattr(images_mod, "load_image", fail)
    item = ImageDataset([(0, "caf\udce9.jpg")], ResizePolicy())[0]
    assert item["error"] == "corrupt JPEG data (cannot read caf\\xe9.jpg)"


def raw_paths(out: Path) -> list[str]:
    """The stored ``path`` column, read with plain zarr / h5py."""
    if out.suffix == ".zarr":
        return [str(p) for p in zarr.open_group(str(out), mode="r")["path"][:]]
    with h5py.File(out, "r") as f:
        return [p.decode() if isinstance(p, bytes) else str(p) for p in f["path"][:]]


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_extract_stores_non_utf8_names_and_a_rerun_resumes(tmp_path, vits_weights, capsys, monkeypatch, suffix):
    folder = names_folder(tmp_path / "in")
    out = tmp_path / f"out{suffix}"
    args = ["extract", str(folder), str(out), *base_args(vits_weights, "--upsampler", "bilinear")]
    code, stdout, stderr = run_cli([*args, "--jsonl"], capsys, monkeypatch)
    assert code == cli.EXIT_PARTIAL, stderr  # the broken file fails, the run goes on
    records = {r["path"]: r for r in map(json.loads, stdout.splitlines())}
    assert records["caf\\xe9.jpg"]["status"] == "ok" and records["plain.jpg"]["status"] == "ok"
    assert records["bad\\xff name.jpg"]["status"] == "failed"
    expected = ["bad\\xff name.jpg", "caf\\xe9.jpg", "plain.jpg"]
    assert raw_paths(out) == expected
    with open_store(out) as store:
        assert [r.name for r in store.records] == expected
        features = dict(store)
        for name in features:
            assert (os.fsencode(folder) + b"/" + name_bytes(name)) in {
                os.fsencode(folder) + b"/" + raw for raw in (CAFE, b"plain.jpg")}
    assert features["caf\\xe9.jpg"].shape == features["plain.jpg"].shape
    np.testing.assert_array_equal(features["caf\\xe9.jpg"], features["plain.jpg"])  # the same pixels
    code, info, _ = run_cli(["info", str(out)], capsys, monkeypatch)
    assert code == 0 and "bad\\xff name.jpg:" in info
    code, stdout, stderr = run_cli([*args, "--json"], capsys, monkeypatch)
    assert code == cli.EXIT_PARTIAL, stderr
    summary = json.loads(stdout)
    assert summary["processed"] == 0 and summary["ok"] == 2 and summary["failed"] == 1
