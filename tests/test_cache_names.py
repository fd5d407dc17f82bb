"""Feature-cache entries with different crop-set counts live side by side, and a train entry written under the
older name (without the count) is adopted when its key matches (wrcli.training.cache)."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from wrcli.training import cache

IDENTITY = {"name": "vit", "weights_sha256": "abc"}
SHA = "ab" + "0" * 62


def entry(root, variants: int, role: str = "train") -> cache.Entry:
    return cache.entry(root, "photo.jpg", SHA, role, identity=IDENTITY, size=448, crops=4, variants=variants)


def write(path, key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"lr": torch.zeros(1, dtype=torch.uint8)}, str(path), metadata={cache.KEY: key})


def test_counts_have_their_own_files(tmp_path):
    four, eight, val = entry(tmp_path, 4), entry(tmp_path, 8), entry(tmp_path, 0, "val")
    assert len({four.path, eight.path, val.path}) == 3
    write(four.path, four.key)
    write(eight.path, eight.key)
    assert cache.is_valid(four) and cache.is_valid(eight)  # building one count no longer overwrites the other


def test_an_entry_under_the_older_name_is_adopted_only_when_its_key_matches(tmp_path):
    four, eight = entry(tmp_path, 4), entry(tmp_path, 8)
    legacy = four.path.with_name(f"{SHA}.train.safetensors")
    write(legacy, four.key)
    assert not cache.adopt_legacy(eight)  # another crop-set count: left where it is
    assert legacy.exists() and not eight.path.exists()
    assert cache.adopt_legacy(four) and cache.is_valid(four) and not legacy.exists()
    write(legacy, four.key)
    assert not cache.adopt_legacy(four)  # the new name exists already: nothing is replaced
    assert not cache.adopt_legacy(entry(tmp_path, 0, "val"))
    legacy.unlink()
    write(legacy, eight.key)
    assert cache.ready(eight) and not legacy.exists()  # what training and the benchmarks check
