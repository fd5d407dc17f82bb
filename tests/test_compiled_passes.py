"""Under the ``compiled`` backend a learned upsampler's inference passes run through ``torch.compile`` whole
(issue 16): the same outputs as eager, training passes left eager, and ``wrc bench`` rows per backend."""

from __future__ import annotations

import shutil

import pytest
import torch

from wrcli.models import base, create_upsampler
from wrcli.models.blocks import fold_batchnorm
from wrcli.ops.backend import use_backend

from .test_large_outputs import trained_like

needs_compiler = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                    reason="torch.compile needs a C++ compiler on CPU")


def inputs(dtype: torch.dtype, h: int = 5, w: int = 7, channels: int = 16, patch: int = 14):
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, channels, h, w, generator=g, dtype=dtype)
    return feats, torch.randn(2, 3, patch * h, patch * w, generator=g, dtype=dtype)


def recording(monkeypatch) -> list:
    """Replace the compiler the passes use by one that records what it was asked to compile and runs eagerly."""
    asked = []

    def fake(fn, dynamic=None, any_batch=False):
        asked.append((fn, dynamic, any_batch))
        return fn

    monkeypatch.setattr(base, "compiled", fake)
    return asked


def test_inference_passes_are_compiled_under_the_compiled_backend_only(monkeypatch):
    asked = recording(monkeypatch)
    model = trained_like(create_upsampler("wrc", 16, 14))
    feats, image = inputs(torch.float32)
    with torch.inference_mode(), use_backend("torch"):
        model.upsample(feats, image, scale=4)
    assert asked == []
    with torch.inference_mode(), use_backend("compiled"):
        model.upsample(feats, image, scale=4)
        model.upsample(feats, image, scale=1)  # no pass to run: nothing to compile
    assert asked == [(base.run_pass, False, True)]  # one compiled pass function, specialised per size, not batch


def test_training_passes_stay_eager(monkeypatch):
    asked = recording(monkeypatch)
    model = create_upsampler("wrc", 16, 14).train()
    feats, image = inputs(torch.float32)
    with use_backend("compiled"):
        model.upsample(feats, image, scale=2).sum().backward()
    assert asked == [] and model.head.weight.grad is not None


@pytest.mark.slow
@needs_compiler
def test_a_compiled_pass_equals_the_eager_one_and_batches_share_a_compile():
    """As sessions run it (BatchNorm folded, channels-last, in tiles), in float64: the compiled code evaluates the
    same expressions, reassociated at most (~1e-15 relative); batches of 4, 3 and 2 (as `wrc extract` cuts them at
    shard ends) run through one compiled graph."""
    from torch._dynamo.utils import counters

    model = fold_batchnorm(trained_like(create_upsampler("wrc", 16, 14)).double()).to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(3)
    feats, image = torch.randn(4, 16, 5, 7, generator=g, dtype=torch.float64), torch.randn(4, 3, 70, 98, generator=g,
                                                                                          dtype=torch.float64)
    fast = base.compiled(base.run_pass, dynamic=False, any_batch=True)
    torch._dynamo.reset()  # forget graphs an earlier test compiled for these shapes (the compiled function is shared)
    graphs = counters["stats"]["unique_graphs"]
    with torch.inference_mode():
        for batch in (4, 3, 2):
            eager = base.run_pass(model, feats[:batch], image[:batch], 8)
            assert eager.shape == (batch, 16, 10, 14)
            torch.testing.assert_close(fast(model, feats[:batch], image[:batch], 8), eager, rtol=1e-10, atol=1e-10)
    assert counters["stats"]["unique_graphs"] - graphs == 1
