"""Which path runs the fused steps of the solves (torch, compiled, cupy), and the compiled path against the
eager one, forward and backward."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from wrcli.errors import WrcError
from wrcli.ops import backend, exact, fused, official
from wrcli.ops.backend import use_backend


def test_backend_selection_on_cpu(monkeypatch):
    monkeypatch.delenv(backend.ENV, raising=False)
    cpu = torch.device("cpu")
    assert backend.select(cpu, torch.float32) == "torch"
    monkeypatch.setenv(backend.ENV, "torch")
    assert backend.select(cpu, torch.float32) == "torch"
    monkeypatch.setenv(backend.ENV, "cupy")
    with pytest.raises(WrcError, match="WRC_BACKEND=cupy cannot run here"):
        backend.select(cpu, torch.float32)
    with use_backend("torch"):  # the innermost choice wins over the environment
        assert backend.select(cpu, torch.float32) == "torch"
    monkeypatch.setenv(backend.ENV, "triton")
    with pytest.raises(WrcError, match="WRC_BACKEND must be one of torch, compiled, cupy"):
        backend.select(cpu, torch.float32)
    with pytest.raises(WrcError, match="backend must be one of"):
        with use_backend("jax"):
            pass



def solver_case(B=2, C=3, h=5, w=7, s=2):
    g = torch.Generator().manual_seed(0)
    H, W = s * h, s * w
    return dict(
        y=torch.randn(B, C, h, w, generator=g), x0=torch.randn(B, C, H, W, generator=g),
        w_low=torch.rand(B, C, h, w, generator=g) * 2, w_high=torch.rand(B, C, H, W, generator=g),
        kernel=torch.softmax(torch.randn(C, 4, generator=g), -1).reshape(C, 2, 2), lam=torch.rand(C, generator=g) + 0.01,
    ), s


def run(fn, inputs: dict, s: int, path: str):
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    with use_backend(path):
        out = fn(**leaves, scale=s)
    out.mul(torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    return out.detach(), {k: v.grad for k, v in leaves.items()}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="torch.compile needs a C++ compiler on CPU")
@pytest.mark.parametrize("fn", [official, exact], ids=["official", "exact"])
def test_compiled_path_equals_eager(fn):
    inputs, s = solver_case()
    ref, ref_grads = run(fn, inputs, s, "torch")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the fallback to eager warns: it must not happen here
        out, grads = run(fn, inputs, s, "compiled")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_compile_failure_falls_back_to_eager():
    """A compiler that cannot run (here: a C++ compiler that does not exist) costs a warning, not the result.
    inductor's own ``config.patch`` sets it: monkeypatch's undo deleted ``cpp.cxx``, so every later compile failed."""
    from torch._inductor import config

    def unusual_step(x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x) * 0.123 + x.square()

    x = torch.randn(64)
    with config.patch({"cpp.cxx": ("/nonexistent/c++",), "fx_graph_cache": False}):
        torch._dynamo.reset()
        step = backend.compiled(unusual_step)
        with pytest.warns(RuntimeWarning, match="torch.compile of unusual_step failed"):
            first = step(x)
        torch.testing.assert_close(first, unusual_step(x))
        torch.testing.assert_close(step(x), unusual_step(x))  # later calls run eagerly without trying again
    assert config.cpp.cxx != ("/nonexistent/c++",)  # restored
