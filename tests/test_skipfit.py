"""The skip map (WRCUpsampler skip_map=True) and its closed-form fit (wrcli.training.skipfit): the normal equations
against a dense least-squares oracle built from the model's own outputs, the fitted objective against the model's
outputs after the fit, the zero map's outputs, checkpoints, and the end-of-training step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wrcli.errors import WrcError
from wrcli.models import create_upsampler, load_upsampler, save_upsampler
from wrcli.training import skipfit
from wrcli.training.options import TrainOptions
from wrcli.training.recipe import crop_windows

C, P = 16, 14  # channels, patch


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights and BatchNorm statistics everywhere (the zero-initialised head and map included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.2)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g, dtype=b.dtype) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g, dtype=b.dtype) * 0.1)
    return model


def batches(count: int, batch: int = 2, h: int = 4, crops: int = 2, seed: int = 1) -> list[tuple[torch.Tensor, ...]]:
    """Random (features (B,C,h,w), guidance (B,3,14h,14w), down targets (B,C,2h,2w), crop features (B·K,C,h,w),
    offsets (B,K,2), multiples of 2·patch within the 2h×2w output)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        offsets = torch.randint(0, h // 2 + 1, (batch, crops, 2), generator=g) * 2 * P
        out.append((torch.randn(batch, C, h, h, generator=g, dtype=torch.float64),
                    torch.randn(batch, 3, P * h, P * h, generator=g, dtype=torch.float64),
                    torch.randn(batch, C, 2 * h, 2 * h, generator=g, dtype=torch.float64),
                    torch.randn(batch * crops, C, h, h, generator=g, dtype=torch.float64), offsets))
    return out


@pytest.fixture
def model():
    return randomise(create_upsampler("wrc", C, P, skip=True, skip_map=True)).double().eval()


def weighted_rows(model, data):
    """The oracle's rows: for every output pixel of the down term and of the crop windows, √w·[u; 1] and √w·r, with
    r = target − (output without the map), computed by running the model with its map zeroed."""
    saved = skipfit.theta_of(model)
    skipfit.set_theta(model, torch.zeros_like(saved))
    rows, rhs = [], []
    with torch.no_grad():
        for feats, image, down, crop_feats, offsets in data:
            rest = model(feats, image)
            u = F.interpolate(feats, scale_factor=2, mode="bilinear", align_corners=False)
            for pred_u, pred_rest, target, weight in (
                (u, rest, down, 1.0 / (down.shape[-2] * down.shape[-1])),
                (crop_windows(u, offsets, P), crop_windows(rest, offsets, P), crop_feats,
                 1.0 / (offsets.shape[1] * crop_feats.shape[-2] * crop_feats.shape[-1])),
            ):
                z = skipfit.design(pred_u)
                r = (target - pred_rest).permute(0, 2, 3, 1).reshape(-1, C)
                rows.append(weight**0.5 * z)
                rhs.append(weight**0.5 * r)
    skipfit.set_theta(model, saved)
    return torch.cat(rows), torch.cat(rhs)


def test_a_zero_map_leaves_the_outputs_and_a_map_is_an_affine_channel_map_before_the_bilinear_skip(model):
    feats, image = batches(1)[0][:2]
    plain = create_upsampler("wrc", C, P, skip=True).double().eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("skip_map.")})
    added = skipfit.with_skip_map(plain)
    assert added.options["skip_map"] is True and plain.options["skip_map"] is False
    with torch.no_grad():
        torch.testing.assert_close(added(feats, image), plain(feats, image), rtol=0, atol=0)
        a, b = model.skip_map.weight[:, :, 0, 0], model.skip_map.bias
        mapped_high = F.interpolate(feats, scale_factor=2, mode="bilinear", align_corners=False)
        mapped_high = torch.einsum("ji,bihw->bjhw", a, mapped_high) + b[None, :, None, None]
        # the map applied after the interpolation, on the 2× grid: the same outputs (the weights sum to one)
        torch.testing.assert_close(model(feats, image), plain(feats, image) + mapped_high, rtol=0, atol=1e-12)


def test_skip_map_needs_the_skip():
    with pytest.raises(WrcError, match="skip_map=True needs skip=True"):
        create_upsampler("wrc", C, P, skip_map=True)
    with pytest.raises(WrcError, match="skip_map needs skip"):
        TrainOptions(recipe="published", skip_map=True)
    with pytest.raises(ValueError, match="no bilinear skip"):
        skipfit.with_skip_map(create_upsampler("wrc", C, P))
    with pytest.raises(ValueError, match="has no skip map"):
        skipfit.theta_of(create_upsampler("wrc", C, P, skip=True))


@pytest.mark.parametrize("ridge", [0.0, 0.5])
def test_the_fit_is_the_ridge_least_squares_solution(model, ridge):
    data = batches(3)
    normal = skipfit.normal_equations(model, data, patch=P)
    assert normal.samples == 6 and normal.pixels == {"down": 6 * 64, "local": 12 * 16}
    rows, rhs = weighted_rows(model, data)
    n = normal.samples
    oracle_rows = torch.cat([rows, (ridge * n) ** 0.5 * torch.eye(C + 1, dtype=torch.float64)])
    oracle_rhs = torch.cat([rhs, torch.zeros(C + 1, C, dtype=torch.float64)])
    oracle = torch.linalg.lstsq(oracle_rows, oracle_rhs, driver="gelsd").solution
    theta = skipfit.solve(normal, ridge)
    torch.testing.assert_close(theta, oracle, rtol=0, atol=1e-9)
    assert normal.objective(theta) == pytest.approx((rows @ theta - rhs).square().sum().item(), rel=1e-10)
    with pytest.raises(ValueError, match="ridge"):
        skipfit.solve(normal, -1.0)


def test_fit_sets_the_map_and_the_objective_is_that_of_the_model_outputs(model):
    """After fit, Σ w‖target − output‖² over the same samples, from the model's own outputs, is the reported
    objective (and the map already in place before the fit does not change the solution)."""
    data = batches(2)
    record = skipfit.fit(model, data, patch=P, ridge=0.1)
    assert record["objective_after"] < record["objective_before"]
    total = 0.0
    with torch.no_grad():
        for feats, image, down, crop_feats, offsets in data:
            out = model(feats, image)
            total += (down - out).square().sum().item() / (down.shape[-2] * down.shape[-1])
            total += (crop_feats - crop_windows(out, offsets, P)).square().sum().item() / (
                offsets.shape[1] * crop_feats.shape[-2] * crop_feats.shape[-1])
    assert total / record["samples"] == pytest.approx(record["objective_after"], rel=1e-9)
    first = skipfit.theta_of(model)
    skipfit.fit(model, data, patch=P, ridge=0.1)  # fitted again from the fitted map: the same optimum
    torch.testing.assert_close(skipfit.theta_of(model), first, rtol=0, atol=1e-9)
    assert model.training is False


def test_no_batches_leave_the_map(model):
    before = skipfit.theta_of(model)
    record = skipfit.fit(model.train(), [], patch=P, ridge=1.0)
    assert record["samples"] == 0 and "objective_after" not in record
    assert torch.equal(skipfit.theta_of(model), before) and model.training


def test_a_checkpoint_keeps_the_map(model, tmp_path):
    path = save_upsampler(model.float(), tmp_path / "m.safetensors")
    loaded = load_upsampler(path)
    assert loaded.options["skip_map"] is True
    torch.testing.assert_close(skipfit.theta_of(loaded), skipfit.theta_of(model), rtol=0, atol=0)
    feats, image = (t.float() for t in batches(1)[0][:2])
    with torch.no_grad():
        torch.testing.assert_close(loaded(feats, image), model(feats, image))
