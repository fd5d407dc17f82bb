"""Where a CUDA GPU spends the time of the backbone, the WRC upsampler and the three solves.

Cases: DINOv2 ViT-S/14 at 448, ×2, batch 1 and 8: the backbone and the WRC upsampler (shipped checkpoint) in
fp32 and under bf16 autocast, and each solve on the torch and cupy backends (fp32). For each it reports:

- ``eager``: median wall-clock ms of a call, the device synchronised around it (what ``wrc bench`` times);
- ``graph``: median ms of replaying the same call captured once in a CUDA graph (no Python, no launch gaps:
  the GPU's own time), or why capture failed;
- ``gpu``: the device operations' summed time per call from the profiler, and ``kernels``: their number per
  call (kernel launches and copies);
- the profiler's top kernels by self device time (in the log file).

eager ≫ graph ≈ gpu means the call is bound by the host's launches, not by the GPU.

    python benchmarks/gpu_profile.py --weights vits14.safetensors --log profile.txt
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from typing import Callable

import torch
from torch.autograd import DeviceType

from wrcli import ops
from wrcli.backbones import load_backbone
from wrcli.bench import SOLVES, pixels, solve_args, solve_inputs
from wrcli.models import load_upsampler
from wrcli.models.wrc import WRCUpsampler
from wrcli.ops.backend import use_backend

PROFILED_CALLS = 5


def event_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median ms of ``repeats`` calls, each timed by CUDA events with the device idle before it."""
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def wall_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall-clock ms of ``repeats`` calls (the CPU check of this script)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def graph_ms(fn: Callable[[], object], repeats: int) -> float | str:
    """Median ms of replaying ``fn`` captured in a CUDA graph, or the capture's error."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
    except Exception as error:  # report any capture failure and go on with the next case
        torch.cuda.synchronize()
        return f"capture failed: {type(error).__name__}: {str(error).splitlines()[0][:160]}"
    return event_ms(graph.replay, repeats)


def profile(fn: Callable[[], object], cuda: bool) -> tuple[float, float, str]:
    """Device ms per call, device operations (kernels, copies) per call, and the top-operation table."""
    activities = [torch.profiler.ProfilerActivity.CPU] + [torch.profiler.ProfilerActivity.CUDA] * cuda
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(PROFILED_CALLS):
            fn()
        if cuda:
            torch.cuda.synchronize()
    on_device = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    device_us = sum(e.time_range.elapsed_us() for e in on_device)
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=18, max_name_column_width=70)
    return device_us / 1e3 / PROFILED_CALLS, len(on_device) / PROFILED_CALLS, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="backbone weights (.safetensors)")
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--log", default="profile.txt", help="where the profiler tables go")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu to check this script (no events, no graphs)")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    bb = load_backbone("vit_small_patch14_dinov2.lvd142m", args.weights, device=device)
    wrc = load_upsampler(backbone=bb).to(device).fold_batchnorm()
    grid = (args.size // bb.patch_size,) * 2
    rows = []
    with open(args.log, "w") as log:
        for batch in (int(b) for b in args.batch.split(",")):
            x = pixels(batch, args.size, device)
            inputs = solve_inputs(batch, WRCUpsampler.layer_channels(bb.embed_dim), grid, 2, torch.float32, device)
            for precision in ("fp32", "bf16"):
                bf16 = precision == "bf16"
                with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16, cache_enabled=False):
                    images = bb.normalize(x)
                    feats = bb(images)
                    cases: dict[str, Callable[[], object]] = {
                        "backbone": lambda: bb(bb.normalize(x)),
                        "upsampler wrc": lambda: wrc.upsample(feats, images, scale=2),
                    }
                    if not bf16:
                        for solver, backend in itertools.product(SOLVES, ("torch", "cupy")[:1 + cuda]):
                            def solve(solver: str = solver, backend: str = backend) -> object:
                                with use_backend(backend):
                                    return getattr(ops, solver)(**solve_args(solver, inputs), scale=2)
                            cases[f"solve {solver} {backend}"] = solve
                    for name, fn in cases.items():
                        for _ in range(3):  # warm-up: kernel compilation, cuFFT plans, allocator
                            fn()
                        eager = (event_ms if cuda else wall_ms)(fn, args.repeats)
                        graph = graph_ms(fn, args.repeats) if cuda else "n/a on cpu"
                        gpu, launches, table = profile(fn, cuda)
                        rows.append((name, batch, precision, eager, graph, gpu, launches))
                        print(f"== {name} batch {batch} {precision}", file=log)
                        print(table, file=log, flush=True)
    print(f"{'case':<24} {'batch':>5} {'prec':>5} {'eager ms':>9} {'graph ms':>9} {'gpu ms':>8} {'kernels':>8}")
    for name, batch, precision, eager, graph, gpu, launches in rows:
        graph_text = f"{graph:9.3f}" if isinstance(graph, float) else f"  {graph}"
        print(f"{name:<24} {batch:>5} {precision:>5} {eager:9.3f} {graph_text} {gpu:8.3f} {launches:8.0f}")
    print(torch.cuda.get_device_name() if cuda else "cpu", "torch", torch.__version__)


if __name__ == "__main__":
    main()
