"""Tables as SRC: parquet, CSV and TSV lists of paths (relative to the table), a parquet bytes column, kept columns
in both store formats, usage errors before anything loads, and resume against a changed table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wrcli import cli
from wrcli.data import discover
from wrcli.errors import WrcError
from wrcli.stores import open_store

from .test_extract import base_args, error_line, run_cli
from .test_tars import assert_same_features, images


def layout(tmp_path: Path, n: int = 4) -> tuple[Path, list[str]]:
    """``n`` photos under ``data/img/`` and, for the folder store to compare with, the same under ``folder/``;
    returns the table folder and the relative paths a table lists."""
    data, folder = tmp_path / "data", tmp_path / "folder"
    (data / "img").mkdir(parents=True)
    folder.mkdir()
    rel = []
    for i, f in enumerate(images(tmp_path, n)):
        shutil.copyfile(f, data / "img" / f"{i:03d}.jpg")
        shutil.copyfile(f, folder / f"{i:03d}.jpg")
        rel.append(f"img/{i:03d}.jpg")
    return data, rel


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_parquet_paths_and_kept_columns(tmp_path, vits_weights, capsys, monkeypatch, suffix):
    data, rel = layout(tmp_path)
    table = pa.table({"file": rel, "id": [10, 11, 12, 13], "caption": ["a cat", None, "ünïcode", "d"],
                      "score": [0.5, None, 1.5, 2.0], "label": [True, False, True, True],
                      "when": pa.array([1, 2, 3, 4], pa.timestamp("s"))})
    pq.write_table(table, data / "images.parquet", row_group_size=2)
    out = tmp_path / f"t{suffix}"
    args = base_args(vits_weights, "--upsampler", "bilinear")
    code, stdout, _ = run_cli(["extract", str(data / "images.parquet"), str(out), *args, "--path-column", "file",
                               "--keep-columns", "id,caption,score,label,when", "--json"], capsys, monkeypatch)
    assert code == 0 and json.loads(stdout)["ok"] == 4
    assert run_cli(["extract", str(tmp_path / "folder"), str(tmp_path / f"f{suffix}"), *args], capsys, monkeypatch)[0] == 0
    assert_same_features(out, tmp_path / f"f{suffix}")
    with open_store(out) as store:
        assert [r.name for r in store.records] == rel  # as written in the table
        kept = store.columns
        assert store.metadata["columns"]["names"] == ["id", "caption", "score", "label", "when"]
        assert store.metadata["source"] == {"kind": "table", "root": str(data / "images.parquet")}
    assert kept["id"].dtype == np.int64 and kept["id"].tolist() == [10, 11, 12, 13]
    assert kept["caption"].tolist() == ["a cat", "", "ünïcode", "d"]
    assert kept["score"].dtype == np.float64 and np.isnan(kept["score"][1]) and kept["score"][2] == 1.5
    assert kept["label"].dtype == bool and kept["label"].tolist() == [True, False, True, True]
    assert kept["when"].tolist()[0].startswith("1970-01-01 00:00:01")
    code, info, _ = run_cli(["info", str(out), "--json"], capsys, monkeypatch)
    assert json.loads(info)["columns"] == ["id", "caption", "score", "label", "when"]
    single = tmp_path / "single.h5"
    assert run_cli(["export", str(out), str(single)], capsys, monkeypatch)[0] == 0
    with open_store(single) as store:
        assert store.columns["caption"].tolist() == kept["caption"].tolist()


def test_zarr_kept_columns_read_with_xarray(tmp_path, vits_weights, capsys, monkeypatch):
    import xarray as xr

    data, rel = layout(tmp_path, 2)
    pq.write_table(pa.table({"path": rel, "key": ["000000001", "000000002"]}), data / "t.parquet")
    out = tmp_path / "o.zarr"
    args = ["extract", str(data / "t.parquet"), str(out), *base_args(vits_weights, "--upsampler", "nearest"),
            "--keep-columns", "key"]  # the path column is found by its name
    assert run_cli(args, capsys, monkeypatch)[0] == 0
    columns = xr.open_zarr(out, group="columns")
    assert columns["key"].values.tolist() == ["000000001", "000000002"] and columns["key"].dims == ("image",)
    assert xr.open_zarr(out)["features"].shape[0] == 2


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_csv_and_tsv_keep_text_as_written_and_record_bad_rows(tmp_path, vits_weights, capsys, monkeypatch, suffix):
    data, rel = layout(tmp_path, 2)
    sep = "\t" if suffix == ".tsv" else ","
    lines = [sep.join(["image", "id", "caption"]), sep.join([rel[0], "007", "first"]),
             sep.join(["img/missing.jpg", "008", "gone"]), sep.join(["", "009", "no path"]),
             sep.join([str(data / rel[1]), "010", "absolute"])]
    (data / f"list{suffix}").write_text("\n".join(lines) + "\n")
    out = tmp_path / "o.zarr"
    code, stdout, _ = run_cli(["extract", str(data / f"list{suffix}"), str(out),
                               *base_args(vits_weights, "--upsampler", "nearest"), "--path-column", "image",
                               "--keep-columns", "id,caption", "--jsonl"], capsys, monkeypatch)
    records = [json.loads(line) for line in stdout.splitlines()]
    assert code == cli.EXIT_PARTIAL
    assert [(r["path"], r["status"], r["error"]) for r in records] == [
        (rel[0], "ok", None), ("img/missing.jpg", "failed", "file not found"),
        (f"{data / f'list{suffix}'}#2", "failed", "no path given"), (str(data / rel[1]), "ok", None)]
    with open_store(out) as store:
        assert store.columns["id"].tolist() == ["007", "008", "009", "010"]  # leading zeros kept
        assert store.columns["caption"].tolist() == ["first", "gone", "no path", "absolute"]


def test_parquet_bytes_columns(tmp_path, vits_weights, capsys, monkeypatch):
    data, rel = layout(tmp_path, 3)
    blobs = [(data / r).read_bytes() for r in rel]
    hf = pa.StructArray.from_arrays([pa.array(blobs + [None], pa.binary()), pa.array(rel + [None])], ["bytes", "path"])
    pq.write_table(pa.table({"image": hf, "raw": pa.array(blobs + [b""], pa.binary()), "id": [1, 2, 3, 4]}),
                   data / "hf.parquet", row_group_size=3)
    args = base_args(vits_weights, "--upsampler", "bilinear")
    out = tmp_path / "hf.zarr"
    code, stdout, _ = run_cli(["extract", str(data / "hf.parquet"), str(out), *args, "--jsonl"], capsys, monkeypatch)
    records = [json.loads(line) for line in stdout.splitlines()]  # the struct column "image" is found by its name
    assert code == cli.EXIT_PARTIAL and [r["status"] for r in records] == ["ok", "ok", "ok", "failed"]
    assert records[3]["error"] == "no image bytes in this row of the table"
    assert [r["path"] for r in records] == [f"{data / 'hf.parquet'}#{i}" for i in range(4)]
    folder = tmp_path / "three"
    folder.mkdir()
    for r in rel:
        shutil.copyfile(data / r, folder / Path(r).name)
    assert run_cli(["extract", str(folder), str(tmp_path / "f.zarr"), *args], capsys, monkeypatch)[0] == 0
    with open_store(out) as a, open_store(tmp_path / "f.zarr") as b:
        for i in range(3):
            np.testing.assert_array_equal(a.features(i), b.features(i))
        table_stat = (data / "hf.parquet").stat()
        assert a.records[0].file_stat == (table_stat.st_size, table_stat.st_mtime_ns)
    named = tmp_path / "named.h5"
    code, stdout, _ = run_cli(["extract", str(data / "hf.parquet"), str(named), *args, "--bytes-column", "raw",
                               "--path-column", "id", "--keep-columns", "id"], capsys, monkeypatch)
    assert code == cli.EXIT_USAGE  # --path-column must hold text
    pq.write_table(pa.table({"raw": pa.array(blobs, pa.binary()), "name": ["a", "b", "c"]}), data / "raw.parquet")
    code, _, _ = run_cli(["extract", str(data / "raw.parquet"), str(named), *args, "--bytes-column", "raw",
                          "--path-column", "name", "--limit", "2"], capsys, monkeypatch)
    with open_store(named) as store:
        assert code == 0 and [r.name for r in store.records] == ["a", "b"] and store.columns == {}


def test_table_usage_errors_exit_2_before_anything_loads(tmp_path, capsys, monkeypatch):
    data, rel = layout(tmp_path, 1)
    pq.write_table(pa.table({"file": rel, "blob": pa.array([b"x"], pa.binary()), "n": [1]}), data / "t.parquet")
    (data / "t.csv").write_text("file,n\nimg/000.jpg,1\n")
    (data / "t.tsv").write_text("name\tn\nimg/000.jpg\t1\n")
    out = str(tmp_path / "o.zarr")
    weights = ["--backbone-weights", str(tmp_path / "never-loaded.safetensors")]
    cases = [
        ([str(tmp_path / "folder"), out, "--path-column", "file"], "apply to a table SRC"),
        ([str(data / "t.parquet"), out, "--path-column", "nope"], "--path-column 'nope' is not a column of"),
        ([str(data / "t.parquet"), out, "--keep-columns", "n,blob"], "--keep-columns 'blob' holds bytes"),
        ([str(data / "t.parquet"), out, "--bytes-column", "n"], "not image bytes"),
        ([str(data / "t.csv"), out, "--bytes-column", "file"], "needs a parquet table"),
        ([str(data / "t.tsv"), out, "--keep-columns", "n"], "no image column in"),
    ]
    for args, message in cases:
        code, _, err = run_cli(["extract", *args, *weights], capsys, monkeypatch)
        assert code == cli.EXIT_USAGE and message in " ".join(err.split()), (args, err)
    with pytest.raises(WrcError, match="no image column"):
        discover(str(data / "t.tsv"))


def test_a_resumed_store_refuses_other_kept_columns_or_values(tmp_path, vits_weights, capsys, monkeypatch):
    data, rel = layout(tmp_path, 2)
    table = data / "t.parquet"
    pq.write_table(pa.table({"file": rel, "id": [1, 2], "caption": ["a", "b"]}), table)
    out = tmp_path / "o.zarr"
    args = ["extract", str(table), str(out), *base_args(vits_weights, "--upsampler", "nearest")]
    assert run_cli([*args, "--keep-columns", "id"], capsys, monkeypatch)[0] == 0
    code, _, err = run_cli([*args, "--keep-columns", "id,caption"], capsys, monkeypatch)
    assert code == 1 and "holds other per-image columns (--keep-columns id ≠ id,caption)" in error_line(err)
    pq.write_table(pa.table({"file": rel, "id": [1, 3], "caption": ["a", "b"]}), table)
    code, _, err = run_cli([*args, "--keep-columns", "id"], capsys, monkeypatch)
    assert code == 1 and "the same columns with other values or types" in error_line(err)
    assert run_cli([*args, "--keep-columns", "id", "--overwrite"], capsys, monkeypatch)[0] == 0
    with open_store(out) as store:
        assert store.columns["id"].tolist() == [1, 3]

