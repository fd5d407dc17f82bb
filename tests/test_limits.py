"""Limits the commands meet before they crash: output sizes bounded by free memory, Ctrl-C as one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from wrcli.errors import WrcError
from wrcli.models import base, create_upsampler, memory

C = 8
REGISTRY = ["wrc", "wrc-exact", "wrc-converse", "nearest", "bilinear", "bicubic", "transposed", "converse2d"]


def inputs(b=2, h=3, w=4, patch=14):
    return torch.randn(b, C, h, w), torch.randn(b, 3, h * patch, w * patch)


# ---------------------------------------------------------------------------------------------------
# item 6: an output size too large for the memory is one WrcError, at once, before any allocation
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", REGISTRY)
def test_a_huge_output_size_is_refused_up_front(name, monkeypatch):
    m = create_upsampler(name, C, 14).eval()
    feats, img = inputs()

    def no_compute(*args, **kwargs):
        raise AssertionError("computed despite the memory bound")

    monkeypatch.setattr(m, "forward", no_compute)
    monkeypatch.setattr(base, "resize", no_compute)
    start = time.perf_counter()
    with pytest.raises(WrcError) as err:
        m.upsample(feats, img, size=(10**6, 10**6))
    assert time.perf_counter() - start < 0.5
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("upsampling features (2, 8, 3, 4) to 1000000×1000000 needs a tensor of about ")
    assert "(estimate), more than the " in msg and "of memory available on cpu" in msg


class LargestTensor(TorchDispatchMode):
    """Records the bytes of the largest tensor any operation returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


@pytest.mark.parametrize("name", REGISTRY)
@pytest.mark.parametrize("target", [{"scale": 4}, {"size": (20, 30)}, {"scale": 1}])
def test_the_estimate_bounds_the_largest_tensor_actually_made(name, target):
    m = create_upsampler(name, C, 14).eval()
    feats, img = inputs(2, 3, 5)
    size = m.target_size((3, 5), target.get("scale"), target.get("size"))
    estimate = m.peak_bytes(feats, img, size)
    with torch.inference_mode(), LargestTensor() as seen:
        m.upsample(feats, img, **target)
    assert seen.largest <= estimate < 40 * max(seen.largest, feats.numel() * 4)  # over, yet of the right order


def test_the_bound_is_the_devices_free_memory(monkeypatch):
    m = create_upsampler("wrc", C, 14).eval()
    feats, img = inputs(1)
    need = m.peak_bytes(feats, img, (6, 8))
    monkeypatch.setattr(memory, "available_bytes", lambda device: need - 1)
    with pytest.raises(WrcError, match=r"more than the .* of memory available on cpu; ask for a smaller output"):
        m.upsample(feats, img, scale=2)
    monkeypatch.setattr(memory, "available_bytes", lambda device: need)
    assert m.upsample(feats, img, scale=2).shape == (1, C, 6, 8)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1)
    with pytest.raises(WrcError):
        m.upsample(feats, img, scale=2)
    monkeypatch.setattr(memory, "available_bytes", lambda device: None)  # unknown (e.g. meta): not checked
    assert m.upsample(feats, img, scale=2).shape == (1, C, 6, 8)


def test_available_bytes_and_format():
    free = memory.available_bytes(torch.device("cpu"))
    assert isinstance(free, int) and 0 < free <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert memory.available_bytes(torch.device("meta")) is None
    assert [memory.format_bytes(n) for n in (512, 1536, 3 * 2**30, 5 * 2**40)] == [
        "512 B", "1.5 KiB", "3.0 GiB", "5.0 TiB"]


def test_available_bytes_on_cuda_counts_what_the_allocator_holds_unused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (5 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 2 * 2**30)
    assert memory.available_bytes(torch.device("cuda", 0)) == 6 * 2**30


# ---------------------------------------------------------------------------------------------------
# item 10: Ctrl-C is one line on stderr and exit 130 (typer alone exits 130 silently); SIGTERM the same, 143
# ---------------------------------------------------------------------------------------------------
def _blocked_reading_stdin(pid: int) -> bool:
    """Whether the process's main thread waits in read(0, ...) (the first two fields of /proc/PID/syscall)."""
    try:
        return Path(f"/proc/{pid}/syscall").read_text().split()[:2] == ["0", "0x0"]
    except OSError:
        return False


def _signals_as_in_a_terminal() -> None:
    """In the child: SIGINT and SIGTERM at their defaults (a background or nohup run of the suite ignores SIGINT,
    and an ignored signal stays ignored across exec)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.skipif(not Path("/proc/self/syscall").exists(), reason="needs Linux /proc/PID/syscall")
@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_prints_one_line_and_exits_with_its_code(tmp_path, vits_weights, sig, code, word):
    wrc = Path(sys.executable).with_name("wrc")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [str(wrc), "extract", "-", str(tmp_path / "out.zarr"), "--backbone-weights", str(vits_weights)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            preexec_fn=_signals_as_in_a_terminal)
    try:
        deadline = time.monotonic() + 120
        while not _blocked_reading_stdin(proc.pid):  # waiting for paths on stdin: the command is running
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
            time.sleep(0.05)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code
    assert err.decode().splitlines() == [f"wrc: {word} — rerun the same command to resume"]
    assert out == b""
