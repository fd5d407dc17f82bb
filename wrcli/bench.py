"""``wrc bench``: wall-clock time and peak memory of the backbone, each upsampler, the WRC solves alone, one
rfft2 + irfft2 pair, and backbone + upsampler, per batch size, precision and backend.

Cases (B = batch, S = ``size``, p = patch, (h, w) = (S/p, S/p) the token grid, C = the backbone's channels):

- ``backbone``: normalisation of a uint8 (B,3,S,S) batch, then the frozen backbone's forward.
- ``upsampler``: ``upsample(features, images, scale=s)`` on the backbone's real output for that batch, under
  each backend for a learned model (``compiled`` compiles its whole passes; the warm-up calls compile).
- ``solve``: ``official``, ``exact`` and ``converse`` of :mod:`wrcli.ops` alone, on what the WRC layer hands
  them: y (B,M,h+4,w+4) (padded by 2; M = ``solve_channels``, by default the WRC upsampler's layer width
  (C + 32) // 2, 208 for ViT-S), x0 = bilinear ×s of y, weight maps log1p(z²) ≥ 0 of y's and x0's
  shape, a 2×2 kernel, λ (C,). The solve always computes in float32: at ``bf16`` only its four feature-sized
  inputs (and so its output) are bfloat16.
- ``fft``: one ``torch.fft.rfft2`` + ``irfft2`` pair on the solve's float32 x0, the reference of the solves.
- ``pipeline``: backbone and upsampler together, as ``wrc extract`` runs them.

``bf16`` runs the backbone and upsamplers under ``torch.autocast(dtype=torch.bfloat16)``
(:func:`wrcli.precision.autocast`, as every command's ``--precision bf16``); ``auto`` in ``--precision`` is what
the other commands' ``--precision auto`` picks on this device (``settings.precision_auto``). Forward passes run
under ``torch.inference_mode()``. Each measurement is ``warmup`` untimed calls then ``repeats`` timed ones,
the CUDA device synchronised before and after each.

Memory: on CUDA, the allocator's peak during the case (``peak_mib``) and its rise over what was allocated
when the case began (``rise_mib``; model weights and prepared inputs are already there). On CPU there is no
per-case allocator counter: the process's peak resident set (VmHWM) during the case, reset per case through
``/proc/self/clear_refs`` after returning freed heap to the OS, and its rise over the resident set at the
start; where the reset is refused, the running peak since the process started.

Load: the 1-minute load average before and after the run. On CPU, when other processes already keep the
CPUs busy (:func:`contention`), a warning goes into the report, the table's caption and the log: threads
that wait for each other while the scheduler runs someone else make CPU times many times their idle value.

Bandwidth floor of a solve: every input read once and the output written once, in bytes, over the
bandwidth of a large device-to-device copy measured here (bytes moved = 2 × buffer); on CUDA also over the
theoretical peak 2 · memory clock · bus width / 8.
"""

from __future__ import annotations

import os
import re
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from wrcli.defaults import DEFAULT_BACKBONE, DEFAULT_UPSAMPLER
from wrcli.errors import WrcError
from wrcli.models.wrc import WRCUpsampler
from wrcli.ops.backend import BACKENDS, use_backend
from wrcli.precision import autocast, resolve_precision
from wrcli.session import Session

CASES = ("backbone", "upsampler", "solve", "fft", "pipeline")
PRECISIONS = ("fp32", "bf16")
SOLVES = ("official", "exact", "converse")
PAD, KERNEL = 2, 2  # the WRC layer's padding of y and kernel size
REFERENCE = {"solve": "fft", "upsampler": "backbone", "pipeline": "backbone"}  # the "relative" column
BACKEND_CASES = ("upsampler", "solve", "pipeline")  # the cases measured once per backend
COPY_BYTES = {"cuda": 1 << 30, "cpu": 1 << 28}
MiB = float(1 << 20)


@dataclass(frozen=True)
class BenchOptions:
    """What to measure; the lists are comma-separated strings (as on the command line) or sequences."""

    backbone: str = DEFAULT_BACKBONE
    backbone_weights: str | None = None
    upsamplers: str | Sequence[str] = f"bilinear,{DEFAULT_UPSAMPLER}"
    device: str = "auto"
    size: int = 448
    scale: int = 2
    batches: str | Sequence[int] = "1,8"
    precisions: str | Sequence[str] = ",".join(PRECISIONS)
    backends: str | Sequence[str] = ",".join(BACKENDS)
    cases: str | Sequence[str] = "all"
    warmup: int = 2
    repeats: int = 10
    solve_channels: int | None = None  # None: the WRC upsampler's layer width for the backbone


@dataclass(frozen=True)
class Plan:
    """The validated options."""

    cases: list[str]
    batches: list[int]
    precisions: list[str]
    backends: list[str]


# -- options -------------------------------------------------------------------------------------------------

def _items(spec: str | Sequence[Any]) -> list[str]:
    items = spec.split(",") if isinstance(spec, str) else [str(s) for s in spec]
    return list(dict.fromkeys(s.strip() for s in items if s.strip()))


def parse_choices(spec: str | Sequence[str], allowed: Sequence[str], flag: str) -> list[str]:
    """``"a,b"`` (or a list) → the names in order without repeats; ``"all"`` → ``allowed``."""
    items = _items(spec)
    if items == ["all"]:
        return list(allowed)
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        got = ", ".join(map(repr, bad)) if bad else "nothing"
        raise WrcError(f"{flag}: got {got}; choose from {', '.join(allowed)} (comma-separated) or all")
    return items


def parse_batches(spec: str | Sequence[int]) -> list[int]:
    """``"1,8"`` (or a list) → positive batch sizes in order without repeats."""
    items = _items(spec)
    try:
        batches = [int(s) for s in items]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise WrcError(f"--batch expects positive integers separated by commas, e.g. 1,8; got {spec!r}")
    return batches


def make_plan(opts: BenchOptions) -> Plan:
    """Validate ``opts`` (before anything is loaded)."""
    if opts.scale < 2:
        raise WrcError(f"--scale must be an integer ≥ 2, got {opts.scale}")
    if opts.solve_channels is not None and opts.solve_channels < 1:
        raise WrcError(f"--solve-channels must be ≥ 1, got {opts.solve_channels}")
    if opts.warmup < 0 or opts.repeats < 1:
        raise WrcError(f"--warmup must be ≥ 0 and --repeats ≥ 1, got {opts.warmup} and {opts.repeats}")
    return Plan(
        cases=parse_choices(opts.cases, CASES, "--cases"),
        batches=parse_batches(opts.batches),
        precisions=parse_choices(opts.precisions, (*PRECISIONS, "auto"), "--precision"),
        backends=parse_choices(opts.backends, BACKENDS, "--backend"),
    )


def backend_problem(name: str, device: torch.device) -> str | None:
    """Why solve backend ``name`` cannot run on ``device``, or None."""
    from wrcli.ops.backend import cupy_available

    if name != "cupy":
        return None
    if device.type != "cuda":
        return f"the cupy solve backend needs a CUDA device; this run is on {device}"
    if not cupy_available():
        return "the cupy solve backend needs CuPy with a CUDA device (pip install cupy-cuda13x); it is not available"
    return None


def runnable_backends(requested: Sequence[str], device: torch.device,
                      cases: Sequence[str] = ("solve",)) -> tuple[list[str], list[dict[str, str]]]:
    """The requested backends that can run here, and a note for each skipped one (``case``: the cases it is
    missing from); WrcError when none can."""
    problems = {name: backend_problem(name, device) for name in requested}
    runnable = [name for name, problem in problems.items() if problem is None]
    if not runnable:
        raise WrcError(f"--backend {','.join(requested)}: {problems[requested[0]]}; use --backend torch")
    case = ",".join(cases)
    skipped = [{"case": case, "backend": name, "reason": problem} for name, problem in problems.items() if problem]
    return runnable, skipped


# -- measuring -----------------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Milliseconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linearly interpolated quantile of sorted values."""
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarise(times_ms: Sequence[float]) -> dict[str, Any]:
    """Median, min, max, p25, p75 (ms) and the runs themselves."""
    ordered = sorted(times_ms)
    return {"median": _quantile(ordered, 0.5), "min": ordered[0], "max": ordered[-1], "p25": _quantile(ordered, 0.25),
            "p75": _quantile(ordered, 0.75), "runs": list(times_ms)}


def _proc_status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (VmRSS, VmHWM), or None where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            found = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) if found else None


def _reset_peak_rss() -> bool:
    """Reset the process's VmHWM to its current RSS (Linux); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, Any]]:
    """Fill the yielded dict with ``scope``, ``peak_mib`` and ``rise_mib`` of the block (see the module doc)."""
    result: dict[str, Any] = {}
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield result
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device)
        result.update(scope="cuda allocator, this case", peak_mib=peak / MiB, rise_mib=(peak - start) / MiB)
        return
    from wrcli.allocator import trim_memory

    trim_memory()
    per_case = _reset_peak_rss()
    start = _proc_status_kib("VmRSS")
    yield result
    peak = _proc_status_kib("VmHWM")
    if peak is None or start is None:
        result.update(scope="unavailable", peak_mib=None, rise_mib=None)
    elif per_case:
        result.update(scope="process RSS, this case", peak_mib=peak / 1024, rise_mib=(peak - start) / 1024)
    else:
        result.update(scope="process RSS, since start", peak_mib=peak / 1024, rise_mib=None)


def measure(fn: Callable[[], object], device: torch.device, precision: str, warmup: int,
            repeats: int) -> tuple[list[float], dict[str, Any]]:
    """Times (ms) and memory of ``fn`` under inference mode, at ``precision`` (fp32, or bf16: bfloat16 autocast)."""
    with peak_memory(device) as memory, torch.inference_mode():
        with autocast(device, precision):
            times = time_call(fn, device, warmup, repeats)
    return times, memory


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int = 5) -> float:
    """Bytes per second of a device-to-device copy of ``nbytes`` (read + write counted), median of repeats."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    times = time_call(lambda: dst.copy_(src), device, warmup=1, repeats=repeats)
    return 2 * src.numel() * src.element_size() / (statistics.median(times) / 1e3)


def peak_bandwidth(device: torch.device) -> float | None:
    """Theoretical memory bandwidth of a CUDA device in bytes per second (2 · clock · bus width / 8), or None."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    return 2 * clock_khz * 1e3 * bus_bits / 8 if clock_khz and bus_bits else None


# -- inputs --------------------------------------------------------------------------------------------------

def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device).manual_seed(seed)


def pixels(batch: int, size: int, device: torch.device, seed: int = 0) -> Tensor:
    """A random uint8 image batch (B,3,size,size)."""
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device,
                         generator=_generator(device, seed))


def solve_inputs(batch: int, channels: int, grid: tuple[int, int], scale: int, dtype: torch.dtype,
                 device: torch.device, seed: int = 0) -> dict[str, Tensor]:
    """What the WRC layer hands its solve for a (h, w) token grid: y, x0, w_low, w_high (in ``dtype``),
    kernel and lam (float32)."""
    g = _generator(device, seed)
    y = torch.randn(batch, channels, grid[0] + 2 * PAD, grid[1] + 2 * PAD, device=device, generator=g)
    x0 = F.interpolate(y, scale_factor=scale, mode="bilinear", align_corners=True)
    w_low = torch.log1p(torch.randn(y.shape, device=device, generator=g).square())
    w_high = torch.log1p(torch.randn(x0.shape, device=device, generator=g).square())
    kernel = torch.softmax(torch.randn(channels, KERNEL * KERNEL, device=device, generator=g), -1)
    lam = F.softplus(torch.zeros(channels, device=device)) + 1e-5
    maps = {"y": y, "x0": x0, "w_low": w_low, "w_high": w_high}
    return {**{k: v.to(dtype) for k, v in maps.items()}, "kernel": kernel.view(channels, KERNEL, KERNEL), "lam": lam}


def solve_args(solver: str, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """The tensors ``solver`` takes (converse has no weight maps)."""
    names = ("y", "x0", "kernel", "lam") if solver == "converse" else ("y", "x0", "w_low", "w_high", "kernel", "lam")
    return {name: inputs[name] for name in names}


def compulsory_bytes(args: dict[str, Tensor]) -> int:
    """Every input read once and the output (x0's shape, y's dtype) written once."""
    out = args["x0"].numel() * args["y"].element_size()
    return out + sum(t.numel() * t.element_size() for t in args.values())


# -- the cases -----------------------------------------------------------------------------------------------

def _row(case: str, name: str, batch: int, precision: str, backend: str | None, times: list[float],
         memory: dict[str, Any], **extra: Any) -> dict[str, Any]:
    stats = summarise(times)
    return {"case": case, "name": name, "batch": batch, "precision": precision, "backend": backend,
            "time_ms": stats, "per_image_ms": stats["median"] / batch, "memory": memory, **extra}


class Bench:
    """The loaded models and settings; one method per case, each yielding its rows as they are measured."""

    def __init__(self, plan: Plan, opts: BenchOptions, device: torch.device, backbone: Any, models: dict[str, Any],
                 backends: list[str], bandwidth: dict[str, Any] | None) -> None:
        self.plan, self.opts, self.device, self.bb, self.models = plan, opts, device, backbone, models
        self.backends, self.bandwidth = backends, bandwidth
        self.grid = (opts.size // backbone.patch_size,) * 2
        self.solve_channels = opts.solve_channels or WRCUpsampler.layer_channels(backbone.embed_dim)

    def _measure(self, fn: Callable[[], object], precision: str) -> tuple[list[float], dict[str, Any]]:
        return measure(fn, self.device, precision, self.opts.warmup, self.opts.repeats)

    def _model_backends(self, model: Any) -> list[str | None]:
        """The backends an upsampler's rows run under: each requested one for a model with learned passes
        (its solve and, under ``compiled``, its whole passes depend on it), None for an interpolation."""
        return list(self.backends) if model.native_scale is not None else [None]

    def backbone(self) -> Iterator[dict[str, Any]]:
        for batch in self.plan.batches:
            x = pixels(batch, self.opts.size, self.device)
            for precision in self.plan.precisions:
                times, memory = self._measure(lambda: self.bb(self.bb.normalize(x)), precision)
                yield _row("backbone", self.bb.name, batch, precision, None, times, memory)

    def upsampler(self) -> Iterator[dict[str, Any]]:
        for batch in self.plan.batches:
            for precision in self.plan.precisions:
                with torch.inference_mode(), autocast(self.device, precision):
                    images = self.bb.normalize(pixels(batch, self.opts.size, self.device))
                    feats = self.bb(images)
                for label, model in self.models.items():
                    for backend in self._model_backends(model):
                        with use_backend(backend):
                            times, memory = self._measure(
                                lambda m=model: m.upsample(feats, images, scale=self.opts.scale), precision)
                        yield _row("upsampler", label, batch, precision, backend, times, memory)

    def pipeline(self) -> Iterator[dict[str, Any]]:
        for batch in self.plan.batches:
            x = pixels(batch, self.opts.size, self.device)
            for precision in self.plan.precisions:
                for label, model in self.models.items():
                    def run(m: Any = model) -> Tensor:
                        images = self.bb.normalize(x)
                        return m.upsample(self.bb(images), images, scale=self.opts.scale)

                    for backend in self._model_backends(model):
                        with use_backend(backend):
                            times, memory = self._measure(run, precision)
                        yield _row("pipeline", label, batch, precision, backend, times, memory)

    def _inputs(self, batch: int, dtype: torch.dtype) -> dict[str, Tensor]:
        return solve_inputs(batch, self.solve_channels, self.grid, self.opts.scale, dtype, self.device)

    def solve(self) -> Iterator[dict[str, Any]]:
        from wrcli import ops

        for batch in self.plan.batches:
            for precision in self.plan.precisions:
                inputs = self._inputs(batch, torch.bfloat16 if precision == "bf16" else torch.float32)
                for solver in SOLVES:
                    args = solve_args(solver, inputs)
                    for backend in self.backends:
                        with use_backend(backend):
                            times, memory = self._measure(
                                lambda fn=getattr(ops, solver): fn(**args, scale=self.opts.scale),
                                "fp32")  # no autocast: the inputs carry the precision
                        row = _row("solve", solver, batch, precision, backend, times, memory,
                                   shapes={k: list(v.shape) for k, v in args.items()})
                        yield {**row, "floor": self._floor(compulsory_bytes(args), row["time_ms"]["median"])}

    def _floor(self, nbytes: int, median_ms: float) -> dict[str, Any]:
        copy, peak = self.bandwidth["copy_bytes_per_s"], self.bandwidth["peak_bytes_per_s"]
        floor_us = nbytes / copy * 1e6
        return {"bytes": nbytes, "us": floor_us, "us_at_peak": nbytes / peak * 1e6 if peak else None,
                "measured_over_floor": median_ms * 1e3 / floor_us}

    def fft(self) -> Iterator[dict[str, Any]]:
        for batch in self.plan.batches:
            x = self._inputs(batch, torch.float32)["x0"]
            times, memory = self._measure(lambda: torch.fft.irfft2(torch.fft.rfft2(x), s=x.shape[-2:]), "fp32")
            yield _row("fft", "rfft2+irfft2", batch, "fp32", None, times, memory, shapes={"x": list(x.shape)})


def add_relative(rows: list[dict[str, Any]]) -> None:
    """Give each solve its time over the fft pair at the same batch, and each upsampler and pipeline its time
    over the backbone's at the same batch and precision."""
    refs = {(r["case"], r["batch"], r["precision"]): r["time_ms"]["median"] for r in rows if r["case"] in ("fft", "backbone")}
    for row in rows:
        to = REFERENCE.get(row["case"])
        ref = refs.get((to, row["batch"], "fp32" if to == "fft" else row["precision"]))
        row["relative"] = {"to": to, "ratio": row["time_ms"]["median"] / ref} if ref else None


def _describe(row: dict[str, Any]) -> str:
    backend = f" {row['backend']}" if row["backend"] else ""
    return f"{row['case']} {row['name']} batch {row['batch']} {row['precision']}{backend}"


def _measure_bandwidth(device: torch.device) -> dict[str, Any]:
    nbytes = COPY_BYTES["cuda" if device.type == "cuda" else "cpu"]
    return {"copy_buffer_mib": nbytes / MiB, "copy_bytes_per_s": copy_bandwidth(device, nbytes),
            "peak_bytes_per_s": peak_bandwidth(device)}


def _load() -> float | None:
    """The 1-minute load average (other processes competing for the CPU inflate CPU times), or None."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def contention(load: float | None, cpus: int | None, threads: int) -> str | None:
    """A warning when other processes already keep the CPUs busy: the load average at the start leaves
    fewer than ``threads`` idle CPUs (with half a CPU of slack), so torch's threads are descheduled while
    they wait for each other and a call can take 10–50× its idle time (``BENCHMARKS.md``); else None."""
    if load is None or not cpus or load <= cpus - threads + 0.5:
        return None
    return (f"load average {load:.1f} on {cpus} CPUs before the run, with {threads} torch "
            f"thread{'s' if threads != 1 else ''}: other processes "
            f"compete for the CPU and a call can take many times its idle time; measure on an idle machine, "
            f"or with OMP_NUM_THREADS=1")


def _environment(device: torch.device, command: str | None, load: float | None) -> dict[str, Any]:
    """Versions, machine, date, command line and the load average at the start (the end is appended)."""
    from wrcli.reports import environment

    env = environment(device)
    env.update(torch_cuda=torch.version.cuda, cpus=os.cpu_count(), load_average=[load],
               date=datetime.now(timezone.utc).isoformat(timespec="seconds"), command=command)
    if device.type == "cuda":
        from wrcli.ops.backend import cupy_available

        env["cupy"] = None
        if cupy_available():
            import cupy

            env["cupy"] = cupy.__version__
    return env


NOTES = [
    "times: wall clock per call, ms, after warm-up; the CUDA device is synchronised around every call",
    "solve: official/exact/converse alone on the WRC layer's inputs for the backbone's grid (y padded by 2, x0 at "
    "xscale, weight maps log1p(z^2), 2x2 kernel, solve_channels channels: by default the WRC layer's width); it computes in float32 always: bf16 = "
    "bfloat16 inputs and output",
    "fft: one rfft2 + irfft2 pair on the solve's float32 x0, the reference of the solves",
    "memory: peak_mib during the case and its rise over the start (see scope: the CUDA allocator, or the "
    "process's resident set on CPU, which includes Python, libraries and models)",
    "floor: compulsory bytes of a solve (inputs read once, output written once) over the measured copy "
    "bandwidth (us) and over the theoretical peak (us_at_peak, CUDA only)",
]


def _open(opts: BenchOptions, plan: Plan, log: Callable[[str], None]) -> tuple[Session, list[str], list[dict[str, str]]]:
    """Device → the runnable solve backends (before anything heavy) → backbone and the upsamplers the cases
    need: (session, backends, skipped backends)."""
    from wrcli.runtime import current_rank, resolve_device
    from wrcli.session import open_session, parse_upsamplers

    names = parse_upsamplers(opts.upsamplers)
    device = resolve_device(opts.device, current_rank())
    uses = [c for c in plan.cases if c in BACKEND_CASES]
    backends, skipped = runnable_backends(plan.backends, device, uses) if uses else ([], [])
    for note in skipped:
        log(f"bench: skipping the {note['backend']} backend: {note['reason']}")
    needs_models = bool({"upsampler", "pipeline"} & set(plan.cases))
    session = open_session(names if needs_models else None, backbone=opts.backbone, weights=opts.backbone_weights,
                           device=str(device))
    patch = session.backbone.patch_size
    if opts.size < patch or opts.size % patch:
        raise WrcError(f"--size {opts.size} is not a positive multiple of the patch size {patch} of {session.backbone.name}")
    return session, backends, skipped


def _settings(opts: BenchOptions, plan: Plan, bench: Bench, backends: list[str]) -> dict[str, Any]:
    return {"device": str(bench.device), "backbone": bench.bb.name, "size": opts.size, "scale": opts.scale,
            "grid": list(bench.grid), "solve_channels": bench.solve_channels, "cases": plan.cases,
            "batches": plan.batches, "precisions": plan.precisions,
            "precision_auto": resolve_precision("auto", bench.device), "backends": backends,
            "upsamplers": list(bench.models), "warmup": opts.warmup, "repeats": opts.repeats}


def run_bench(opts: BenchOptions, *, command: str | None = None,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the requested cases and return the report (see the module doc); ``log`` gets one line per
    measured row and per note (the CLI writes them to stderr)."""
    start, load = time.monotonic(), _load()
    log = log or (lambda line: None)
    plan = make_plan(opts)
    session, backends, skipped = _open(opts, plan, log)
    plan = replace(plan, precisions=list(dict.fromkeys(resolve_precision(p, session.device) for p in plan.precisions)))
    env = _environment(session.device, command, load)
    warning = contention(load, env["cpus"], env["cpu_threads"]) if session.device.type == "cpu" else None
    if warning:
        log(f"bench: warning: {warning}")
    bandwidth = _measure_bandwidth(session.device) if "solve" in plan.cases else None
    bench = Bench(plan, opts, session.device, session.backbone, session.upsamplers, backends, bandwidth)
    rows: list[dict[str, Any]] = []
    for case in plan.cases:
        for row in getattr(bench, case)():
            log(f"bench: {_describe(row)}: median {row['time_ms']['median']:.3f} ms")
            rows.append(row)
    add_relative(rows)
    env["load_average"].append(_load())
    return {
        "task": "bench", "settings": _settings(opts, plan, bench, backends), "environment": env,
        "backbone": session.backbone.config(), "upsamplers": session.describe_upsamplers(), "bandwidth": bandwidth,
        "results": rows, "skipped": skipped, "warnings": [warning] if warning else [], "notes": NOTES,
        "seconds": time.monotonic() - start,
    }


# -- the table -----------------------------------------------------------------------------------------------

def _num(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}" if value >= 0.1 else f"{value:.3f}"


def _memory_cell(memory: dict[str, Any]) -> str:
    if memory.get("peak_mib") is None:
        return "-"
    rise = memory.get("rise_mib")
    return f"{memory['peak_mib']:.0f}" + (f" (+{rise:.0f})" if rise is not None else "")


def _cells(row: dict[str, Any]) -> list[str]:
    t, rel, floor = row["time_ms"], row.get("relative"), row.get("floor")
    return [
        row["case"], row["name"], str(row["batch"]), row["precision"], row["backend"] or "",
        _num(t["median"]), f"{_num(t['p25'])}–{_num(t['p75'])}", f"{_num(t['min'])}–{_num(t['max'])}",
        _num(row["per_image_ms"]), _memory_cell(row["memory"]),
        f"{_num(rel['ratio'])}× {rel['to']}" if rel else "",
        _num(floor["us"]) if floor else "", f"{_num(floor['measured_over_floor'])}×" if floor else "",
    ]


def _caption(report: dict[str, Any]) -> str:
    lines = []
    scopes = {row["memory"].get("scope") for row in report["results"]}
    lines.append(f"peak MiB (+ rise over the case's start): {', '.join(sorted(s for s in scopes if s))}")
    bw = report["bandwidth"]
    if bw:
        peak = f", theoretical peak {bw['peak_bytes_per_s'] / 1e9:.0f} GB/s" if bw["peak_bytes_per_s"] else ""
        lines.append(f"floor: solve's compulsory bytes at the measured copy bandwidth "
                     f"{bw['copy_bytes_per_s'] / 1e9:.1f} GB/s{peak}; solve bf16 = bf16 inputs, fp32 compute")
    load, cpus = report["environment"]["load_average"], report["environment"]["cpus"]
    if None not in load:
        lines.append(f"load average (1 min) {load[0]:.1f} at the start, {load[1]:.1f} at the end, on {cpus} CPUs")
    lines += [f"skipped {s['case']} {s['backend']}: {s['reason']}" for s in report["skipped"]]
    lines += [f"warning: {w}" for w in report.get("warnings", [])]
    return "\n".join(lines)


def report_table(report: dict[str, Any]) -> Any:
    """The results as a rich ``Table`` (one row per measurement, the settings in the title, memory scope,
    bandwidth, load and skipped backends in the caption); the CLI prints it."""
    from rich.table import Table

    s, env = report["settings"], report["environment"]
    where = env.get("gpu") or f"{s['device']}, {env['cpu_threads']} threads"
    table = Table(title=f"wrc bench · {s['backbone']} · {s['size']} px, grid {s['grid'][0]}×{s['grid'][1]}, ×{s['scale']} · "
                        f"{where} · {s['warmup']} warm-up + {s['repeats']} repeats",
                  caption=_caption(report))
    for name in ("case", "name", "batch", "prec", "backend"):
        table.add_column(name)
    for name in ("median ms", "p25–p75", "min–max", "ms/img", "peak MiB", "relative", "floor µs", "×floor"):
        table.add_column(name, justify="right")
    for row in report["results"]:
        table.add_row(*_cells(row))
    return table
