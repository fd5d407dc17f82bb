"""wrc train: the loss and crop geometry, the recipes, learning, exact resume, the feature cache, validation,
failures, DDP, the command line.

Training runs on a tiny random-init ViT (2 blocks, 64 channels, weights saved to a file so every run and every
check sees the same backbone) at size 112 (56-px low-res view, 4×4 tokens → 8×8), with the published recipe
unless a test says otherwise (the behaviour these tests pinned before the wrcli recipe became the default).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import wrcli.train
from wrcli import cli
from wrcli.backbones import Backbone, load_backbone
from wrcli.data.images import ResizePolicy, load_image
from wrcli.defaults import TRAIN_RECIPES
from wrcli.errors import WrcError
from wrcli.files import TMP_TAG
from wrcli.models import load_upsampler
from wrcli.train import TrainingStopped, TrainOptions, summary_line, train
from wrcli.training import builder, cosine_mse, crop_offsets, crop_views, crop_windows, lr_factor
from wrcli.training.recipe import crop_positions

from .conftest import photos
from .test_extract import run_cli

ARCH = "vit_small_patch14_dinov2"
TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 112}
SIZE = 112


def _photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth colour gradients, a few rectangles and mild noise: some structure to upsample."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([np.sin(6 * x + rng.uniform(0, 6)), np.cos(5 * y + rng.uniform(0, 6)), np.sin(4 * (x + y))], -1)
    img = (img + 1) * 100
    for _ in range(4):
        top, left = rng.integers(0, h - 10), rng.integers(0, w - 10)
        img[top : top + rng.integers(5, 30), left : left + rng.integers(5, 30)] = rng.uniform(0, 255, 3)
    return (img + rng.normal(0, 5, img.shape)).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    for folder, count in (("images", 6), ("val", 2)):
        (root / folder).mkdir()
        for i in range(count):
            h, w = rng.integers(80, 160, 2)
            Image.fromarray(_photo(rng, h, w)).save(root / folder / f"{folder}{i}.{'png' if i % 2 else 'jpg'}")
    weights = {}
    for name, seed, kwargs in (("tiny", 0, TINY), ("other", 1, {**TINY, "depth": 1})):
        torch.manual_seed(seed)
        backbone = load_backbone(ARCH, pretrained=False, **kwargs)
        save_file(backbone.model.state_dict(), root / f"{name}.safetensors")
        weights[name] = str(root / f"{name}.safetensors")
    return {"root": root, "images": str(root / "images"), "val": str(root / "val"), "weights": weights}


def options(setup: dict, **changes) -> TrainOptions:
    """Quick settings on the tiny ViT: the published recipe at lr 1e-3, unless ``changes`` say otherwise."""
    base = {
        "recipe": "published", "steps": 6, "batch_size": 2, "lr": 1e-3, "warmup": 2, "size": SIZE, "backbone": ARCH,
        "backbone_weights": setup["weights"]["tiny"], "backbone_kwargs": TINY, "workers": 0, "val": setup["val"],
        "val_every": 0, "log_every": 1, "checkpoint_every": 100, "progress": False, "bn_batches": 2,
    }
    return TrainOptions(**{**base, **changes})


def weights_of(path: str | Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:5]}"


# ---------------------------------------------------------------------------------------------------
# pure functions
# ---------------------------------------------------------------------------------------------------
def test_cosine_mse_hand_computed():
    # pixel 1: prediction = target → no loss; pixel 2: orthogonal, target (0,0,2) has min 0, max 2.
    target = torch.tensor([[[[1.0, 0.0]], [[2.0, 0.0]], [[3.0, 2.0]]]])  # (1,3,1,2)
    pred = torch.tensor([[[[1.0, 2.0]], [[2.0, 0.0]], [[3.0, 0.0]]]])
    span = 2 + 1e-6
    expected = (0 + 1) / 2 + ((2 / span) ** 2 + (2 / span) ** 2) / 6
    assert cosine_mse(pred, target).item() == pytest.approx(expected, rel=1e-6)
    assert cosine_mse(target, target).item() == pytest.approx(0, abs=1e-6)
    # the plain MSE: squared errors 0,0,0 and 4,0,4 over 6 values
    assert cosine_mse(pred, target, normalise=False).item() == pytest.approx((0 + 1) / 2 + 8 / 6, rel=1e-6)


def test_cosine_mse_matches_torch_losses():
    """Against the loss built from torch.nn.CosineEmbeddingLoss and MSELoss on target-normalised maps."""
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 5, 3, 4, generator=g), torch.randn(2, 5, 3, 4, generator=g)
    p, t = (x.permute(0, 2, 3, 1).reshape(-1, 5) for x in (pred, target))
    lo, hi = t.min(1, keepdim=True).values, t.max(1, keepdim=True).values
    ref = torch.nn.CosineEmbeddingLoss()(p, t, torch.ones(len(p))) + torch.nn.MSELoss()(
        (p - lo) / (hi - lo + 1e-6), (t - lo) / (hi - lo + 1e-6)
    )
    assert cosine_mse(pred, target).item() == pytest.approx(ref.item(), rel=1e-5)


def test_crop_offsets_are_patch_aligned():
    assert crop_positions(448, 14) == 9  # offsets 0, 28, ..., 224
    offsets = crop_offsets(torch.Generator().manual_seed(0), 1000, 448, 14)
    assert offsets.shape == (1000, 2) and (offsets % 28 == 0).all()
    assert offsets.min() == 0 and offsets.max() == 224


def test_crop_targets_line_up_with_output_windows():
    """A pixel-local 'backbone' (14×14 average pooling): the features of each crop must equal the window of
    the full image's feature map that crop_windows picks, exactly."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    offsets = torch.stack([crop_offsets(g, 3, SIZE, 14) for _ in range(2)])  # (B,K,2)
    crops = torch.cat([crop_views(img, o) for img, o in zip(images, offsets)])  # (B·K,3,56,56)
    feature_map = F.avg_pool2d(images.double(), 14)  # (B,3,8,8): the 2× grid of a 56-px view
    assert torch.equal(crop_windows(feature_map, offsets, 14), F.avg_pool2d(crops.double(), 14))
    top, left = offsets[1, 2].tolist()
    assert torch.equal(crop_windows(feature_map, offsets, 14)[5], feature_map[1, :, top // 14 : top // 14 + 4, left // 14 : left // 14 + 4])


def test_lr_schedule_warms_up_then_decays():
    factors = [lr_factor(s, 100, 10) for s in range(100)]
    assert factors[:3] == pytest.approx([0.1, 0.2, 0.3]) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and 0 < factors[-1] < 0.01
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert lr_factor(0, 5, 0) == 1.0


# ---------------------------------------------------------------------------------------------------
# recipes and options
# ---------------------------------------------------------------------------------------------------
def test_the_defaults_are_the_recipe_of_the_shipped_checkpoint():
    opts = TrainOptions()
    assert opts.recipe == "wrcli" and {k: getattr(opts, k) for k in TRAIN_RECIPES["wrcli"]} == TRAIN_RECIPES["wrcli"]
    # the model card's command (wrcli/checkpoints/wrc_dinov2_vits14.md): --lr 1e-3 --skip --mse raw, the rest
    # wrc train's defaults (batch 4, weight decay 1e-5, warm-up 1000 capped at a tenth of the steps, weights 1)
    assert (opts.lr, opts.skip, opts.mse) == (1e-3, True, "raw")
    assert (opts.batch_size, opts.weight_decay, opts.warmup, opts.down_weight, opts.aug_weight) == (4, 1e-5, 1000, 1, 1)


def test_the_published_recipe_and_options_that_override_a_recipe():
    published = TrainOptions(recipe="published")
    assert (published.lr, published.skip, published.mse) == (2e-4, False, "range")  # the authors' config
    mixed = TrainOptions(recipe="published", skip=True, lr=5e-4)
    assert (mixed.lr, mixed.skip, mixed.mse) == (5e-4, True, "range")
    assert (TrainOptions(skip=False).skip, TrainOptions(mse="range").mse) == (False, "range")
    assert mixed.as_dict()["recipe"] == "published" and mixed.as_dict()["skip"] is True
    with pytest.raises(WrcError, match="unknown recipe 'paper'; use one of wrcli, published"):
        TrainOptions(recipe="paper")
    with pytest.raises(WrcError, match="unknown --mse"):
        TrainOptions(mse="l1")
    with pytest.raises(WrcError, match="steps=0"):
        TrainOptions(steps=0)


# ---------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_training_reduces_the_loss_and_writes_a_loadable_model(setup, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="wrcli")
    out = tmp_path / "wrc.safetensors"
    result = train(setup["images"], str(out), options(setup, steps=30, warmup=3, progress=True, log_every=5, val_every=10))
    logs = [json.loads(line) for line in (tmp_path / "wrc.safetensors.log.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "loss" in r]
    assert [r["step"] for r in steps] == [5, 10, 15, 20, 25, 30]
    assert set(steps[0]) == {"step", "loss", "local", "down", "aug", "affinity", "contrast", "lr", "images_per_s",
                             "elapsed"}
    assert steps[-1]["loss"] < 0.8 * steps[0]["loss"], [r["loss"] for r in steps]
    assert result["completed"] and result["steps"] == 30 and result["images"] == 6 and result["skipped"] == 0
    assert set(result["losses"]) == {"loss", "local", "down", "aug", "affinity", "contrast"}
    assert [r["step"] for r in logs if "validation" in r] == [10, 20, 30]
    assert logs[-1]["validation"] == result["validation"]
    assert "loss" in caplog.text and "bilinear cos" in caplog.text
    assert summary_line(result) == f"wrote {out} (30 steps, validation " + ", ".join(
        f"{t} cos {result['validation']['model'][t]['cos']:.4f} vs bilinear {result['validation']['bilinear'][t]['cos']:.4f}"
        for t in ("full", "tiles")) + ")"

    model = load_upsampler(out)
    assert model.name == "wrc" and model.channels == 64
    prov = model.provenance
    assert prov["recipe"] == "published" and prov["options"]["recipe"] == "published"
    assert prov["steps"] == 30 and prov["data"]["images"] == 6 and prov["data"]["validation"]["images"] == 2
    assert prov["validation"] == result["validation"] and prov["options"]["lr"] == 1e-3
    assert {"torch", "timm", "device", "seconds", "command"} <= set(prov)


@pytest.mark.slow
def test_the_wrcli_recipe_trains_with_skip_and_raw_mse_and_is_recorded(setup, tmp_path):
    out = tmp_path / "skip.safetensors"
    result = train(setup["images"], str(out), options(setup, steps=4, recipe="wrcli"))
    assert result["completed"] and all(v > 0 for v in result["losses"].values() if v is not None)
    model = load_upsampler(out, load_backbone(ARCH, setup["weights"]["tiny"], **TINY))
    assert model.skip and model.config["options"]["skip"] is True
    assert model.provenance["recipe"] == "wrcli" and model.provenance["options"]["mse"] == "raw"
    assert model.head.weight.abs().sum() > 0  # the zero-initialised head has learned a correction


@pytest.mark.slow
@pytest.mark.parametrize("cached", [False, True], ids=["live", "cached"])
def test_the_final_batchnorm_statistics_come_from_clean_batches(setup, tmp_path, cached):
    """Same run with and without the re-estimation: the same learned weights, other BatchNorm statistics (the
    training state keeps training's running averages, so a longer run continues from those), both recorded."""
    cache = str(tmp_path / "cache") if cached else None
    kept, fresh = tmp_path / "kept.safetensors", tmp_path / "fresh.safetensors"
    train(setup["images"], str(kept), options(setup, steps=3, cache=cache, bn_batches=0))
    train(setup["images"], str(fresh), options(setup, steps=3, cache=cache, bn_batches=5))
    a, b = weights_of(kept), weights_of(fresh)
    stats = [k for k in a if k.endswith(("running_mean", "running_var"))]
    assert stats and all(not torch.equal(a[k], b[k]) for k in stats)
    assert_bitwise_equal({k: v for k, v in a.items() if k not in stats and not k.endswith("num_batches_tracked")},
                         {k: v for k, v in b.items() if k not in stats and not k.endswith("num_batches_tracked")})
    state = torch.load(f"{fresh}.state.pt", weights_only=True)["model"]
    assert all(torch.equal(state[k], a[k]) for k in stats)
    assert load_upsampler(kept).provenance["batchnorm"] is None
    assert load_upsampler(fresh).provenance["batchnorm"] == {"reestimated_over_batches": 5, "batch": 2,
                                                           "inputs": "clean training samples"}


@pytest.mark.slow
@pytest.mark.parametrize("cached", [False, True], ids=["live", "cached"])
def test_a_skip_map_starts_from_a_checkpoint_without_one_and_is_fitted_at_the_end(setup, tmp_path, cached):
    """--skip-map from a checkpoint without a map (its map starts at zero); with and without the closed-form fit
    at the end: the same weights but the map's, the fit recorded (wrcli.training.skipfit has the maths)."""
    cache = str(tmp_path / "cache") if cached else None
    plain, learned, fitted = (tmp_path / f"{n}.safetensors" for n in ("plain", "learned", "fitted"))
    train(setup["images"], str(plain), options(setup, steps=2, skip=True, cache=cache))
    for out, fit_batches in ((learned, 0), (fitted, 3)):
        train(setup["images"], str(out), options(setup, steps=2, skip=True, skip_map=True, init=str(plain),
                                                 cache=cache, fit_batches=fit_batches))
    a, b = weights_of(learned), weights_of(fitted)
    maps = sorted(k for k in a if k.startswith("skip_map."))
    assert maps == ["skip_map.bias", "skip_map.weight"] and weights_of(plain).keys() == a.keys() - set(maps)
    assert_bitwise_equal({k: v for k, v in a.items() if k not in maps}, {k: v for k, v in b.items() if k not in maps})
    assert not torch.equal(a["skip_map.weight"], b["skip_map.weight"]) and a["skip_map.weight"].abs().sum() > 0
    first, second = load_upsampler(learned), load_upsampler(fitted)
    assert first.options["skip_map"] and first.provenance["init"]["file"] == "plain.safetensors"
    assert first.provenance["skip_fit"] is None
    record = second.provenance["skip_fit"]
    assert record["samples"] == 3 * 2 and record["batches"] == 3 and record["ridge"] == 1.0
    assert record["objective_after"] < record["objective_before"]


@pytest.mark.slow
@pytest.mark.parametrize("cached", [False, True], ids=["live", "cached"])
def test_resume_equals_uninterrupted(setup, tmp_path, cached):
    cache = str(tmp_path / "cache") if cached else None
    whole = tmp_path / "whole.safetensors"
    train(setup["images"], str(whole), options(setup, cache=cache, workers=2))
    parts = tmp_path / "parts.safetensors"
    first = train(setup["images"], str(parts), options(setup, cache=cache, stop_after=3))
    assert not first["completed"] and first["steps"] == 3 and not parts.exists()
    second = train(setup["images"], str(parts), options(setup, cache=cache, resume=True))
    assert second["completed"] and second["steps"] == 6
    assert_bitwise_equal(weights_of(whole), weights_of(parts))
    logged = [json.loads(x)["step"] for x in (tmp_path / "parts.safetensors.log.jsonl").read_text().splitlines()]
    assert [s for s in logged] == [1, 2, 3, 4, 5, 6, 6]  # the last line is the final validation


@pytest.mark.slow
def test_ctrl_c_saves_the_state_and_resume_finishes_identically(setup, tmp_path):
    out = tmp_path / "m.safetensors"
    log = tmp_path / "m.safetensors.log.jsonl"
    opts = options(setup, steps=8)

    def interrupt_when_training() -> None:
        while not (log.exists() and len(log.read_text().splitlines()) >= 2):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_training, daemon=True).start()
    with pytest.raises(TrainingStopped) as stop:  # a KeyboardInterrupt that says where the state is
        train(setup["images"], str(out), opts)
    stopped = torch.load(f"{out}.state.pt", weights_only=True)["step"]
    assert 2 <= stopped < 8
    assert str(stop.value) == f"stopped at step {stopped}/8; the training state is in {out}.state.pt"
    train(setup["images"], str(out), replace(opts, resume=True))
    whole = tmp_path / "whole.safetensors"
    train(setup["images"], str(whole), opts)
    assert_bitwise_equal(weights_of(whole), weights_of(out))


@pytest.mark.slow
def test_state_file_loads_weights_only_and_refuses_changed_options(setup, tmp_path):
    out = tmp_path / "m.safetensors"
    train(setup["images"], str(out), options(setup, stop_after=2))
    state = torch.load(f"{out}.state.pt", weights_only=True)
    assert state["step"] == 2 and state["options"]["lr"] == 1e-3
    assert {"model", "optimizer", "scheduler", "rng", "fingerprint", "seconds"} <= set(state)
    assert set(state["rng"]) == {"python", "numpy", "torch", "cuda"}
    for change in ({"lr": 5e-4}, {"solver": "exact"}, {"batch_size": 3}, {"seed": 1}):
        with pytest.raises(WrcError, match=next(iter(change))) as err:
            train(setup["images"], str(out), options(setup, resume=True, **change))
        assert "\n" not in str(err.value)
    fewer = [str(p) for p in sorted(Path(setup["images"]).iterdir())[:5]]
    with pytest.raises(WrcError, match="data_sha256"):
        train(fewer, str(out), options(setup, resume=True))
    with pytest.raises(WrcError, match="backbone"):
        train(setup["images"], str(out), options(setup, resume=True, backbone_weights=setup["weights"]["other"],
                                                 backbone_kwargs={**TINY, "depth": 1}))
    with pytest.raises(WrcError, match="skip: False then, True now"):  # another recipe is other settings
        train(setup["images"], str(out), options(setup, resume=True, recipe="wrcli"))
    # options that do not change the result are free to change, and so is the recipe's name when the run's
    # settings are given explicitly (a run made before the wrcli recipe was the default resumes that way)
    result = train(setup["images"], str(out), options(setup, resume=True, workers=1, log_every=3, stop_after=3,
                                                     recipe="wrcli", skip=False, mse="range"))
    assert result["steps"] == 3 and summary_line(result) == f"stopped at step 3; the training state is in {out}.state.pt"


@pytest.mark.slow
def test_cached_training_never_calls_the_backbone_and_stale_entries_are_rebuilt(setup, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    train(setup["images"], str(tmp_path / "a.safetensors"), options(setup, cache=str(cache), steps=2))
    files = sorted(cache.rglob("*.safetensors"))
    assert len(files) == 8 and sum(f.name.endswith(".val.safetensors") for f in files) == 2

    original = Backbone.forward

    def refuse(self, images):
        raise AssertionError("the backbone ran although every feature is cached")

    monkeypatch.setattr(Backbone, "forward", refuse)
    result = train(setup["images"], str(tmp_path / "b.safetensors"), options(setup, cache=str(cache), steps=3))
    assert result["completed"] and result["validation"]["images"] == 2

    calls = []

    def counting(self, images):
        calls.append(images.shape[0])
        return original(self, images)

    monkeypatch.setattr(Backbone, "forward", counting)
    keys = {f: safe_open(str(f), "pt").metadata()["wrcli-cache"] for f in files}
    other = {"backbone_weights": setup["weights"]["other"], "backbone_kwargs": {**TINY, "depth": 1}}
    train(setup["images"], str(tmp_path / "c.safetensors"), options(setup, cache=str(cache), steps=2, **other))
    assert calls, "stale entries must be rebuilt with the new backbone"
    assert all(safe_open(str(f), "pt").metadata()["wrcli-cache"] != keys[f] for f in files)


@pytest.mark.slow
def dense_contrast(features: torch.Tensor) -> torch.Tensor:
    """The mean off-diagonal entry of the explicit N×N matrix of pixel cosines, per map (float64 oracle)."""
    flat = features.double().flatten(2)
    cos = F.cosine_similarity(flat[:, :, :, None], flat[:, :, None, :], dim=1)
    n = cos.shape[-1]
    return (cos.sum(dim=(-2, -1)) - cos.diagonal(dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))


def test_validation_reports_model_and_an_independent_bilinear(setup, tmp_path):
    out = tmp_path / "m.safetensors"
    result = train(setup["images"], str(out), options(setup, steps=2, precision="fp32"))  # the references are fp32
    backbone = load_backbone(ARCH, setup["weights"]["tiny"], **TINY)
    model = load_upsampler(out, backbone)
    sums = {(m, t): [0.0, 0.0] for m in ("model", "bilinear") for t in ("full", "tiles")}
    contrast = {name: [] for name in ("model", "bilinear", "full", "tiles")}
    paths = sorted(Path(setup["val"]).iterdir())
    half = SIZE // 2
    with torch.no_grad():
        for path in paths:
            pixels, _ = load_image(str(path), ResizePolicy(size=SIZE, patch=14, crop=True))
            image = torch.from_numpy(pixels).permute(2, 0, 1)[None]
            low = F.interpolate(image.float(), size=(half,) * 2, mode="bilinear", antialias=True)
            low = low.round().clamp(0, 255).to(torch.uint8)
            feats = backbone(backbone.normalize(low))
            quadrant = {(r, c): backbone(backbone.normalize(image[..., r * half : (r + 1) * half, c * half : (c + 1) * half]))
                        for r in (0, 1) for c in (0, 1)}
            tiles = torch.cat([torch.cat([quadrant[r, 0], quadrant[r, 1]], dim=-1) for r in (0, 1)], dim=-2)
            targets = {"full": backbone(backbone.normalize(image)), "tiles": tiles}
            for name, up in (("model", model(feats, backbone.normalize(low))),
                             ("bilinear", F.interpolate(feats, scale_factor=2, mode="bilinear"))):
                contrast[name].append(dense_contrast(up).item())
                for t, target in targets.items():
                    sums[name, t][0] += F.cosine_similarity(up, target, dim=1).mean().item() / len(paths)
                    sums[name, t][1] += (up - target).square().mean().item() / len(paths)
            for t, target in targets.items():
                contrast[t].append(dense_contrast(target).item())
    val = result["validation"]
    for name, values in contrast.items():  # per image, in the validation images' order, and their mean
        assert val["contrast"]["per_image"][name] == pytest.approx(values, abs=1e-5)
        assert val["contrast"][name] == pytest.approx(sum(values) / len(values), abs=1e-5)
    assert val["images"] == 2
    for (name, t), (cos, mse) in sums.items():
        assert val[name][t]["cos"] == pytest.approx(cos, abs=1e-5)
        assert val[name][t]["mse"] == pytest.approx(mse, rel=1e-5)
    assert val["model"] != val["bilinear"] and val["bilinear"]["full"] != val["bilinear"]["tiles"]


@pytest.mark.slow
def test_fraction_split_is_deterministic_by_name(setup, tmp_path):
    opts = options(setup, steps=1, val=0.5, batch_size=1)
    a = train(setup["images"], str(tmp_path / "a.safetensors"), opts)
    b = train(setup["images"], str(tmp_path / "b.safetensors"), opts)
    assert a["validation"]["images"] + a["images"] == 6
    assert (a["images"], a["validation"]["images"]) == (b["images"], b["validation"]["images"])


@pytest.mark.slow
def test_unreadable_images_are_skipped_and_too_few_fail(setup, tmp_path, monkeypatch):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, src in enumerate(sorted(Path(setup["images"]).iterdir())[:3]):
        (folder / f"ok{i}{src.suffix}").write_bytes(src.read_bytes())
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "empty.png").write_bytes(b"")
    with pytest.warns(UserWarning, match="skipping 2 unreadable training"):
        result = train(str(folder), str(tmp_path / "m.safetensors"), options(setup, steps=1))
    assert result["images"] == 3 and result["skipped"] == 2
    with pytest.warns(UserWarning), pytest.raises(WrcError, match="only 3 readable training image"):
        train(str(folder), str(tmp_path / "n.safetensors"), options(setup, steps=1, batch_size=4))

    # an image that breaks after the scan fails the run in a DataLoader worker: its one-line message, unwrapped
    good = tmp_path / "good"
    good.mkdir()
    for src in sorted(folder.glob("ok*")):
        (good / src.name).write_bytes(src.read_bytes())
    victim, original = sorted(good.iterdir())[0], builder._sources

    def break_one_then(*args):
        victim.write_bytes(b"not an image any more")
        return original(*args)

    monkeypatch.setattr(builder, "_sources", break_one_then)
    with pytest.raises(WrcError, match=f"training image {victim.name} became unreadable during training") as err:
        train(str(good), str(tmp_path / "b.safetensors"), options(setup, steps=1, batch_size=3, val=None, workers=1))
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)
    assert not multiprocessing.active_children()  # the worker is gone (it ignores SIGTERM: exit would hang)


# ---------------------------------------------------------------------------------------------------
# DDP
# ---------------------------------------------------------------------------------------------------
DDP_SCRIPT = """
import json, os, sys
from wrcli.train import TrainOptions, train
result = train(sys.argv[2], sys.argv[3], TrainOptions(**json.loads(sys.argv[1])))
with open(f"{sys.argv[3]}.rank{os.environ['RANK']}.json", "w") as f:
    json.dump({k: result[k] for k in ("steps", "completed", "images", "validation")}, f)
"""


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(setup, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "run.py"
    script.write_text(DDP_SCRIPT)
    opts = {
        "steps": 3, "batch_size": 2, "lr": 1e-3, "warmup": 0, "size": SIZE, "backbone": ARCH,
        "backbone_weights": setup["weights"]["tiny"], "backbone_kwargs": TINY, "workers": 0, "val": setup["val"],
        "log_every": 1, "progress": False, "cache": str(tmp_path / "cache"),  # ranks split the build, then wait
    }
    out = tmp_path / "ddp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port", str(port),
           str(script), json.dumps(opts), setup["images"], str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["completed"] and r["steps"] == 3 for r in results)
    assert results[0]["validation"] == results[1]["validation"]  # both ranks report the all-reduced numbers
    model = load_upsampler(out)
    assert model.provenance["processes"] == 2 and model.provenance["steps"] == 3
    logged = [json.loads(x) for x in (tmp_path / "ddp.safetensors.log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3]  # one writer: rank 0
    assert logged[0]["images_per_s"] > 0
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 8


# ---------------------------------------------------------------------------------------------------
# the run's files: checked before anything loads, never replaced unasked, one line per step
# ---------------------------------------------------------------------------------------------------
class _Loaded(Exception):
    """Raised in place of loading the backbone: the run got past its file checks."""


@pytest.fixture
def no_loading(monkeypatch):
    """train() stops with _Loaded where it would start loading the backbone."""

    def refuse(*args, **kwargs):
        raise _Loaded

    monkeypatch.setattr(wrcli.train, "open_session", refuse)


@pytest.mark.parametrize("earlier", ["m.safetensors", "m.safetensors.state.pt", "m.safetensors.log.jsonl"])
def test_an_earlier_run_is_refused_without_resume_or_overwrite(setup, tmp_path, no_loading, earlier):
    out = tmp_path / "m.safetensors"
    (tmp_path / earlier).write_bytes(b"earlier run")
    with pytest.raises(WrcError, match=r"an earlier training run is there \(.*" + re.escape(earlier)
                       + r"\); pass --resume to continue it or --overwrite to start over") as err:
        train(setup["images"], str(out), options(setup))
    assert "\n" not in str(err.value) and (tmp_path / earlier).read_bytes() == b"earlier run"
    with pytest.raises(_Loaded):
        train(setup["images"], str(out), options(setup, resume=True))
    assert (tmp_path / earlier).read_bytes() == b"earlier run"  # resume keeps them
    with pytest.raises(_Loaded):
        train(setup["images"], str(out), options(setup, overwrite=True))
    assert not (tmp_path / earlier).exists()  # overwrite starts over


def test_an_output_that_cannot_be_written_is_refused_before_loading(setup, tmp_path, no_loading, monkeypatch):
    (tmp_path / "file").write_text("")
    cases = {
        str(tmp_path): "is a folder; name the model file, e.g. " + re.escape(str(tmp_path / "wrc.safetensors")),
        str(tmp_path / "m.pt"): r"must end in \.safetensors",
        str(tmp_path / "file" / "m.safetensors"): re.escape(f"{tmp_path / 'file'} is not a folder"),
    }
    for out, message in cases.items():
        with pytest.raises(WrcError, match=message):
            train(setup["images"], out, options(setup))
    (tmp_path / "log").mkdir()
    with pytest.raises(WrcError, match=re.escape(f"cannot write {tmp_path / 'log'}: it is a folder")):
        train(setup["images"], str(tmp_path / "m.safetensors"), options(setup, log_file=str(tmp_path / "log")))
    locked = tmp_path / "locked"
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))  # root writes anywhere
    locked.mkdir()
    with pytest.raises(WrcError, match=re.escape(f"no permission to write in {locked}")):
        train(setup["images"], str(locked / "new" / "m.safetensors"), options(setup))
    with pytest.raises(_Loaded):  # a folder still to make, in a writable one
        train(setup["images"], str(tmp_path / "new" / "m.safetensors"), options(setup))


def test_temporary_files_of_a_killed_write_are_removed_at_the_next_start(setup, tmp_path, no_loading):
    out = tmp_path / "m.safetensors"
    stale = [tmp_path / f".m.safetensors.state.pt{TMP_TAG}4242", tmp_path / f".m.safetensors{TMP_TAG}4243"]
    for path in stale:  # what a kill -9 during a state save or the model's write leaves
        path.write_bytes(b"half a file")
    (tmp_path / f".other.safetensors{TMP_TAG}4244").write_bytes(b"another run's")
    with pytest.raises(_Loaded):
        train(setup["images"], str(out), options(setup))
    assert not any(p.exists() for p in stale) and (tmp_path / f".other.safetensors{TMP_TAG}4244").exists()


@pytest.mark.slow
def test_a_resumed_log_has_every_step_once(setup, tmp_path):
    """A run killed after logging steps past its last state save (kill -9 between saves) does those steps again
    on resume: they are logged once, as in an uninterrupted run; a finished run's resume validates once."""
    whole, out = tmp_path / "whole.safetensors", tmp_path / "m.safetensors"
    train(setup["images"], str(whole), options(setup))
    train(setup["images"], str(out), options(setup, stop_after=2))
    saved_at_2 = Path(f"{out}.state.pt").read_bytes()
    train(setup["images"], str(out), options(setup, resume=True, stop_after=4))
    Path(f"{out}.state.pt").write_bytes(saved_at_2)  # killed after logging step 4, the last save at step 2
    with Path(f"{out}.log.jsonl").open("a") as f:
        f.write('{"step": 5, "lo')  # and in the middle of a line
    train(setup["images"], str(out), options(setup, resume=True))
    steps = lambda path: [json.loads(line)["step"] for line in Path(f"{path}.log.jsonl").read_text().splitlines()]
    assert steps(out) == steps(whole) == [1, 2, 3, 4, 5, 6, 6]  # the last line is the final validation
    train(setup["images"], str(out), options(setup, resume=True))  # the finished run again
    assert steps(out) == [1, 2, 3, 4, 5, 6, 6]
    assert_bitwise_equal(weights_of(whole), weights_of(out))


@pytest.mark.slow
def test_overwrite_starts_the_run_over(setup, tmp_path):
    out = tmp_path / "m.safetensors"
    train(setup["images"], str(out), options(setup, steps=3, lr=5e-4))
    result = train(setup["images"], str(out), options(setup, steps=2, overwrite=True))
    assert result["completed"] and torch.load(f"{out}.state.pt", weights_only=True)["step"] == 2
    logged = [json.loads(line)["step"] for line in Path(f"{out}.log.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 2] and load_upsampler(out).provenance["steps"] == 2


# ---------------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------------
def run_train_cli(args: list[str], capsys, monkeypatch, outcome) -> tuple[int, str, list[TrainOptions]]:
    """``wrc train imgs --out m.safetensors ARGS`` with train() replaced by ``outcome(out, opts)``: the exit
    code, stderr and the options the command built."""
    seen: list[TrainOptions] = []

    def recorder(images: str, out: str, opts: TrainOptions) -> dict:
        seen.append(opts)
        return outcome(out, opts)

    monkeypatch.setattr(wrcli.train, "train", recorder)
    code, _, err = run_cli(["train", "imgs", "--out", "m.safetensors", *args], capsys, monkeypatch)
    return code, err, seen


def _finished(out: str, opts: TrainOptions) -> dict:
    model = {"full": {"cos": 0.92051, "mse": 0.7}, "tiles": {"cos": 0.74688, "mse": 2.3}}
    bilinear = {"full": {"cos": 0.91572, "mse": 0.75}, "tiles": {"cos": 0.70631, "mse": 2.8}}
    return {"steps": opts.steps, "completed": True, "out": out, "state": f"{out}.state.pt",
            "validation": {"images": 60, "model": model, "bilinear": bilinear}}


def test_cli_recipes_flags_and_where_the_checkpoint_went(capsys, monkeypatch):
    def settings(*args: str) -> tuple:
        code, err, seen = run_train_cli([*args], capsys, monkeypatch, _finished)
        assert code == 0, err
        return seen[0].recipe, seen[0].lr, seen[0].skip, seen[0].mse

    assert settings() == ("wrcli", 1e-3, True, "raw")
    assert settings("--recipe", "published") == ("published", 2e-4, False, "range")
    assert settings("--recipe", "published", "--skip", "--lr", "5e-4") == ("published", 5e-4, True, "range")
    assert settings("--no-skip", "--mse", "range") == ("wrcli", 1e-3, False, "range")
    code, err, _ = run_train_cli(["--steps", "1600"], capsys, monkeypatch, _finished)
    assert err.strip().splitlines()[-1] == ("wrc: wrote m.safetensors (1600 steps, validation full cos 0.9205 vs "
                                            "bilinear 0.9157, tiles cos 0.7469 vs bilinear 0.7063)")
    code, err, seen = run_train_cli(["--skip-map", "--fit-batches", "10", "--fit-ridge", "3"], capsys, monkeypatch,
                                    _finished)
    assert code == 0 and (seen[0].skip_map, seen[0].fit_batches, seen[0].fit_ridge) == (True, 10, 3.0)
    assert run_train_cli([], capsys, monkeypatch, _finished)[2][0].skip_map is False
    for bad in (["--recipe", "paper"], ["--mse", "l1"], ["--fit-ridge", "-1"]):
        code, err, seen = run_train_cli(bad, capsys, monkeypatch, _finished)
        assert code == cli.EXIT_USAGE and bad[0] in err and not seen
    code, err, seen = run_train_cli(["--no-skip", "--skip-map"], capsys, monkeypatch, _finished)
    assert code == cli.EXIT_USAGE and "skip_map needs skip" in err and not seen


def test_cli_says_where_the_state_is_and_how_to_continue(capsys, monkeypatch):
    def stopped(out: str, opts: TrainOptions) -> dict:
        raise TrainingStopped(120, opts.steps, Path(f"{out}.state.pt"))

    code, err, _ = run_train_cli(["--steps", "1600"], capsys, monkeypatch, stopped)
    assert code == cli.EXIT_INTERRUPTED
    assert err.strip().splitlines()[-1] == ("wrc: stopped at step 120/1600; the training state is in "
                                            "m.safetensors.state.pt; continue with: wrc train imgs --out "
                                            "m.safetensors --steps 1600 --resume")

    def unfinished(out: str, opts: TrainOptions) -> dict:
        return {"steps": 3, "completed": False, "out": None, "state": f"{out}.state.pt", "validation": None}

    code, err, _ = run_train_cli(["--resume"], capsys, monkeypatch, unfinished)
    assert code == 0 and err.strip().splitlines()[-1] == (
        "wrc: stopped at step 3; the training state is in m.safetensors.state.pt; continue with: wrc train imgs "
        "--out m.safetensors --resume")


@pytest.mark.slow
def test_cli_trains_and_says_where_the_model_went(tmp_path, vits_weights, capsys, monkeypatch):
    """The real ViT-S/14 architecture (random weights) through ``wrc train``, at a 28-pixel low-res view."""
    src, val, out = photos(tmp_path / "in", 2), photos(tmp_path / "val", 1, seed=1), tmp_path / "m.safetensors"
    code, stdout, err = run_cli(
        ["train", str(src), "--out", str(out), "--backbone", ARCH, "--backbone-weights", str(vits_weights),
         "--size", "56", "--steps", "2", "--batch-size", "1", "--val", str(val), "--workers", "0", "--log-every", "1",
         "--recipe", "published", "--skip", "--json"], capsys, monkeypatch)
    assert code == 0, err
    last = err.strip().splitlines()[-1]
    assert last == f"wrc: {summary_line(json.loads(stdout))}"
    number = r"-?[0-9]+\.[0-9]{4}"
    assert re.fullmatch(rf"wrc: wrote {re.escape(str(out))} \(2 steps, validation full cos {number} vs bilinear "
                        rf"{number}, tiles cos {number} vs bilinear {number}\)", last), last
    assert "step 2/2  loss" in err  # the library's loss lines reach the terminal
    model = load_upsampler(out)
    assert model.skip and model.provenance["recipe"] == "published"
    assert (model.provenance["options"]["mse"], model.provenance["options"]["lr"]) == ("range", 2e-4)


def test_cli_refuses_an_output_it_cannot_write_as_a_usage_error(tmp_path, capsys, monkeypatch):
    def never(images: str, out: str, opts: TrainOptions) -> dict:
        raise AssertionError("train() called")

    monkeypatch.setattr(wrcli.train, "train", never)
    code, _, err = run_cli(["train", "imgs", "--out", str(tmp_path)], capsys, monkeypatch)
    assert code == cli.EXIT_USAGE and f"--out {tmp_path} is a folder" in err
    code, err, seen = run_train_cli(["--overwrite"], capsys, monkeypatch, _finished)
    assert code == 0 and seen[0].overwrite and not seen[0].resume
