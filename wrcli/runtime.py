"""Process-level context: which rank this is (torchrun or SLURM), which device to use, waiting on others."""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch

from wrcli.allocator import trim_memory
from wrcli.errors import WrcError


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_rank() -> Rank:
    """Rank and world size from torchrun (RANK/WORLD_SIZE/LOCAL_RANK) or SLURM (SLURM_PROCID/SLURM_NTASKS)."""
    env = os.environ
    if "WORLD_SIZE" in env:
        return Rank(int(env.get("RANK", 0)), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if "SLURM_NTASKS" in env and "SLURM_PROCID" in env:
        return Rank(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return Rank()


def resolve_device(spec: str, rank: Rank) -> torch.device:
    """``auto`` → this rank's CUDA device when there is one, else CPU; ``cuda`` picks the local rank's GPU."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise WrcError(f"--device {spec}: no CUDA device is available here; use --device cpu")
        if spec == "cuda":
            return torch.device("cuda", rank.local_rank % torch.cuda.device_count())
    try:
        return torch.device(spec)
    except RuntimeError as exc:
        raise WrcError(f"--device {spec!r} is not a device (use auto, cpu, cuda or cuda:N)") from exc


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str, poll: float = 0.5) -> None:
    """Poll ``condition`` until it holds; WrcError after ``timeout`` seconds.

    Ranks coordinate only through the store they share (it exists; all shards are done), so the same
    code runs under torchrun, under SLURM's srun, and by hand, with no rendezvous.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise WrcError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def run_when_idle(tid: int = 0) -> None:
    """Give thread ``tid`` (0: the calling one) Linux's SCHED_IDLE policy: it then runs only on CPU time
    that normal threads leave. On a CPU run of `wrc extract`, decoding and writing must not preempt one of
    torch's intra-op threads: the others would spin at the next barrier until it runs again (with 2 cores,
    that made extract's compute ~8 % slower than the same compute alone). Without privileges the policy
    cannot be undone, so this is for threads that end with the work, and for zarr's I/O threads, which then
    keep it for the life of the process. A no-op where unsupported or refused."""
    policy = getattr(os, "SCHED_IDLE", None)
    if policy is not None:
        with contextlib.suppress(OSError):
            os.sched_setscheduler(tid, policy, os.sched_param(0))


def page_align_large_tensors() -> None:
    """Have torch allocate CPU tensors of 2 MiB and more page-aligned, on transparent huge pages where the
    kernel allows (torch's ``THP_MEM_ALLOC_ENABLE``; a no-op once this process has allocated a CPU tensor).

    At torch's default 64-byte alignment, ``posix_memalign`` leaves a free chunk of ~128 bytes beside each
    large block; glibc's per-thread cache never merges such chunks with their neighbours and hands them to
    small long-lived objects, so the freed activations of differently sized batches stop coalescing and the
    heap grows with the number of batches (after 150 images at 224: 1.3 GB, page-aligned 0.6 GB). Page
    alignment leaves ~4 KiB chunks, too big for that cache, which merge again; huge pages cut page faults.
    """
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


@contextmanager
def lean_forks() -> Iterator[None]:
    """Fork worker processes (DataLoader workers) inside this block to have them share only live memory.

    A forked worker keeps every page of this process it inherited that this process later rewrites or frees,
    so the memory of the tree grows with the run: freed heap pages are returned before the fork, and the
    objects alive at the fork are kept out of the garbage collector, whose full passes write to all of them.
    """
    trim_memory()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
