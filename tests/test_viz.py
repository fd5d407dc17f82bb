"""wrc viz: PCA-RGB with known principal directions, similarity maps, the panel layout, the command."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from wrcli import cli
from wrcli.session import open_session
from wrcli.viz import (
    COLOURS,
    GAP,
    LABEL_HEIGHT,
    colourise,
    compose,
    enlarge,
    feature_maps,
    panel_size,
    pca_basis,
    pca_rgb,
    scale_point,
    similarity_map,
    to_uint8,
)

from .conftest import ARCH, photos
from .test_extract import run_cli


def planted(h: int = 24, w: int = 32, c: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features μ + 6·a₁·e₁ + 3·a₂·e₂ + 1.5·a₃·e₃ + small noise, with e₁..e₃ orthonormal and a_k ~ N(0, 1):
    the principal directions are e₁, e₂, e₃ in that order. Returns (features, E (c,3), a (3,h,w))."""
    g = torch.Generator().manual_seed(0)
    e, _ = torch.linalg.qr(torch.randn(c, 3, generator=g, dtype=torch.float64))
    a = torch.randn(3, h, w, generator=g, dtype=torch.float64)
    mean = torch.randn(c, 1, 1, generator=g, dtype=torch.float64)
    weights = torch.tensor([6.0, 3.0, 1.5], dtype=torch.float64)
    f = mean + torch.einsum("ck,khw->chw", e * weights, a) + 0.01 * torch.randn(c, h, w, generator=g, dtype=torch.float64)
    return f.float(), e, a


def test_pca_recovers_planted_directions_with_a_fixed_sign():
    f, e, _ = planted()
    mean, basis = pca_basis([f])
    assert torch.allclose(mean.float(), f.flatten(1).mean(1), atol=1e-5)
    cosines = (basis.T @ e).abs().diagonal()
    assert (cosines > 0.999).all(), cosines
    peak = basis.abs().argmax(dim=0)
    assert (basis[peak, torch.arange(3)] > 0).all()  # the largest entry of each direction is positive
    _, flipped = pca_basis([-f])  # the sign rule makes the result independent of the features' sign
    assert torch.allclose(flipped, basis, atol=1e-6)


def test_pca_rgb_colours_follow_the_components_and_are_joint():
    f, e, a = planted()
    mean, basis = pca_basis([f])
    sign = torch.sign((basis.T @ e).diagonal())  # component k is ±a_k
    rgb, same = pca_rgb([f, f.clone()])
    assert rgb.shape == (3, 24, 32) and rgb.min() >= 0 and rgb.max() <= 1 and torch.equal(rgb, same)
    for k in range(3):  # each channel is a clipped increasing affine map of ±a_k
        corr = np.corrcoef(rgb[k].flatten().numpy(), (sign[k] * a[k]).flatten().numpy())[0, 1]
        assert corr > 0.95, (k, corr)
    # robust range: about 1 % of the pixels saturate at each end of each channel
    assert 0.005 < float((rgb[0] == 0).double().mean()) < 0.03 and 0.005 < float((rgb[0] == 1).double().mean()) < 0.03
    # jointly fitted: features shifted by one σ₁ along +component 1 are redder at every pixel, same green and blue
    shifted = f + (6 * e[:, 0, None, None] * sign[0]).float()
    first, second = pca_rgb([f, shifted])
    assert (second[0] >= first[0]).all() and second[0].mean() > first[0].mean() + 0.1
    assert torch.allclose(second[1:], first[1:], atol=0.02)


def test_similarity_map_and_colour_scale():
    f = torch.zeros(3, 4, 5)
    f[0] = 1.0
    f[1, 2, 3] = 1.0  # one pixel at 45°
    f[:, 0, 0] = torch.tensor([-2.0, 0.0, 0.0])  # one opposite
    sim = similarity_map(f, (1, 1))
    assert sim[1, 1] == 1 and abs(float(sim[2, 3]) - 2 ** -0.5) < 1e-6 and sim[0, 0] == -1
    colours = colourise(torch.tensor([[-1.0, 0.0, 0.5, 1.0, 2.0]]))
    assert colours.dtype == np.uint8 and colours.shape == (1, 5, 3)
    assert (colours[0, :2] == COLOURS[0]).all() and (colours[0, 2] == COLOURS[2]).all()
    assert (colours[0, 3:] == COLOURS[-1]).all()
    assert (colourise(torch.tensor([[0.125]]))[0, 0] == np.rint((COLOURS[0] + COLOURS[1]) / 2)).all()


def test_scale_point_maps_pixel_centres():
    assert scale_point((0, 0), (100, 200), (50, 100)) == (0, 0)
    assert scale_point((99, 199), (100, 200), (50, 100)) == (49, 99)
    assert scale_point((49.5, 99.5), (100, 200), (28, 56)) == (14, 28)  # the centre
    assert scale_point((500, 500), (100, 200), (50, 100)) == (49, 99)  # clipped into the image


def test_panel_layout_places_each_tile():
    h, w = 20, 30
    image = np.full((h, w, 3), 10, dtype=np.uint8)
    pca = [np.full((h, w, 3), v, dtype=np.uint8) for v in (50, 90)]
    sims = [[np.full((h, w, 3), v, dtype=np.uint8) for v in pair] for pair in ((130, 170), (210, 250))]
    panel = compose(image, ["a", "b"], pca, sims, [(5, 5), (15, 25)])
    assert panel.size == panel_size((h, w), 2, 2) == (3 * w + 2 * GAP, LABEL_HEIGHT + 3 * h + 2 * GAP)
    px = np.asarray(panel)

    def tile(row: int, col: int) -> np.ndarray:
        top, left = LABEL_HEIGHT + row * (h + GAP), col * (w + GAP)
        return px[top:top + h, left:left + w]

    assert (tile(0, 0) == 10).all() and (tile(0, 1) == 50).all() and (tile(0, 2) == 90).all()  # no ring on PCA
    # away from the ring at (5, 5): the query-1 row holds the image and both similarity tiles
    assert (tile(1, 0)[12:, 12:] == 10).all()
    assert (tile(1, 1)[12:, 12:] == 130).all() and (tile(1, 2)[12:, 12:] == 170).all()
    assert (tile(2, 1)[:8, :8] == 210).all() and (tile(2, 2)[:8, :8] == 250).all()
    ring = tile(1, 1)[:12, :12]
    assert (ring == 255).all(axis=2).any() and (ring == 0).all(axis=2).any()  # white ring, black outline
    assert px[:LABEL_HEIGHT].min() < 64  # the labels are drawn


def test_enlarge_is_nearest_with_centred_blocks():
    values = torch.arange(6.0).view(1, 2, 3)
    big = enlarge(values, (4, 9))
    assert big.shape == (1, 4, 9)
    assert big[0, :, 0].tolist() == [0, 0, 3, 3] and big[0, 0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    odd = enlarge(torch.arange(3.0).view(1, 3), (1, 7))  # 7/3 px per value: centres decide, 2 + 3 + 2
    assert odd[0].tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert enlarge(torch.arange(4.0).view(2, 2), (2, 2)).equal(torch.arange(4.0).view(2, 2))


def test_feature_maps_follow_the_scale_and_report_each_upsampler(vits_weights):
    session = open_session("nearest,bilinear", backbone=ARCH, weights=str(vits_weights), device="cpu")
    array = np.random.default_rng(0).integers(0, 256, (28, 42, 3), dtype=np.uint8)  # a 2×3 token grid
    calls: list[None] = []
    for k, (scale, hw) in enumerate(((1, (2, 3)), (2, (4, 6)), (4, (8, 12)), (0, (28, 42)))):
        maps = feature_maps(session, array, scale, done=lambda: calls.append(None))
        assert [tuple(m.shape) for m in maps] == [(384, *hw)] * 2 and len(calls) == 2 * (k + 1), scale
        assert all(m.dtype == torch.float32 for m in maps)


def runs(tile: np.ndarray, axis: int) -> int:
    """How many runs of equal rows (axis 0) or columns (axis 1) a tile has."""
    changes = np.any(np.diff(tile.astype(np.int16), axis=axis) != 0, axis=(1 - axis, 2))
    return 1 + int(changes.sum())


def test_cli_scale_sets_the_feature_resolution_not_the_picture_size(tmp_path, vits_weights, capsys, monkeypatch):
    src = photos(tmp_path / "in", 1)  # 60×80 → 28×42 at --size 28: a 2×3 token grid
    found = {}
    for scale in ("1", "2", "0"):
        out = tmp_path / f"viz-{scale}"
        code, stdout, err = run_cli(["viz", str(src), "--out", str(out), "--upsampler", "bilinear", "--size", "28",
                                     "--scale", scale, "--backbone", ARCH, "--backbone-weights", str(vits_weights),
                                     "--device", "cpu", "--json"], capsys, monkeypatch)
        assert code == 0, err
        summary = json.loads(stdout)
        assert summary["scale"] == int(scale) and "viz: 1/1 map" in err
        panel = np.asarray(Image.open(summary["written"][0]))
        assert panel.shape[:2][::-1] == panel_size((28, 42), 1, 1)  # the picture size never changes
        pca = panel[LABEL_HEIGHT:LABEL_HEIGHT + 28, 42 + GAP:2 * 42 + GAP]
        found[scale] = (summary["feature_hw"][0], runs(pca, 0), runs(pca, 1))
    # nearest display: one block of picture pixels per feature pixel
    assert found["1"] == ([2, 3], 2, 3) and found["2"] == ([4, 6], 4, 6)
    assert found["0"][0] == [28, 42] and found["0"][1] > 4 and found["0"][2] > 6
    code, _, err = run_cli(["viz", str(src), "--out", str(tmp_path / "x"), "--scale", "-1"], capsys, monkeypatch)
    assert code == cli.EXIT_USAGE and "--scale" in err


def test_to_uint8():
    rgb = torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1)
    assert to_uint8(rgb).tolist() == [[[0, 128, 255]]]


def test_cli_draws_one_png_per_image(tmp_path, vits_weights, capsys, monkeypatch):
    src = photos(tmp_path / "in", 2)  # 60×80 and 80×60
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "viz"
    code, stdout, err = run_cli(["viz", str(src), "--out", str(out), "--upsampler", "bilinear,nearest",
                                 "--query", "10,20", "-q", "59,79", "--size", "28", "--backbone", ARCH,
                                 "--backbone-weights", str(vits_weights), "--device", "cpu", "--json"],
                                capsys, monkeypatch)
    assert code == cli.EXIT_PARTIAL, err
    summary = json.loads(stdout)
    assert [f["path"].endswith("broken.png") for f in summary["failed"]] == [True] and "broken.png" in err
    assert [p.rsplit("/", 1)[1] for p in summary["written"]] == ["img 000.png", "img 001.png"]
    assert summary["upsamplers"] == ["bilinear", "nearest"] and summary["queries"] == [[10.0, 20.0], [59.0, 79.0]]
    assert summary["scale"] == 2 and summary["feature_hw"] == [[4, 6], [6, 4]]  # ×2 the token grid by default
    assert "viz: 6/6 map" in err  # progress per upsampler: 3 images (one unreadable) × 2 upsamplers
    # 60×80 (h×w) → 28×42 at --size 28 (short side 28, sides patch multiples): 3 columns, 3 rows
    assert Image.open(summary["written"][0]).size == panel_size((28, 42), 2, 2)
    assert Image.open(summary["written"][1]).size == panel_size((42, 28), 2, 2)

    code, stdout, err = run_cli(["viz", str(src / "img 000.jpg"), "--out", str(out), "--upsampler", "nearest",
                                 "--size", "28", "--backbone", ARCH, "--backbone-weights", str(vits_weights),
                                 "--device", "cpu"], capsys, monkeypatch)
    assert code == 0, err
    assert stdout.strip() == str(out / "img 000.png")
    assert Image.open(out / "img 000.png").size == panel_size((28, 42), 1, 1)

    code, _, err = run_cli(["viz", str(src), "--out", str(out), "-q", "3"], capsys, monkeypatch)
    assert code == cli.EXIT_USAGE and "y,x" in err
