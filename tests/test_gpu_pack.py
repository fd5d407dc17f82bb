"""benchmarks/gpu_pack.py: what travels to a lent GPU for gpu_train.sh comes back bit for bit (the bf16 weights), holds
exactly the training split as wrc train decodes it, and fits the budget or is refused."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from wrcli.training.data import ImageRef, decode, held_out

from .conftest import REPO, photos

spec = importlib.util.spec_from_file_location("gpu_pack", REPO / "benchmarks" / "gpu_pack.py")
gpu_pack = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_pack)


def weights(path: Path) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tensors = {"blocks.0.attn.qkv.weight": torch.randn(24, 8, generator=g), "cls_token": torch.randn(1, 1, 8, generator=g),
               "norm.bias": torch.randn(8, generator=g) * 1e-3, "pos_embed": torch.randn(1, 5, 8, generator=g)}
    save_file(tensors, path)
    return tensors


def test_shuffling_the_bytes_is_undone_exactly(tmp_path):
    weights(tmp_path / "w.safetensors")
    blob = gpu_pack.bf16_file(tmp_path / "w.safetensors")
    mixed = gpu_pack.shuffled(blob)
    assert len(mixed) == len(blob) and mixed != blob and gpu_pack.unshuffled(mixed) == blob


def pack_args(tmp_path: Path, folder: Path, **changes) -> argparse.Namespace:
    repo = tmp_path / "repo"
    if not repo.exists():  # a checkout with one tracked file of 1 KiB
        repo.mkdir()
        (repo / "tracked.bin").write_bytes(bytes(1024))
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        subprocess.run(["git", "-C", str(repo), "add", "tracked.bin"], check=True)
    base = dict(weights=str(tmp_path / "w.safetensors"), photos=str(folder), val=0.25, size=56, patch=14,
                quality=[95, 60], out=str(tmp_path / "pack"), repo=str(repo), budget=1, margin=0)
    return argparse.Namespace(**{**base, **changes})


def test_pack_then_unpack(tmp_path):
    tensors = weights(tmp_path / "w.safetensors")
    folder = photos(tmp_path / "photos", 8)
    (folder / "notes.txt").write_text("not an image")
    manifest = gpu_pack.pack(pack_args(tmp_path, folder))
    out = tmp_path / "pack"
    train = [p for p in sorted(folder.glob("*.jpg")) if not held_out(p.name, 0.25)]
    assert 0 < len(train) < 8  # some photos are held out, and they do not travel
    assert sorted(p.name for p in (out / "photos").iterdir()) == [p.name for p in train]
    assert manifest["photos"]["count"] == len(train) and manifest["photos"]["quality"] == 95
    for p in train:  # each is the decoded training image, re-encoded: same size, close pixels
        packed = np.asarray(Image.open(out / "photos" / p.name).convert("RGB")).astype(float)
        original = decode(ImageRef(p.name, str(p)), 56, 14).permute(1, 2, 0).numpy()
        assert packed.shape == original.shape == (56, 56, 3) and np.abs(packed - original).mean() < 3
    gpu_pack.unpack(argparse.Namespace(pack=str(out), weights=str(tmp_path / "back.safetensors")))
    back = load_file(tmp_path / "back.safetensors")
    assert back.keys() == tensors.keys()
    assert all(back[k].dtype == torch.bfloat16 and torch.equal(back[k], v.to(torch.bfloat16)) for k, v in tensors.items())
    record = json.loads((out / "manifest.json").read_text())  # what unpack checks against, and where each photo came from
    assert record["weights"]["bf16_sha256"] == hashlib.sha256((tmp_path / "back.safetensors").read_bytes()).hexdigest()
    assert {n: (f["from"], f["sha256"]) for n, f in record["photos"]["files"].items()} == {
        p.name: (p.name, hashlib.sha256((out / "photos" / p.name).read_bytes()).hexdigest()) for p in train}


def test_a_pack_that_cannot_fit_is_refused(tmp_path):
    weights(tmp_path / "w.safetensors")
    folder = photos(tmp_path / "photos", 8)
    with pytest.raises(SystemExit, match=r"the photos do not fit in .* MiB at any of qualities \[95, 60\]"):
        gpu_pack.pack(pack_args(tmp_path, folder, margin=1))  # a 1 MiB budget, all of it kept free
    assert not (tmp_path / "pack").exists()  # nothing written
    (tmp_path / "pack").mkdir()
    (tmp_path / "pack" / "earlier.txt").write_text("")
    with pytest.raises(SystemExit, match="is not empty"):  # and never over an earlier pack
        gpu_pack.pack(pack_args(tmp_path, folder))


def test_unpack_refuses_weights_that_do_not_match_the_manifest(tmp_path):
    weights(tmp_path / "w.safetensors")
    gpu_pack.pack(pack_args(tmp_path, photos(tmp_path / "photos", 4)))
    manifest = tmp_path / "pack" / "manifest.json"
    record = json.loads(manifest.read_text())
    record["weights"]["bf16_sha256"] = "0" * 64
    manifest.write_text(json.dumps(record))
    with pytest.raises(SystemExit, match="do not match the manifest"):
        gpu_pack.unpack(argparse.Namespace(pack=str(tmp_path / "pack"), weights=str(tmp_path / "back.safetensors")))
    assert not (tmp_path / "back.safetensors").exists()
