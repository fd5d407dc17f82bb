"""``wrc eval depth``: metrics, head and losses with hand-computed answers, the NYUv2 .mat and generic layouts,
the learning-rate schedules, the probe learning (CLI end to end) and one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from wrcli.errors import WrcError
from wrcli.eval.datasets import open_depth
from wrcli.eval.depth import (
    DEPTH_PROTOCOLS,
    DepthAccumulator,
    DepthHead,
    bin_depth,
    gradient_loss,
    sig_loss,
    valid_depth,
)
from wrcli.eval.metrics import depth_image_metrics
from wrcli.eval.probes import lr_factor

from .conftest import ARCH
from .test_eval_seg import cell_images
from .test_extract import error_line, run_cli

DEPTHS = np.array([3.0, 5.0, 7.0])


def generic_depth(root: Path, n_train: int = 8, n_val: int = 4) -> Path:
    """Cell images whose depth (mm, 16-bit PNG) is set by the colour; a few pixels without measurement."""
    rng = np.random.default_rng(1)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "depth" / split).mkdir(parents=True)
        for i, (img, lab) in enumerate(zip(*cell_images(n, rng))):
            Image.fromarray(img).save(root / "images" / split / f"{i:02d}.png")
            depth = (DEPTHS[lab] * 1000).astype(np.uint16)
            depth[:3, :3] = 0
            Image.fromarray(depth).save(root / "depth" / split / f"{i:02d}.png")
    return root


# -- metrics, head, losses, schedules --------------------------------------------------------------------------

def test_depth_metrics_known_answer():
    pred = torch.tensor([[[2.0, 1.0], [4.0, 9.0]], [[3.0, 3.0], [3.0, 3.0]], [[1.0, 1.0], [1.0, 1.0]]])
    gt = torch.tensor([[[1.0, 1.0], [5.0, 0.0]], [[3.0, 3.0], [3.0, 3.0]], [[0.0, 0.0], [0.0, 0.0]]])
    m = depth_image_metrics(pred, gt, gt > 0)
    # image 0, valid pixels (2 vs 1), (1 vs 1), (4 vs 5): errors 1, 0, -1; ratios 2, 1, 1.25 (not < 1.25)
    assert m[0].tolist() == pytest.approx([math.sqrt(2 / 3), (1 + 0 + 0.2) / 3, 1 / 3])
    assert m[1].tolist() == [0.0, 0.0, 1.0] and m[2].isnan().all()
    acc = DepthAccumulator(max_depth=10)
    acc.update(pred[:, None], gt)  # the image without valid pixels is left out of the average
    assert acc.images == 2
    assert list(acc.result().values()) == pytest.approx([math.sqrt(2 / 3) / 2, 0.2, 2 / 3])


def test_valid_depth_excludes_missing_infinite_and_too_deep():
    gt = torch.tensor([0.0, -1.0, float("nan"), float("inf"), 0.5, 10.0, 10.5])
    assert valid_depth(gt, 10.0).tolist() == [False, False, False, False, True, True, False]


def test_bin_depth_uniform_and_peaked():
    flat = bin_depth(torch.zeros(1, 256, 2, 3), 1e-3, 10.0)
    assert flat.shape == (1, 1, 2, 3) and torch.allclose(flat, torch.full_like(flat, (1e-3 + 10) / 2))
    logits = torch.zeros(1, 256, 1, 1)
    logits[0, 64] = 1e6
    centre = 1e-3 + 64 * (10 - 1e-3) / 255
    assert float(bin_depth(logits, 1e-3, 10.0)) == pytest.approx(centre, rel=1e-4)


def test_sig_loss_and_gradient_loss_known_answers():
    gt = torch.tensor([[[1.0, 2.0, 4.0], [3.0, 5.0, 6.0], [2.0, 2.0, 2.0]]])
    valid = torch.ones_like(gt, dtype=torch.bool)
    assert float(sig_loss(gt, gt, valid)) < 1e-5
    # a pure scale error k: g = log k everywhere, loss = |log k| · sqrt(1 − 0.85)
    assert float(sig_loss(2 * gt, gt, valid)) == pytest.approx(math.log(2) * math.sqrt(0.15), rel=1e-3)
    assert float(gradient_loss(2 * gt, gt, valid)) < 1e-3
    # g = 0, 0, a along every row: pairs two apart differ by a in x (3 rows), not in y; 9 valid pixels → 3a / 9
    a = 0.5
    ones = torch.ones(1, 3, 3) * 100
    pred = ones * torch.tensor([1.0, 1.0, math.exp(a)])
    assert float(gradient_loss(pred, ones, valid, strides=(1,))) == pytest.approx(a / 3, rel=1e-4)
    assert float(sig_loss(gt, gt, torch.zeros_like(valid))) == 0.0


def test_depth_head_shrinks_targets_by_nearest_neighbour_at_pixel_centres():
    target = torch.arange(16.0).reshape(1, 4, 4)
    assert DepthHead().shrink(target, (2, 2)).tolist() == [[[5.0, 7.0], [13.0, 15.0]]]


def test_learning_rate_schedules():
    cos = DEPTH_PROTOCOLS["jafar"]  # 20 epochs, cosine stepped per epoch
    assert [lr_factor(cos, e, s, 7) for e, s in ((0, 0), (0, 6), (10, 3))] == pytest.approx([1.0, 1.0, 0.5])
    assert lr_factor(cos, 19, 0, 7) == pytest.approx((1 + math.cos(math.pi * 19 / 20)) / 2)
    warm = DEPTH_PROTOCOLS["probe3d"]  # 10 epochs, 1.5 warm-up epochs, per step: with 10 steps W = 15, T = 100
    assert lr_factor(warm, 0, 0, 10) == pytest.approx(0.01)
    assert lr_factor(warm, 1, 5, 10) == pytest.approx(1.0)
    assert lr_factor(warm, 0, 5, 10) == pytest.approx(0.01 + 0.99 * 5 / 15)
    assert lr_factor(warm, 5, 5, 10) == pytest.approx(0.01 + 0.99 * math.cos(math.pi / 2 * 40 / 85))
    assert lr_factor(warm, 10, 0, 10) == pytest.approx(0.01)


# -- layouts ---------------------------------------------------------------------------------------------------------

def nyu_mat(path: Path, n: int = 3, h: int = 6, w: int = 8) -> Path:
    """A labelled-set .mat (HDF5) as MATLAB writes it: images (N, 3, W, H), depths (N, W, H); pixel (y, x) of
    image i has colour (y, x, i) and depth y + x / 10 + i."""
    y, x = np.mgrid[:h, :w]
    rgb = np.stack([np.stack([y, x, np.full_like(y, i)], -1) for i in range(n)]).astype(np.uint8)
    depth = np.stack([y + x / 10 + i for i in range(n)]).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["images"] = rgb.transpose(0, 3, 2, 1)
        f["depths"] = depth.transpose(0, 2, 1)
    return path


def test_nyu_labelled_mat_with_text_split(tmp_path):
    nyu_mat(tmp_path / "nyu_depth_v2_labeled.mat")
    (tmp_path / "train.txt").write_text("1\n3\n")
    (tmp_path / "test.txt").write_text("2\n")
    data = open_depth("auto", tmp_path)
    assert (data.name, data.train.name, data.val.name) == ("nyu", "train", "test")
    assert [s.name for s in data.train.samples] == ["nyu0001", "nyu0003"]
    image, depth = data.val.samples[0].load()  # image number 2 = index 1
    rgb = np.asarray(image)
    assert rgb.shape == (6, 8, 3) and depth.shape == (6, 8)
    assert rgb[2, 5].tolist() == [2, 5, 1] and depth[2, 5] == pytest.approx(2.5 + 1)
    assert open_depth("nyu", tmp_path / "nyu_depth_v2_labeled.mat").val.samples == data.val.samples


def test_nyu_split_from_splits_mat(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    nyu_mat(tmp_path / "nyu_depth_v2_labeled.mat")
    scipy_io.savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[1], [2]]), "testNdxs": np.array([[3]])})
    data = open_depth("nyu", tmp_path)
    assert [s.index for s in data.train.samples] == [0, 1] and [s.index for s in data.val.samples] == [2]


def test_generic_depth_png_and_npy(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "depth" / split).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "images" / split / "a.jpg")
        Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "images" / split / "b.png")
        Image.fromarray(np.full((4, 5), 2500, np.uint16)).save(tmp_path / "depth" / split / "a.png")
        np.save(tmp_path / "depth" / split / "b.npy", np.full((4, 5), 1.5, np.float64))
    data = open_depth("auto", tmp_path, scale=100.0)
    assert data.name == "generic" and [s.name for s in data.train.samples] == ["a", "b"]
    assert float(data.train.samples[0].load()[1][0, 0]) == pytest.approx(25.0)  # 2500 / 100 units per metre
    npy = data.val.samples[1].load()[1]
    assert npy.dtype == np.float32 and float(npy[0, 0]) == 1.5
    assert float(open_depth("generic", tmp_path).train.samples[0].load()[1][0, 0]) == pytest.approx(2.5)


def test_depth_layout_errors_are_one_line(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "nosplit").mkdir()
    nyu_mat(tmp_path / "nosplit" / "nyu_depth_v2_labeled.mat")
    for kind, root, expected in [
        ("nyu", tmp_path / "junk", "nyu_depth_v2_labeled.mat does not exist"),
        ("auto", tmp_path / "junk", "expected images/{train,val}/ and depth/{train,val}/"),
        ("generic", tmp_path / "missing", "does not exist"),
        ("nyu", tmp_path / "nosplit", "no split"),
        ("kitti", tmp_path / "junk", "unknown depth dataset"),
    ]:
        with pytest.raises(WrcError, match=expected) as info:
            open_depth(kind, root)
        assert "\n" not in str(info.value)


# -- CLI end to end ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_depth_two_upsamplers_learn_depth_from_colour(tmp_path, vits_weights, capsys, monkeypatch):
    root = generic_depth(tmp_path / "d")
    code, stdout, err = run_cli(["eval", "depth", str(root), "--backbone", ARCH, "--backbone-weights", str(vits_weights),
                                 "--upsampler", "bilinear,nearest", "--size", "56", "--epochs", "6", "--batch-size", "4",
                                 "--lr", "1e-2", "--workers", "0", "--device", "cpu", "--json", "--out",
                                 str(tmp_path / "r.json")], capsys, monkeypatch)
    assert code == 0, err
    report = json.loads(stdout)
    assert json.loads((tmp_path / "r.json").read_text()) == report
    proto = report["protocol"]
    assert (report["task"], proto["name"], proto["schedule"], proto["warmup_epochs"], proto["size"], proto["lr"]) == \
        ("depth", "probe3d", "warmup-cosine-step", 1.5, 56, 1e-2)
    assert proto["max_depth"] == 10.0 and report["dataset"]["depth_scale"] == 1000.0
    assert list(report["results"]) == ["bilinear", "nearest"]
    # the constant predictor's RMSE on these cells (depths 3, 5, 7 m) is about 1.6 m and its δ1 about 1/3
    for label, row in report["results"].items():
        assert set(row) == {"rmse", "abs_rel", "delta1", "seconds"}
        assert row["rmse"] < 0.9 and row["abs_rel"] < 0.2 and row["delta1"] > 0.75, (label, row)
    # the cells are whole patches: nearest upsampling keeps them exact where bilinear blurs their borders
    bilinear, nearest = report["results"]["bilinear"], report["results"]["nearest"]
    assert nearest["rmse"] < bilinear["rmse"] / 2 and nearest["delta1"] > bilinear["delta1"]


def test_cli_depth_errors_are_one_line(tmp_path, vits_weights, capsys, monkeypatch):
    base = ["--backbone", ARCH, "--backbone-weights", str(vits_weights), "--size", "56", "--workers", "0"]
    code, _, err = run_cli(["eval", "depth", str(tmp_path / "nowhere"), *base], capsys, monkeypatch)
    assert code == 1 and "does not exist" in error_line(err)
    code, _, err = run_cli(["eval", "depth", str(tmp_path), "--depth-scale", "0", *base], capsys, monkeypatch)
    assert code == 1 and "--depth-scale must be positive" in error_line(err)
    root = generic_depth(tmp_path / "d", 2, 1)
    Image.fromarray(np.zeros((56, 56, 3), np.uint8)).save(root / "depth/train/01.png")
    code, _, err = run_cli(["eval", "depth", str(root), *base], capsys, monkeypatch)
    assert code == 1 and "sample 01: depth map" in error_line(err)
