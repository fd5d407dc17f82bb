"""glibc's heap settings: freed blocks are kept for reuse (no page faults on the next allocation of the same
size), the user's own glibc settings win, and wrc commands but extract set them before their options are checked."""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from wrcli import allocator, cli

GLIBC = sys.platform == "linux" and "libc.so.6" in (ctypes.util.find_library("c") or "")

# Allocates (glibc malloc), touches and frees a 64 MiB block 8 times; prints the minor page faults of the last 7.
FAULTS = """
import ctypes, json, resource, sys
from wrcli.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
def touch():
    block = libc.malloc(64 << 20)
    ctypes.memset(block, 1, 64 << 20)
    libc.free(block)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(7):
    touch()
print(json.dumps({"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def faults(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in allocator._MALLOC_ENV}
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], env={**clean, **env}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_freed_blocks_are_reused_without_page_faults():
    default, kept = faults("default"), faults("keep")
    assert kept["kept"] is True
    pages = 7 * (64 << 20) // 4096  # what glibc's default (a fresh mapping per block) faults in, at 4 KiB pages
    assert default["faults"] > pages // 2  # glibc maps a block this large freshly and unmaps it when freed
    assert kept["faults"] < pages // 20


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_the_users_own_glibc_settings_win():
    assert faults("keep", MALLOC_TRIM_THRESHOLD_="131072")["kept"] is False
    assert faults("keep", GLIBC_TUNABLES="glibc.malloc.mmap_threshold=131072")["kept"] is False


def test_commands_but_extract_set_the_heap_up(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1) or True)
    assert CliRunner().invoke(cli.app, ["info", str(tmp_path / "missing.zarr")]).exit_code != 0
    assert calls == [1]
    assert CliRunner().invoke(cli.app, ["extract", str(tmp_path / "missing"), str(tmp_path / "out.zarr")]).exit_code != 0
    assert calls == [1]  # extract trims after every batch instead


def test_trim_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(allocator, "_libc_function", lambda name: None)
    allocator.trim_memory()
    assert allocator.keep_freed_memory() is False
