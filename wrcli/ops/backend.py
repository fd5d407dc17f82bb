"""Which implementation runs the fused steps of the solves: ``torch`` (eager PyTorch, always works),
``compiled`` (the same functions through ``torch.compile``: one fused loop each, after a compile of a few
seconds per shape, so it pays off on long runs of one shape; eager where compiling fails) or ``cupy``
(the CUDA raw kernels in ``cuda/``, float32 CUDA tensors only). Under ``compiled`` a learned upsampler's
inference passes are compiled whole as well (:meth:`wrcli.models.base.Upsampler.upsample`).

Order of precedence: :func:`use_backend` (innermost wins) > ``WRC_BACKEND=torch|compiled|cupy`` >
automatic (``cupy`` for float32 CUDA tensors when CuPy imports and sees a GPU, else ``torch``; never
``compiled``, whose compile time only long runs repay). A forced ``cupy`` that cannot run raises a
one-line :class:`~wrcli.errors.WrcError` rather than silently changing path.
"""

from __future__ import annotations

import functools
import os
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator, Literal

import torch

from wrcli.errors import WrcError, first_line

Backend = Literal["torch", "compiled", "cupy"]
BACKENDS: tuple[Backend, ...] = ("torch", "compiled", "cupy")
ENV = "WRC_BACKEND"

_forced: ContextVar[Backend | None] = ContextVar("wrc_backend", default=None)


@functools.cache
def cupy_available() -> bool:
    """CuPy imports and can reach a CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - ImportError, CUDARuntimeError, driver mismatch: all mean "no"
        return False


def forced() -> Backend | None:
    """The backend forced by :func:`use_backend` or ``WRC_BACKEND``, else None."""
    name = _forced.get() or os.environ.get(ENV, "").strip().lower() or None
    if name is not None and name not in BACKENDS:
        raise WrcError(f"{ENV} must be one of {', '.join(BACKENDS)}, got {name!r}")
    return name


def select(device: torch.device, dtype: torch.dtype) -> Backend:
    """The backend a solve on tensors of this device and (compute) dtype runs on."""
    name = forced()
    runnable = device.type == "cuda" and dtype == torch.float32 and cupy_available()
    if name == "cupy" and not runnable:
        why = "CuPy with a CUDA device is not available" if not cupy_available() else f"it needs float32 CUDA tensors, got {dtype} on {device}"
        raise WrcError(f"{ENV}=cupy cannot run here: {why}")
    if name is not None:
        return name
    return "cupy" if runnable else "torch"


@contextmanager
def use_backend(name: Backend | None) -> Iterator[None]:
    """Force ``name`` (None: back to the environment / automatic choice) inside the block."""
    if name is not None and name not in BACKENDS:
        raise WrcError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


@functools.cache
def compiled(fn: Callable[..., Any], dynamic: bool | None = None, any_batch: bool = False) -> Callable[..., Any]:
    """``torch.compile(fn, dynamic=dynamic)``, falling back to ``fn`` for good (with one warning) if compiling
    fails, e.g. without a C++ compiler or Triton. Positional arguments only. ``any_batch``: the first dimension
    of every tensor argument may change without a recompile (``torch._dynamo.maybe_mark_dynamic``; even with
    ``dynamic=False``, which keeps the other dimensions static): one graph for batches of 2 and more, one for 1."""
    compiled_fn = torch.compile(fn, dynamic=dynamic)
    failed: list[str] = []

    def call(*args):
        if not failed:
            if any_batch:
                for a in args:
                    if isinstance(a, torch.Tensor) and a.dim():
                        torch._dynamo.maybe_mark_dynamic(a, 0)
            try:
                with warnings.catch_warnings():  # the FFTs' complex tensors stay eager kernels in the graph, by design
                    warnings.filterwarnings("ignore", message="Torchinductor does not support code generation for complex")
                    return compiled_fn(*args)
            except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eagerly
                failed.append(first_line(exc) if not str(exc).strip() else f"{type(exc).__name__}: {first_line(exc)}")
                warnings.warn(f"torch.compile of {fn.__name__} failed ({failed[0]}); running it eagerly", RuntimeWarning, stacklevel=2)
        return fn(*args)

    return functools.wraps(fn)(call)
