"""The contrast metric and the affinity term (wrcli.training.affinity), warm starts (--init), the samples a run
saw, and the contrast that validation reports: against dense oracles and hand-computed cases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from wrcli.backbones import load_backbone
from wrcli.errors import WrcError
from wrcli.models import create_upsampler, load_upsampler
from wrcli.train import train
from wrcli.training import builder, data
from wrcli.training.affinity import affinity, affinity_loss, contrast_loss, mean_pairwise_cosine
from wrcli.training.samples import CachedSamples

from .test_train import ARCH, TINY, dense_contrast, options, setup, weights_of  # noqa: F401 - setup is a fixture


def test_contrast_hand_computed_cases():
    same = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1).expand(1, 3, 2, 3)
    assert mean_pairwise_cosine(same).item() == pytest.approx(1.0, abs=1e-6)  # every pixel along one direction
    pair = torch.tensor([[1.0, 0.0], [0.0, 5.0]]).view(1, 2, 1, 2)  # two orthogonal pixels
    assert mean_pairwise_cosine(pair).item() == pytest.approx(0.0, abs=1e-7)
    opposite = torch.tensor([[2.0, -1.0], [0.0, 0.0]]).view(1, 2, 1, 2)
    assert mean_pairwise_cosine(opposite).item() == pytest.approx(-1.0, abs=1e-6)
    three = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]).view(1, 2, 1, 3)  # cosines 0, 1/√2, 1/√2
    assert mean_pairwise_cosine(three).item() == pytest.approx(2 / math.sqrt(2) / 3, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2 pixels"):
        mean_pairwise_cosine(torch.ones(1, 3, 1, 1))


def test_contrast_equals_the_dense_pairwise_mean():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 16, 5, 7, generator=g) + torch.randn(1, 16, 1, 1, generator=g)  # a shared offset
    assert torch.allclose(mean_pairwise_cosine(feats).double(), dense_contrast(feats), atol=1e-6)
    # invariant to each pixel's scale (a cosine), not to a common offset
    scaled = feats * torch.rand(3, 1, 5, 7, generator=g).add(0.1)
    assert torch.allclose(mean_pairwise_cosine(scaled), mean_pairwise_cosine(feats), atol=1e-6)
    assert mean_pairwise_cosine(feats + 10 * torch.ones(1, 16, 1, 1)).min() > 0.95


def test_affinity_loss_against_the_dense_matrices():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(2, 8, 3, 4, generator=g), torch.randn(2, 8, 3, 4, generator=g)
    p, t = (F.normalize(x.flatten(2), dim=1) for x in (pred, target))
    cos_p = torch.einsum("bci,bcj->bij", p, p)
    assert torch.allclose(affinity(pred), cos_p, atol=1e-6)
    expected = (cos_p - torch.einsum("bci,bcj->bij", t, t)).square().mean()
    assert affinity_loss(pred, target).item() == pytest.approx(expected.item(), rel=1e-5)
    assert affinity_loss(target * 3, target).item() == pytest.approx(0.0, abs=1e-10)  # same directions: no loss
    with pytest.raises(ValueError, match="same grid"):
        affinity_loss(pred, target[..., :3])


def test_contrast_loss_hand_computed():
    pair = torch.tensor([[1.0, 0.0], [0.0, 5.0]]).view(1, 2, 1, 2)  # contrast 0
    same = torch.tensor([[1.0, 2.0], [1.0, 2.0]]).view(1, 2, 1, 2)  # contrast 1
    assert contrast_loss(pair, same).item() == pytest.approx(1.0, abs=1e-6)
    both = torch.cat([pair, same])
    assert contrast_loss(both, torch.cat([same, same])).item() == pytest.approx(0.5, abs=1e-6)  # mean over maps
    # any pixel order, and any grid: only the spread of directions counts
    assert contrast_loss(pair.flip(-1), torch.tensor([[0.0, 3.0, 0.0], [2.0, 0.0, 2.0]]).view(1, 2, 1, 3)).item() \
        == pytest.approx((0 - 1 / 3) ** 2, abs=1e-6)
    with pytest.raises(ValueError, match="as many maps"):
        contrast_loss(both, pair)


def test_affinity_loss_gradient():
    g = torch.Generator().manual_seed(2)
    pred = torch.randn(1, 3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(1, 3, 2, 2, generator=g, dtype=torch.float64)
    # affinity() computes in float32; check the analytic gradient of the float64 formula it implements
    def loss(x):
        u = F.normalize(x.flatten(2), dim=1)
        v = F.normalize(target.flatten(2), dim=1)
        return (u.transpose(1, 2) @ u - v.transpose(1, 2) @ v).square().mean()

    assert torch.autograd.gradcheck(loss, (pred,))
    pred32 = pred.detach().float().requires_grad_()
    affinity_loss(pred32, target.float()).backward()
    reference = torch.autograd.grad(loss(pred), pred)[0]
    assert torch.allclose(pred32.grad.double(), reference, atol=1e-5)


def test_samples_seen_match_what_the_cached_dataset_reads(monkeypatch):
    read = []
    monkeypatch.setattr("wrcli.training.samples.read_train_entry",
                        lambda path, variant: read.append((path, variant)) or {"lr": torch.zeros(3, 4, 4, dtype=torch.uint8)})
    monkeypatch.setattr("wrcli.training.samples.recipe.augment", lambda view, seed, pipeline: view)
    count, batch, seed, steps, variants = 7, 2, 3, 11, 3
    dataset = CachedSamples([Path(f"e{i}") for i in range(count)], variants)
    for rank in range(2):
        for items in data.StepSampler(count, batch, seed, 0, steps, rank, 2):
            for item in items:
                dataset[item]
    seen = data.samples_seen(count, batch, seed, steps, world=2, variants=variants)
    assert seen == {"draws": steps * batch * 2, "distinct": len(set(read))}
    assert len(read) == seen["draws"] and seen["distinct"] <= count * variants
    assert data.samples_seen(count, batch, seed, steps, world=2) == {"draws": 44, "distinct": 44}  # fresh crops
    # one crop set per image: every image once per epoch (3 images per step → 2 steps an epoch, 6 of 7 images)
    assert data.samples_seen(7, 3, 0, 2, variants=1) == {"draws": 6, "distinct": 6}
    assert data.samples_seen(7, 3, 0, 20, variants=1)["distinct"] == 7


@pytest.mark.slow
def test_the_affinity_term_is_logged_and_weighted(setup, tmp_path):
    runs = {}
    for weights in ((0.0, 0.0), (2.0, 0.0), (0.0, 50.0)):
        out = tmp_path / f"w{weights}.safetensors"
        train(setup["images"], str(out), options(setup, steps=3, affinity_weight=weights[0], contrast_weight=weights[1],
                                                 precision="fp32"))
        logs = [json.loads(line) for line in Path(f"{out}.log.jsonl").read_text().splitlines()]
        steps = [r for r in logs if "loss" in r]
        for r in steps:
            assert r["affinity"] > 0 and r["contrast"] > 0
            assert r["loss"] == pytest.approx(r["local"] + r["down"] + r["aug"] + weights[0] * r["affinity"]
                                              + weights[1] * r["contrast"], rel=1e-5)
        runs[weights] = steps, weights_of(out), load_upsampler(out).provenance
    plain, by_affinity, by_contrast = runs.values()
    for term in ("affinity", "contrast"):  # the same first step, whichever term is weighted
        assert [r[0][0][term] for r in runs.values()] == pytest.approx([plain[0][0][term]] * 3, rel=1e-6)
    for other in (by_affinity, by_contrast):  # each term has a gradient
        assert any(not torch.equal(a, other[1][k]) for k, a in plain[1].items())
    assert "affinity" not in plain[2]["objective"] and "contrast" not in plain[2]["objective"]
    assert "2 × affinity" in by_affinity[2]["objective"] and "50 × contrast" in by_contrast[2]["objective"]
    assert by_affinity[2]["samples"] == {"draws": 3 * 2, "distinct": 3 * 2}


@pytest.mark.slow
def test_init_starts_from_a_checkpoint_and_is_recorded(setup, tmp_path):
    first = tmp_path / "first.safetensors"
    train(setup["images"], str(first), options(setup, steps=2, recipe="wrcli", precision="fp32"))
    backbone = load_backbone(ARCH, setup["weights"]["tiny"], **TINY)
    model = create_upsampler("wrc", backbone.channels, backbone.patch_size, skip=True)
    record = builder._initialise(model, str(first), backbone)
    loaded = load_upsampler(first, backbone)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    assert record["steps"] == 2 and record["file"] == "first.safetensors" and len(record["sha256"]) == 64
    # an exact-solver run may start from it (the same parameters); a run without the skip may not
    exact = create_upsampler("wrc-exact", backbone.channels, backbone.patch_size, skip=True)
    builder._initialise(exact, str(first), backbone)
    with pytest.raises(WrcError, match=r"--init .*first.safetensors is a 'wrc' upsampler with options .*skip.*True"):
        builder._initialise(create_upsampler("wrc", backbone.channels, backbone.patch_size, skip=False), str(first), backbone)
    with pytest.raises(WrcError, match="no trained checkpoint of that name"):
        builder._initialise(model, "wrc-converse", backbone)  # nothing ships under that name
    with pytest.raises(WrcError, match=r"wrc_dinov2_vits14.safetensors \(384 channels\) disagrees .* \(64 channels\)"):
        builder._initialise(model, "wrc", backbone)  # the shipped one is for ViT-S/14's 384 channels

    second = tmp_path / "second.safetensors"
    opts = options(setup, steps=2, recipe="wrcli", precision="fp32", init=str(first))
    train(setup["images"], str(second), opts)
    assert load_upsampler(second).provenance["init"] == record
    # the run's fingerprint holds the starting weights: a resume from other weights is refused
    train(setup["images"], str(first), options(setup, steps=3, recipe="wrcli", precision="fp32", overwrite=True))
    with pytest.raises(WrcError, match=r"cannot resume .*differ \(init: "):
        train(setup["images"], str(second), opts.__class__(**{**opts.as_dict(), "resume": True, "steps": 2}))


def test_init_that_does_not_exist_is_refused_before_loading(setup, tmp_path):
    with pytest.raises(WrcError, match=r"--init: checkpoint not found: .*nothing.safetensors"):
        train(setup["images"], str(tmp_path / "m.safetensors"), options(setup, init=str(tmp_path / "nothing.safetensors")))
    assert not list(tmp_path.iterdir())
