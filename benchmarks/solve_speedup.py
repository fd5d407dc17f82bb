"""The solves of this checkout against those of an older one, in one process, interleaved, on CPU.

    git worktree add /tmp/baseline <commit>
    python benchmarks/solve_speedup.py --baseline /tmp/baseline/wrcli/ops --threads 1 2

The baseline's ``wrcli/ops`` is imported as a separate package (it only uses relative imports). Inputs are
what the WRC layer gives its solve for DINOv2 ViT-S/14 at 448 (32×32 tokens padded to 36×36, ×2 → 72×72, 208
channels); each solve and one rfft2 + irfft2 pair on x0 are timed in rounds that alternate the two versions,
and the medians are printed with the ratios. ``--backend compiled`` runs both versions' solves through their
``compiled`` path (``WRC_BACKEND``), compiled in the warm-up call.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from wrcli.allocator import keep_freed_memory
from wrcli.ops.backend import ENV, use_backend

SOLVES = ("official", "exact", "converse")


def load_package(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path / "__init__.py", submodule_search_locations=[str(path)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def inputs(batch: int, channels: int, grid: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(batch, channels, grid + 4, grid + 4, generator=g)
    x0 = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=True)
    return {
        "y": y, "x0": x0, "w_low": torch.log1p(torch.randn(y.shape, generator=g).square()),
        "w_high": torch.log1p(torch.randn(x0.shape, generator=g).square()),
        "kernel": torch.softmax(torch.randn(channels, 4, generator=g), -1).view(channels, 2, 2),
        "lam": F.softplus(torch.zeros(channels)) + 1e-5,
    }


def args_for(solve: str, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    names = ("y", "x0", "kernel", "lam") if solve == "converse" else ("y", "x0", "w_low", "w_high", "kernel", "lam")
    return {n: t[n] for n in names}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, required=True, help="the older checkout's wrcli/ops folder")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--channels", type=int, default=208)
    ap.add_argument("--grid", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--allocator", choices=("keep", "default"), default="keep",
                    help="keep: glibc keeps freed memory for reuse, as the wrc command sets it; default: glibc's own")
    ap.add_argument("--backend", choices=("torch", "compiled"), default="torch",
                    help="the solve path of both versions (compiled: torch.compile, compiled in the warm-up call)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.allocator == "keep" and not keep_freed_memory():
        raise SystemExit("could not set glibc's allocator (not glibc, or MALLOC_*/GLIBC_TUNABLES set)")
    from wrcli import ops as current

    os.environ[ENV] = a.backend  # the baseline package reads its own copy of the backend switch from here
    versions = {"baseline": load_package(a.baseline.resolve(), "baseline_ops"), "current": current}
    rows = []
    with torch.inference_mode(), use_backend(a.backend):
        for threads in a.threads:
            torch.set_num_threads(threads)
            for batch in a.batch:
                t = inputs(batch, a.channels, a.grid)
                calls = {"fft": {v: (lambda: torch.fft.irfft2(torch.fft.rfft2(t["x0"]), s=t["x0"].shape[-2:])) for v in versions}}
                for solve in SOLVES:
                    calls[solve] = {v: (lambda fn=getattr(m, solve), kw=args_for(solve, t): fn(**kw, scale=2)) for v, m in versions.items()}
                times: dict[tuple[str, str], list[float]] = {}
                for fn in (f for per in calls.values() for f in per.values()):
                    fn()  # warm-up
                for _ in range(a.rounds):
                    for name, per in calls.items():
                        for version, fn in per.items():
                            start = time.perf_counter()
                            fn()
                            times.setdefault((name, version), []).append((time.perf_counter() - start) * 1e3)
                med = {k: statistics.median(v) for k, v in times.items()}
                for solve in SOLVES:
                    row = {"threads": threads, "batch": batch, "solve": solve, "fft_ms": med["fft", "current"],
                           "baseline_ms": med[solve, "baseline"], "current_ms": med[solve, "current"]}
                    row["speedup"] = row["baseline_ms"] / row["current_ms"]
                    row["current_over_fft"] = row["current_ms"] / row["fft_ms"]
                    row["baseline_over_fft"] = row["baseline_ms"] / row["fft_ms"]
                    rows.append(row)
                    print(f"threads {threads} batch {batch} {solve:9s} baseline {row['baseline_ms']:8.2f} ms  current "
                          f"{row['current_ms']:8.2f} ms  ×{row['speedup']:.2f}   fft pair {row['fft_ms']:.2f} ms → "
                          f"{row['baseline_over_fft']:.2f}× / {row['current_over_fft']:.2f}× the pair", flush=True)
    if a.json:
        a.json.write_text(json.dumps({"channels": a.channels, "grid": a.grid, "rounds": a.rounds, "backend": a.backend,
                                      "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
