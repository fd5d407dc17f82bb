"""The CUDA raw kernels of ``cuda/*.cu`` as torch custom ops with autograd.

Each op launches its kernel through :data:`LAUNCHERS`, keyed by device type: for CUDA tensors the sources
are compiled by CuPy (NVRTC, once per process and cached on disk by CuPy), the tensors are passed zero-copy
as their device pointers and the kernel runs on torch's current stream. The kernels take contiguous
float32 / complex64 tensors, ``long long`` integers and ``float`` scalars, in that order of the C signature.
The backward passes are ops of their own (first-order gradients; the PyTorch path also has higher orders).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from wrcli.errors import WrcError

Launcher = Callable[[str, int, tuple, torch.device], None]  # kernel, elements (> 0), arguments, their device
BLOCK = 256
MAX_GRID = 1 << 20  # the kernels loop grid-stride beyond this
COMPILE_OPTIONS = ("--std=c++17",)


@functools.cache
def sources_dir() -> Path:
    """``cuda/`` of the installed package (wheel: ``wrcli/cuda``) or of the source checkout."""
    here = Path(__file__).resolve().parents[1]
    for candidate in (here / "cuda", here.parent / "cuda"):
        if (candidate / "wrc_common.cuh").is_file():
            return candidate
    raise WrcError(f"the CUDA sources (cuda/*.cu) are missing next to {here}")


def source_of(kernel: str) -> Path:
    """``wrc_official_forward`` → ``cuda/official.cu``."""
    return sources_dir() / f"{kernel.split('_')[1]}.cu"


@functools.cache
def _module(path: Path):
    import cupy

    return cupy.RawModule(code=path.read_text(), options=(*COMPILE_OPTIONS, f"-I{path.parent}"))


@functools.cache
def _function(kernel: str):
    """The compiled kernel: one module per source file, compiled once per process, cached on disk by CuPy."""
    return _module(source_of(kernel)).get_function(kernel)


@functools.lru_cache(maxsize=64)
def _stream(stream: torch.cuda.Stream):
    """CuPy's view of a torch stream (torch streams compare and hash by handle and device)."""
    import cupy

    return cupy.cuda.Stream.from_external(stream)


def _cupy_launch(kernel: str, n: int, args: tuple, device: torch.device) -> None:
    """Launch on torch's current stream. Tensors go in as their device pointers (8 bytes by value, what a
    pointer parameter takes), which costs less host time than a ``cupy.from_dlpack`` view of each."""
    import cupy
    import numpy as np

    stream = torch.cuda.current_stream(device)
    converted = tuple(
        np.uint64(a.data_ptr()) if isinstance(a, Tensor) else np.int64(a) if isinstance(a, int) else np.float32(a)
        for a in args
    )
    with cupy.cuda.Device(device.index), _stream(stream):
        _function(kernel)((min(-(-n // BLOCK), MAX_GRID),), (BLOCK,), converted)


LAUNCHERS: dict[str, Launcher] = {"cuda": _cupy_launch}


def launch(kernel: str, n: int, *args: Tensor | int | float) -> None:
    """Run ``kernel`` over ``n`` elements with ``args`` (tensors contiguous, on one device)."""
    device = next(a.device for a in args if isinstance(a, Tensor))
    if device.type not in LAUNCHERS:
        raise WrcError(f"the CUDA kernels cannot run on {device.type} tensors")
    if n > 0:
        LAUNCHERS[device.type](kernel, n, args, device)


def _differentiable(op, backward_op, n_tensors: int) -> None:
    """Autograd for ``op``, whose first ``n_tensors`` inputs are tensors and the rest ints/floats:
    ``backward_op(grad, *inputs)`` returns the tensors' gradients."""

    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs[:n_tensors])
        ctx.args = inputs[n_tensors:]

    def backward(ctx, grad: Tensor):
        return (*backward_op(grad.contiguous(), *ctx.saved_tensors, *ctx.args), *(None,) * len(ctx.args))

    op.register_autograd(backward, setup_context=setup_context)


# --- official: the fused alias-group solve between rfft2(r) and irfft2 ---------------------------------


@torch.library.custom_op("wrcli::official_mix", mutates_args=())
def official_mix(rhat: Tensor, z: Tensor, wl: Tensor, power: Tensor, mh: Tensor, d: Tensor, khat: Tensor,
                 floor: float) -> Tensor:
    """Half spectrum x̂ of :func:`wrcli.ops.fused.official_mix`; every tensor contiguous, full shape."""
    out = torch.empty_like(rhat)
    B, C, H, Wh = rhat.shape
    launch("wrc_official_forward", B * C * H * Wh, rhat, z, wl, power, mh, d, khat, out, *_sizes(d, z), floor)
    return out


@official_mix.register_fake
def _(rhat, z, wl, power, mh, d, khat, floor):
    return torch.empty_like(rhat)


@torch.library.custom_op("wrcli::official_mix_backward", mutates_args=())
def official_mix_backward(grad: Tensor, rhat: Tensor, z: Tensor, wl: Tensor, power: Tensor, mh: Tensor, d: Tensor,
                          khat: Tensor, floor: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    sizes = _sizes(d, z)
    B, C, H, W, h, w = sizes
    g_rhat, g_d = torch.empty_like(rhat), torch.empty_like(d)
    launch("wrc_official_backward_high", B * C * H * W, grad, rhat, z, wl, power, mh, d, khat, g_rhat, g_d, *sizes, floor)
    g_z, g_wl, g_mh = torch.empty_like(z), torch.empty_like(wl), torch.empty_like(mh)
    launch("wrc_official_backward_low", B * C * h * w, grad, z, wl, power, mh, d, khat, g_z, g_wl, g_mh, *sizes, floor)
    g_khat = torch.empty_like(khat)
    launch("wrc_official_backward_khat", khat.numel(), grad, z, wl, power, mh, d, g_khat, *sizes, floor)
    return g_rhat, g_z, g_wl, (g_mh * wl).sum(0), g_mh, g_d, g_khat


@official_mix_backward.register_fake
def _(grad, rhat, z, wl, power, mh, d, khat, floor):
    return tuple(torch.empty_like(t) for t in (rhat, z, wl, power, mh, d, khat))


def _sizes(d: Tensor, z: Tensor) -> tuple[int, ...]:
    return (*d.shape, *z.shape[-2:])


_differentiable(official_mix, official_mix_backward, 7)


# --- converse: the low-resolution division between rfft2 and irfft2 ------------------------------------


@torch.library.custom_op("wrcli::converse_divide", mutates_args=())
def converse_divide(res: Tensor, den: Tensor) -> Tensor:
    """res / den on the low half spectrum; den (C,h,wh) shared by the batch or (B,C,h,wh)."""
    out = torch.empty_like(res)
    launch("wrc_converse_forward", res.numel(), res, den, out, res.numel(), res[0].numel(), int(den.dim() == res.dim()))
    return out


@converse_divide.register_fake
def _(res, den):
    return torch.empty_like(res)


@torch.library.custom_op("wrcli::converse_divide_backward", mutates_args=())
def converse_divide_backward(grad: Tensor, res: Tensor, den: Tensor) -> tuple[Tensor, Tensor]:
    g_res, g_den = torch.empty_like(res), torch.empty(res.shape, dtype=den.dtype, device=den.device)
    batched = den.dim() == res.dim()
    launch("wrc_converse_backward", res.numel(), grad, res, den, g_res, g_den, res.numel(), res[0].numel(), int(batched))
    return g_res, g_den if batched else g_den.sum(0)


@converse_divide_backward.register_fake
def _(grad, res, den):
    return torch.empty_like(res), torch.empty_like(den)


_differentiable(converse_divide, converse_divide_backward, 2)


# --- exact: the block Sherman–Morrison solve (no FFT) ---------------------------------------------------


@torch.library.custom_op("wrcli::exact_solve", mutates_args=())
def exact_solve(y: Tensor, x0: Tensor, wl: Tensor, d: Tensor, kernel: Tensor, scale: int, start0: int,
                start1: int) -> Tensor:
    """x of :func:`wrcli.ops.solvers.exact` with blocks starting at s·i + start (start ≥ 0)."""
    out = torch.empty_like(x0)
    launch("wrc_exact_forward", y.numel(), y, x0, wl, d, kernel, out, *_exact_sizes(y, kernel, scale, start0, start1))
    return out


@exact_solve.register_fake
def _(y, x0, wl, d, kernel, scale, start0, start1):
    return torch.empty_like(x0)


@torch.library.custom_op("wrcli::exact_solve_backward", mutates_args=())
def exact_solve_backward(grad: Tensor, y: Tensor, x0: Tensor, wl: Tensor, d: Tensor, kernel: Tensor, scale: int,
                         start0: int, start1: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    g_y, g_x0, g_wl, g_d = (torch.empty_like(t) for t in (y, x0, wl, d))
    g_a = torch.empty(*y.shape, *kernel.shape[-2:], dtype=kernel.dtype, device=kernel.device)
    launch("wrc_exact_backward", y.numel(), grad, y, x0, wl, d, kernel, g_y, g_x0, g_wl, g_d, g_a,
           *_exact_sizes(y, kernel, scale, start0, start1))
    return g_y, g_x0, g_wl, g_d, g_a.sum(dim=(0, 2, 3)).flip(-2, -1)


@exact_solve_backward.register_fake
def _(grad, y, x0, wl, d, kernel, scale, start0, start1):
    return tuple(torch.empty_like(t) for t in (y, x0, wl, d, kernel))


def _exact_sizes(y: Tensor, kernel: Tensor, scale: int, start0: int, start1: int) -> tuple[int, ...]:
    return (*y.shape, scale, *kernel.shape[-2:], start0, start1)


_differentiable(exact_solve, exact_solve_backward, 5)
