"""The CUDA raw kernels of cuda/: they compile (nvcc; NVRTC as CuPy calls it), and their arithmetic equals
the PyTorch path, forward and backward.

Without a GPU the kernels' own source is compiled for the host (``-DWRC_HOST``: the grid-stride loop
becomes a serial loop) and run through the same torch custom ops and autograd wiring that CUDA tensors
use. On a CUDA GPU with CuPy, the solvers are compared end to end, backend against backend.
"""

from __future__ import annotations

import ctypes
import itertools
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from wrcli.errors import WrcError
from wrcli.ops import backend, converse, cupy_kernels, exact, fused, official, wrc_layer
from wrcli.ops.backend import use_backend

CUDA_DIR = cupy_kernels.sources_dir()
SOURCES = sorted(CUDA_DIR.glob("*.cu"))
KERNELS = {
    "official": ["wrc_official_forward", "wrc_official_backward_high", "wrc_official_backward_low",
                 "wrc_official_backward_khat"],
    "converse": ["wrc_converse_forward", "wrc_converse_backward"],
    "exact": ["wrc_exact_forward", "wrc_exact_backward"],
}
CXX = shutil.which("g++") or shutil.which("c++")
GPU = torch.cuda.is_available() and backend.cupy_available()


def test_every_kernel_the_ops_launch_is_in_its_source():
    assert [p.stem for p in SOURCES] == sorted(KERNELS)
    for stem, names in KERNELS.items():
        text = (CUDA_DIR / f"{stem}.cu").read_text()
        for name in names:
            assert f"WRC_GLOBAL void {name}(" in text
            assert cupy_kernels.source_of(name) == CUDA_DIR / f"{stem}.cu"
    launched = set(__import__("re").findall(r'"(wrc_\w+)"', Path(cupy_kernels.__file__).read_text()))
    assert launched == {n for names in KERNELS.values() for n in names}


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_compiles_with_nvcc(source, tmp_path):
    done = subprocess.run(["nvcc", "--std=c++17", "-arch=sm_80", f"-I{CUDA_DIR}", "-ptx", str(source), "-o",
                           str(tmp_path / "out.ptx")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr  # no warnings either


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_compiles_with_nvrtc_as_cupy_does(source):
    nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc")
    program = nvrtc.createProgram(source.read_text(), source.name, (), ())
    try:
        nvrtc.compileProgram(program, (*cupy_kernels.COMPILE_OPTIONS, f"-I{CUDA_DIR}", "--gpu-architecture=compute_80"))
    except Exception as exc:  # noqa: BLE001 - show NVRTC's log
        pytest.fail(f"{exc}\n{nvrtc.getProgramLog(program)}")
    ptx = nvrtc.getPTX(program)
    for name in KERNELS[source.stem]:
        assert f".entry {name}(" in (ptx.decode() if isinstance(ptx, bytes) else ptx)


# --- the kernels' source on the host, through the custom ops -------------------------------------------


@pytest.fixture(scope="module")
def host_libraries(tmp_path_factory) -> dict[str, ctypes.CDLL]:
    if CXX is None:
        pytest.skip("no C++ compiler for the host build of the kernels")
    out = tmp_path_factory.mktemp("host-kernels")
    libs = {}
    for source in SOURCES:
        lib = out / f"lib{source.stem}.so"
        subprocess.run([CXX, "-std=c++17", "-O1", "-Wall", "-Werror", "-shared", "-fPIC", "-x", "c++", "-DWRC_HOST",
                        f"-I{CUDA_DIR}", str(source), "-o", str(lib)], check=True, capture_output=True)
        libs[source.stem] = ctypes.CDLL(str(lib))
    return libs


@pytest.fixture
def host(host_libraries, monkeypatch):
    """CPU tensors run the custom ops on the host build of the kernels."""

    def run(kernel: str, n: int, args: tuple, device: torch.device) -> None:
        assert all(a.is_contiguous() and a.dtype in (torch.float32, torch.complex64) for a in args if isinstance(a, torch.Tensor))
        c_args = [ctypes.c_void_p(a.data_ptr()) if isinstance(a, torch.Tensor) else
                  ctypes.c_longlong(a) if isinstance(a, int) else ctypes.c_float(a) for a in args]
        getattr(host_libraries[kernel.split("_")[1]], kernel)(*c_args)

    monkeypatch.setitem(cupy_kernels.LAUNCHERS, "cpu", run)


def crandn(*shape: int) -> torch.Tensor:
    return torch.complex(torch.randn(*shape), torch.randn(*shape))


def grads(fn, inputs: list[torch.Tensor], seed: int = 1) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """fn(*inputs) and the gradients of a fixed random real functional of it."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(torch.view_as_real(out).shape if out.is_complex() else out.shape, generator=g)
    (torch.view_as_real(out) if out.is_complex() else out).mul(weight).sum().backward()
    return out.detach(), [t.grad for t in leaves]


def assert_close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    scale = b.abs().max().clamp_min(1.0)
    err = (a - b).abs().max() / scale
    assert err < 2e-5, f"{what}: max error {err:.2e} of max {scale:.3g}"


GEOMETRIES = [(1, 2, 4, 4, 2), (2, 3, 5, 6, 2), (2, 2, 3, 5, 3), (1, 3, 7, 4, 2)]  # B, C, h, w, s


@pytest.mark.parametrize("geom", GEOMETRIES, ids=str)
def test_official_kernel_equals_torch(host, geom):
    B, C, h, w, s = geom
    H, W = s * h, s * w
    wl = torch.rand(B, C, h, w) * 2
    wl[0, 0, 0, 0] = 0.0  # den below the floor: the clamp's zero gradient
    d = torch.rand(B, C, H, W) + 0.2
    d[0, 0, 1, 1] = 1e-4  # v below the floor
    mh = torch.rand(B, C, h, w) + 0.1
    mh[0, 0, 0, 0] = 5e-4
    inputs = [crandn(B, C, H, W // 2 + 1), crandn(B, C, h, w), wl, torch.rand(C, h, w), mh, d, crandn(C, H, W // 2 + 1)]
    with use_backend("torch"):
        ref, ref_grads = grads(fused.official_mix, inputs)
    out, out_grads = grads(lambda *t: cupy_kernels.official_mix(*t, fused.DEN_FLOOR), inputs)
    assert_close(out, ref, "x̂")
    for name, a, b in zip(["R̂", "Z", "W_L", "P", "M", "d", "K̂"], out_grads, ref_grads):
        assert_close(a, b, f"∂{name}")


@pytest.mark.parametrize("batched", [False, True])
def test_converse_kernel_equals_torch(host, batched):
    res = crandn(2, 3, 5, 4)
    den = torch.rand(*((2,) if batched else ()), 3, 5, 4) + 0.05
    ref, ref_grads = grads(lambda r, d: r / d, [res, den])
    out, out_grads = grads(cupy_kernels.converse_divide, [res, den])
    assert_close(out, ref, "X")
    for name, a, b in zip(["R", "den"], out_grads, ref_grads):
        assert_close(a, b, f"∂{name}")


@pytest.mark.parametrize("geom,ksize,start", [((2, 3, 4, 5, 2), (2, 2), (-1, -1)), ((1, 2, 3, 4, 3), (2, 3), (1, 0)),
                                              ((2, 2, 5, 3, 2), (1, 2), (0, 1))], ids=str)
def test_exact_kernel_equals_torch(host, geom, ksize, start):
    B, C, h, w, s = geom
    H, W = s * h, s * w
    inputs = [torch.randn(B, C, h, w), torch.randn(B, C, H, W), torch.rand(B, C, h, w) * 3, torch.rand(B, C, H, W) + 0.1,
              torch.randn(C, *ksize)]
    with use_backend("torch"):
        ref, ref_grads = grads(lambda *t: fused.exact_blocks(*t, s, start), inputs)
    out, out_grads = grads(lambda *t: cupy_kernels.exact_solve(*t, s, start[0] % H, start[1] % W), inputs)
    assert_close(out, ref, "x")
    for name, a, b in zip(["y", "x0", "W_L", "d", "kernel"], out_grads, ref_grads):
        assert_close(a, b, f"∂{name}")


# --- launching ---------------------------------------------------------------------------------------


def test_launch_refuses_a_device_without_kernels():
    with pytest.raises(WrcError, match="cannot run on cpu tensors"):
        cupy_kernels.converse_divide(crandn(1, 1, 2, 2), torch.ones(1, 2, 2))


# --- on a CUDA GPU: the solvers, CuPy against PyTorch ----------------------------------------------------

gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU and CuPy")


def solver_inputs(B: int, C: int, h: int, w: int, s: int, dtype: torch.dtype, kernel: int = 2):
    H, W = s * h, s * w
    cuda = torch.device("cuda")
    return dict(
        y=torch.randn(B, C, h, w, device=cuda, dtype=dtype), x0=torch.randn(B, C, H, W, device=cuda, dtype=dtype),
        w_low=torch.rand(B, C, h, w, device=cuda, dtype=dtype) * 2, w_high=torch.rand(B, C, H, W, device=cuda, dtype=dtype),
        kernel=torch.softmax(torch.randn(C, kernel * kernel, device=cuda), -1).reshape(C, kernel, kernel).to(dtype),
        lam=torch.rand(C, device=cuda, dtype=dtype) + 0.01,
    )


def both_backends(fn, inputs: dict[str, torch.Tensor]):
    results = []
    for name in ("torch", "cupy"):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
        with use_backend(name):
            out = fn(**leaves)
        out.float().mul(torch.linspace(-1, 1, out.numel(), device=out.device).reshape(out.shape)).sum().backward()
        results.append((out.detach().float(), {k: v.grad.float() for k, v in leaves.items()}))
    return results


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("solver,geom", list(itertools.product(["official", "exact", "converse"],
                                                                [(1, 4, 9, 7, 2), (3, 5, 6, 11, 2), (2, 3, 5, 4, 3)])))
def test_gpu_solvers_cupy_equals_torch(solver, geom, dtype):
    B, C, h, w, s = geom
    inputs = solver_inputs(B, C, h, w, s, dtype)
    if solver == "converse":
        inputs = {k: inputs[k] for k in ("y", "x0", "kernel", "lam")}
    fn = {"official": official, "exact": exact, "converse": converse}[solver]
    (ref, ref_grads), (out, out_grads) = both_backends(lambda **t: fn(**t, scale=s), inputs)
    tol = 2e-5 if dtype == torch.float32 else 1e-2  # low-precision outputs are rounded after the fp32 solve
    assert (out - ref).abs().max() <= tol * ref.abs().max().clamp_min(1)
    for name in ref_grads:
        assert (out_grads[name] - ref_grads[name]).abs().max() <= tol * ref_grads[name].abs().max().clamp_min(1), name


@gpu
def test_gpu_layer_picks_cupy_automatically(monkeypatch):
    monkeypatch.delenv(backend.ENV, raising=False)
    assert backend.select(torch.device("cuda"), torch.float32) == "cupy"
    C = 8
    args = (torch.randn(2, C, 13, 10, device="cuda"), torch.softmax(torch.randn(C, 4, device="cuda"), -1).reshape(C, 2, 2),
            torch.zeros(C, device="cuda"), 0.1 * torch.randn(C, C, 3, 3, device="cuda"), 0.1 * torch.randn(C, C, 3, 3, device="cuda"))
    auto = wrc_layer(*args)
    with use_backend("torch"):
        ref = wrc_layer(*args)
    assert (auto - ref).abs().max() <= 2e-5 * ref.abs().max()


# --- on a CUDA GPU: the other GPU-only path of wrcli.ops ---------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,size,scale,align", [((3, 208, 13, 10), None, 2, True), ((2, 384, 9, 7), (18, 14), None, False),
                                                     ((1, 32, 25, 30), (32, 36), None, False)])
def test_gpu_bilinear_equals_f_interpolate(shape, size, scale, align, dtype):
    from wrcli.ops.interpolate import bilinear

    x = torch.randn(shape, device="cuda", dtype=dtype)
    out = bilinear(x, size, scale_factor=scale, align_corners=align)
    ref = torch.nn.functional.interpolate(x, size=size, scale_factor=scale, mode="bilinear", align_corners=align)
    assert out.is_contiguous() and out.dtype == dtype
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6 * ref.abs().max().item())
