"""wrc eval discovery: IoU and CorLoc on hand-made boxes, the eigen-solver against scipy's generalised eigh,
TokenCut and LOST on planted clusters, the VOC / COCO20k / generic readers, the run end to end with a
random-init ViT-S, and the real VOC07 images with the real DINOv2 weights."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from wrcli.errors import WrcError
from wrcli.eval.discovery import (
    Item,
    Skipped,
    box_iou,
    cells_to_image,
    corloc,
    cosine_matrix,
    discover,
    discovery_task,
    lost_partition,
    ncut_vector,
    read_coco20k,
    read_generic,
    read_voc,
    run_discovery,
    seed_component_cells,
    tokencut_partition,
)
from wrcli.eval.task import REPORT_KEYS, Task

from .conftest import ARCH, PHOTOS

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VOC_DET = SHARED / "data/voc-det"


# -- IoU and CorLoc ------------------------------------------------------------------------------------------

def test_iou_by_hand_and_against_torchvision():
    box = np.array([0.0, 0.0, 4.0, 2.0])  # area 8
    gt = np.array([[0, 0, 4, 2], [2, 0, 6, 2], [0, 0, 2, 1], [4, 2, 8, 8], [10, 10, 12, 12]], dtype=float)
    # identical 1; half overlap 4 / (8 + 8 − 4) = 1/3; inside 2 / 8; touching corner 0; apart 0
    assert box_iou(box, gt).tolist() == [1.0, 1 / 3, 0.25, 0.0, 0.0]
    ops = pytest.importorskip("torchvision.ops")
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (40, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 30, (40, 2))], axis=1)
    ours = np.stack([box_iou(b, boxes) for b in boxes])
    theirs = ops.box_iou(torch.from_numpy(boxes), torch.from_numpy(boxes)).numpy()
    assert np.allclose(ours, theirs, rtol=0, atol=1e-12)


def test_corloc_counts_images_with_any_box_at_iou_half_or_more():
    pred = {"a": [0, 0, 2, 1], "b": [0, 0, 10, 10], "c": [0, 0, 3, 3], "d": [5, 5, 6, 6]}
    gt = {"a": [[0, 0, 1, 1]],  # IoU exactly 1/2: counts (≥)
          "b": [[0, 0, 5, 10], [20, 20, 30, 30]],  # 50 / 100 with the first box: counts
          "c": [[0, 0, 2, 2], [1, 1, 4, 4]],  # 4 / 9 and 4 / 14: both below
          "d": [[0, 0, 1, 1]]}  # no overlap
    correct = [bool((box_iou(np.array(pred[i], float), np.array(gt[i], float)) >= 0.5).any()) for i in pred]
    assert correct == [True, True, False, False]
    assert corloc(correct) == 50.0 and corloc([True, False, False]) == 100 / 3
    with pytest.raises(WrcError, match="no images with ground-truth boxes"):
        corloc([])


def test_cells_to_image_scales_by_cell_size_then_to_the_original_image():
    # grid 16 over a 224² warp: 14-px cells; the original image is 448 × 112
    assert cells_to_image((5, 3, 13, 9), 16, 224, 448, 112).tolist() == [140.0, 21.0, 364.0, 63.0]
    assert cells_to_image((0, 0, 16, 16), 16, 224, 500, 375).tolist() == [0.0, 0.0, 500.0, 375.0]


def test_seed_component_is_4_connected_and_max_excluded():
    mask = np.zeros((6, 8), dtype=bool)
    mask[1:3, 1:4] = True  # component with cells x 1..3, y 1..2
    mask[3, 4] = True  # touches (2, 3) only diagonally: another component
    mask[4:6, 6:8] = True
    assert seed_component_cells(mask, 1 * 8 + 2) == (1, 1, 4, 3)
    assert seed_component_cells(mask, 3 * 8 + 4) == (4, 3, 5, 4)
    assert seed_component_cells(mask, 5 * 8 + 7) == (6, 4, 8, 6)
    with pytest.raises(ValueError, match="not in the foreground"):
        seed_component_cells(mask, 0)


# -- eigen-solver and the two methods on planted clusters ----------------------------------------------------

def planted(h: int = 16, w: int = 16, box: tuple[int, int, int, int] = (5, 3, 13, 9), c: int = 8,
            noise: float = 0.05, seed: int = 0) -> torch.Tensor:
    """(C,h,w): background ≈ e0, the cells x0..x1−1 × y0..y1−1 of ``box`` ≈ −0.5 e0 + e1 (cosine −0.45 with it)."""
    g = torch.Generator().manual_seed(seed)
    bg = torch.zeros(c)
    bg[0] = 1
    obj = torch.zeros(c)
    obj[0], obj[1] = -0.5, 1.0
    f = bg[:, None, None].repeat(1, h, w)
    x0, y0, x1, y1 = box
    f[:, y0:y1, x0:x1] = obj[:, None, None]
    return f + noise * torch.randn(c, h, w, generator=g)


def test_ncut_vector_is_scipys_generalised_eigenvector():
    sim = cosine_matrix(planted(6, 7, (1, 1, 4, 3), noise=0.5, seed=3))
    a = torch.where(sim > 0.2, 1.0, 1e-5).double()
    v = ncut_vector(a)
    d = np.diag(a.sum(1).numpy())
    _, ref = scipy.linalg.eigh(d - a.numpy(), d, subset_by_index=[1, 1])
    ref = ref[:, 0] * np.sign(ref[np.abs(ref[:, 0]).argmax(), 0])
    assert np.allclose(v.numpy(), ref, atol=1e-8)
    assert np.isclose(float(v @ torch.from_numpy(d) @ v), 1.0) and v[v.abs().argmax()] > 0
    assert torch.equal(ncut_vector(a), v)  # deterministic


def test_lobpcg_above_the_dense_limit_gives_the_same_vector():
    sim = cosine_matrix(planted(12, 12, (2, 3, 7, 9), noise=0.2))
    a = torch.where(sim > 0.2, 1.0, 1e-5).double()
    dense, iterative = ncut_vector(a), ncut_vector(a, dense_limit=10)
    assert torch.allclose(dense, iterative, atol=1e-5)
    assert torch.equal(ncut_vector(a, dense_limit=10), iterative)


def test_tokencut_finds_the_planted_box():
    f = planted()
    fg, seed, v = tokencut_partition(f, tau=0.2)
    expected = np.zeros((16, 16), dtype=bool)
    expected[3:9, 5:13] = True
    assert np.array_equal(fg, expected) and expected.flat[seed]
    assert seed_component_cells(fg, seed) == (5, 3, 13, 9)
    found = discover(f, "tokencut", tau=0.2, k=100, imsize=224, width=448, height=224,
                     gt=np.array([[140.0, 42.0, 364.0, 126.0], [0, 0, 10, 10]]))
    assert found.box.tolist() == [140.0, 42.0, 364.0, 126.0] and found.iou == 1.0 and found.correct


def test_tokencut_foreground_is_the_seed_side_whichever_cluster_is_larger():
    f = planted(box=(0, 0, 16, 12))  # the "object" covers 3/4: the seed (largest |v|) is in the small part
    fg, seed, _ = tokencut_partition(f, tau=0.2)
    assert fg.flat[seed] and seed_component_cells(fg, seed) == (0, 12, 16, 16)


@pytest.mark.parametrize("k", [1, 100])
def test_lost_finds_the_planted_box(k):
    f = planted()
    fg, seed = lost_partition(f, k=k)
    assert 3 <= seed // 16 < 9 and 5 <= seed % 16 < 13  # the object's cells have the lowest degree
    assert seed_component_cells(fg, seed) == (5, 3, 13, 9)
    found = discover(f, "lost", tau=0.2, k=k, imsize=224, width=224, height=224, gt=np.array([[70.0, 42, 180, 126]]))
    assert found.box.tolist() == [70.0, 42.0, 182.0, 126.0] and found.correct  # IoU 110 / 112


def test_lost_seed_is_the_first_of_equal_lowest_degrees():
    f = torch.zeros(2, 2, 3)
    f[0] = 1.0
    f[:, 1, 2] = torch.tensor([-1.0, 0.0])  # opposite to the rest: degree 0
    f[:, 0, 0] = torch.tensor([0.0, 1.0])  # orthogonal to all: degree 0 too, first in row-major order
    fg, seed = lost_partition(f, k=100)
    assert seed == 0 and fg.tolist() == [[True, False, False], [False, False, False]]


# -- data readers -------------------------------------------------------------------------------------------

def voc_xml(objects: list[tuple[str, list[str], int]]) -> str:
    objs = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                   f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b, d in objects)
    return f"<annotation><size><width>40</width><height>30</height></size>{objs}</annotation>"


def make_voc(root: Path, year: str = "2007") -> Path:
    base = root / "VOCdevkit" / f"VOC{year}"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / sub).mkdir(parents=True)
    (base / "ImageSets/Main/trainval.txt").write_text("a\nb\nc\nd\ne\n")
    objects = [("cat", ["1", "1", "40", "30"], 0), ("dog", ["5", "6", "9", "9"], 1)]
    (base / "Annotations/a.xml").write_text(voc_xml(objects))
    (base / "Annotations/c.xml").write_text(voc_xml([]))
    (base / "Annotations/d.xml").write_text(voc_xml([("cat", ["x", "1", "4", "4"], 0)]))
    (base / "Annotations/e.xml").write_text("<annotation><object>")
    return root


def test_voc_reader_keeps_every_box_and_skips_with_reasons(tmp_path):
    root = make_voc(tmp_path)
    for where in (root, root / "VOCdevkit", root / "VOCdevkit/VOC2007"):
        a, b, c, d, e = read_voc(where, "2007")
        assert isinstance(a, Item) and a.image == root / "VOCdevkit/VOC2007/JPEGImages/a.jpg"
        assert a.boxes.tolist() == [[0, 0, 40, 30], [4, 5, 9, 9]]  # difficult kept; 1-based → continuous
        assert isinstance(b, Skipped) and b.reason.startswith("no annotation") and b.reason.endswith("b.xml")
        assert c == Skipped("c", "no ground-truth boxes")
        assert "without a numeric bndbox" in d.reason and "cannot read the annotation" in e.reason
    with pytest.raises(WrcError, match="is not a Pascal VOC 2012 folder"):
        read_voc(root, "2012")


def make_coco(root: Path, names: list[str], with_list: bool = True) -> Path:
    (root / "annotations").mkdir(parents=True)
    images = [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 40, "height": 30},
              {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "width": 40, "height": 30},
              {"id": 3, "file_name": "COCO_train2014_000000000003.jpg", "width": 40, "height": 30}]
    anns = [{"id": 10, "image_id": 1, "bbox": [0.5, 1.5, 10.0, 2.25], "iscrowd": 0, "category_id": 1},
            {"id": 11, "image_id": 1, "bbox": [2, 2, 5, 5], "iscrowd": 1, "category_id": 1},
            {"id": 12, "image_id": 2, "bbox": [0, 0, 4, 4], "iscrowd": 1, "category_id": 1},
            {"id": 13, "image_id": 3, "bbox": [3.7, 0, 1, 2.4], "category_id": 2},
            {"id": 14, "image_id": 99, "bbox": [0, 0, 1, 1], "iscrowd": 0, "category_id": 2}]
    (root / "annotations/instances_train2014.json").write_text(json.dumps({"images": images, "annotations": anns}))
    if with_list:
        (root / "coco_20k_filenames.txt").write_text("\n".join(names) + "\n")
    return root


def test_coco20k_reader_drops_crowds_and_rounds_half_to_even(tmp_path):
    names = [f"train2014/COCO_train2014_{i:012d}.jpg" for i in (3, 1, 2, 4)]
    root = make_coco(tmp_path / "coco", names)
    three, one, two, four = read_coco20k(root)
    assert three.image == root / "train2014/COCO_train2014_000000000003.jpg"
    assert three.boxes.tolist() == [[4, 0, 5, 2]]  # 3.7 → 4, 4.7 → 5, 2.4 → 2; no iscrowd key: kept
    assert one.boxes.tolist() == [[0, 2, 10, 4]]  # 0.5 → 0, 1.5 → 2, 10.5 → 10, 3.75 → 4; the crowd box dropped
    assert two == Skipped(names[2], "no ground-truth boxes")  # only a crowd box
    assert four.reason == "image id 4 is not in instances_train2014.json"
    listed = tmp_path / "list.txt"
    listed.write_text("COCO_train2014_000000000001.jpg\n")
    (only,) = read_coco20k(make_coco(tmp_path / "bare", [], with_list=False), listed)
    assert only.image == tmp_path / "bare/train2014/COCO_train2014_000000000001.jpg"
    with pytest.raises(WrcError, match="pass --filenames FILE"):
        read_coco20k(tmp_path / "bare")
    listed.write_text("train2014/not_a_coco_name.jpg\n")
    with pytest.raises(WrcError, match="not a COCO_train2014_<id>.jpg name"):
        read_coco20k(tmp_path / "bare", listed)


def test_generic_reader_skips_bad_lines(tmp_path):
    lines = ['{"image": "a.png", "boxes": [[1, 2, 3, 4], [0, 0, 5, 5]]}', "", "{oops",
             '{"image": "b.png"}', '{"image": "c.png", "boxes": []}', '{"image": "d.png", "boxes": [[3, 3, 1, 4]]}',
             '{"image": "e.png", "boxes": [["x"]]}']
    (tmp_path / "boxes.jsonl").write_text("\n".join(lines))
    a, bad_json, no_boxes_key, c, d, e = read_generic(tmp_path)
    assert a.image == tmp_path / "a.png" and a.boxes.tolist() == [[1, 2, 3, 4], [0, 0, 5, 5]]
    assert bad_json.name == "boxes.jsonl:3" and bad_json.reason.startswith("not JSON")
    assert no_boxes_key.reason == 'a line needs "image" and "boxes"'
    assert c == Skipped("c.png", "no ground-truth boxes")
    assert "empty or not finite" in d.reason and "list of [x1, y1, x2, y2]" in e.reason
    assert read_generic(tmp_path / "boxes.jsonl")[0].name == "a.png"
    with pytest.raises(WrcError, match="cannot read the boxes file"):
        read_generic(tmp_path / "nothing")


def test_bad_settings_are_refused():
    for kwargs, message in [({"method": "dino"}, "--method must be one of tokencut, lost"),
                            ({"imsize": 0}, "at least 1"), ({"limit": 0}, "--limit")]:
        with pytest.raises(WrcError, match=message):
            discovery_task("generic", "x", **kwargs)
    with pytest.raises(WrcError, match="--dataset must be one of voc07, voc12, coco20k, generic"):
        discovery_task("voc", "x")
    assert discovery_task("coco20k", "x").tau == 0.3 and discovery_task("voc12", "x").tau == 0.2
    assert discovery_task("voc07", "x", tau=0.4).tau == 0.4


# -- the run end to end (random-init ViT-S, tiny images) ----------------------------------------------------

def smooth(path: Path, w: int, h: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC).save(path)


def generic_set(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    smooth(folder / "a.png", 80, 60, 0)
    smooth(folder / "b.png", 50, 70, 1)
    lines = [{"image": "a.png", "boxes": [[0, 0, 80, 60]]}, {"image": "missing.png", "boxes": [[0, 0, 5, 5]]},
             {"image": "b.png", "boxes": [[10, 10, 40, 60], [0, 0, 50, 70]]}, {"image": "a.png", "boxes": []}]
    (folder / "boxes.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    return folder


def test_task_interface():
    task = discovery_task("generic", "x")
    assert isinstance(task, Task) and task.kind == "discovery" and list(task.metrics) == ["CorLoc"]
    for method in ("read", "features", "measure", "protocol", "dataset"):
        expected = list(inspect.signature(getattr(Task, method)).parameters)[1:]
        assert list(inspect.signature(getattr(task, method)).parameters) == expected, method


@pytest.mark.parametrize("method", ["tokencut", "lost"])
def test_run_reports_every_upsampler_and_skips_bad_images(method, tmp_path, vits_weights):
    root = generic_set(tmp_path / "set")
    cache = tmp_path / "cache"
    report = run_discovery("generic", str(root), upsamplers="bilinear,nearest", backbone=ARCH,
                           backbone_weights=str(vits_weights), device="cpu", progress=False, command="wrc eval x",
                           imsize=56, scale=2, method=method, cache=str(cache))
    assert [k for k in report if k in REPORT_KEYS] == list(REPORT_KEYS)
    assert set(report) - set(REPORT_KEYS) == {"per_image", "skipped"}
    assert list(cache.rglob("feats.npy")) and not list(cache.rglob("targets.npy"))  # boxes only: no target maps
    json.dumps(report, allow_nan=False)
    assert report["task"] == "discovery" and report["protocol"]["method"] == method
    assert report["protocol"]["grid"] == [8, 8] and report["protocol"]["cell_px"] == 7.0
    assert report["dataset"] | {"path": None} == {"kind": "generic", "path": None, "listed": 4, "limit": None,
                                                  "images": 2, "skipped": 2}
    assert report["skipped"] == [{"image": "missing.png", "reason": f"image {root / 'missing.png'} does not exist"},
                                 {"image": "a.png", "reason": "no ground-truth boxes"}]
    a, b = report["per_image"]
    assert a["image"] == "a.png" and a["size"] == [80, 60] and b["gt_boxes"] == [[10, 10, 40, 60], [0, 0, 50, 70]]
    for label in ("bilinear", "nearest"):
        row = report["results"][label]
        assert row["images"] == 2 and row["CorLoc"] == 50.0 * row["correct"]
        for image, (w, h) in ((a, (80, 60)), (b, (50, 70))):
            x1, y1, x2, y2 = image["found"][label]["box"]
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            assert image["found"][label]["correct"] == (image["found"][label]["iou"] >= 0.5)
    # the whole-image ground truth of a.png: any box of at least half the image is correct
    found = a["found"]["bilinear"]
    area = (found["box"][2] - found["box"][0]) * (found["box"][3] - found["box"][1])
    assert found["iou"] == pytest.approx(area / (80 * 60), abs=1e-4)
    again = run_discovery("generic", str(root), upsamplers="bilinear", backbone=ARCH,
                          backbone_weights=str(vits_weights), device="cpu", progress=False, imsize=56, scale=2,
                          method=method, cache=str(cache), limit=3)
    assert len(list(cache.iterdir())) == 1  # the same images and settings: the cache is reused
    assert again["per_image"][0]["found"]["bilinear"] == found and again["dataset"]["skipped"] == 1


def test_run_errors_are_one_line(tmp_path, vits_weights):
    (tmp_path / "boxes.jsonl").write_text(json.dumps({"image": "gone.png", "boxes": [[0, 0, 1, 1]]}))
    message = r"no images with ground-truth boxes .* \(1 skipped, e.g. gone.png: image .* does not exist\)"
    with pytest.raises(WrcError, match=message):
        run_discovery("generic", str(tmp_path), upsamplers="bilinear", backbone=ARCH, device="cpu",
                      backbone_weights=str(vits_weights), progress=False)
    generic_set(tmp_path / "set")
    with pytest.raises(WrcError, match="--imsize 50 is not a multiple of the patch size 14"):
        run_discovery("generic", str(tmp_path / "set"), upsamplers="bilinear", backbone=ARCH, device="cpu",
                      backbone_weights=str(vits_weights), progress=False, imsize=50)


# -- real data with the real DINOv2: 4 VOC07 trainval images, and a photograph with a hand-drawn box -----------
# Measured on a 2-core AMD EPYC (one thread), 448 ×2 (64² cells, dense eigh): the 4 VOC07 images (000002 a train
# of 69×102 px in 335×500; 000003 sofa + chair; 000004 seven cars; 000005 five chairs) hold small, several objects:
# every upsampler's TokenCut and LOST box is seeded in the background (sky, wall) and CorLoc is 0/4 for bilinear,
# converse2d (untrained) and wrc alike; the raw ×1 features also give 0/4. On the parrot photograph, which one
# object fills, every upsampler's box is correct: TokenCut IoU bilinear 0.942, wrc 0.988; LOST bilinear 0.959,
# wrc 0.767.

def real_run(dataset: str, root: Path, weights: Path, upsamplers: str, method: str) -> dict:
    return run_discovery(dataset, str(root), upsamplers=upsamplers, backbone=f"{ARCH}.lvd142m",
                         backbone_weights=str(weights), device="cpu", progress=False, imsize=224, scale=2,
                         method=method)  # 224 ×2: 32² cells, seconds per image on this CPU (448: 64², ~10 s per solve)


@pytest.fixture
def parrot(tmp_path) -> Path:
    """The parrot photograph (495×498) with its box drawn by eye: beak (x 72) to tail (x 432), the foot on the
    bars (y 22) to the bottom edge."""
    photo = PHOTOS / "cimg-parrot.jpg"
    if not photo.is_file():
        pytest.skip(f"{photo} not found")
    (tmp_path / "boxes.jsonl").write_text(json.dumps({"image": str(photo), "boxes": [[72, 22, 432, 498]]}))
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("method", ["tokencut", "lost"])
def test_real_parrot_is_found_by_bilinear_and_the_shipped_wrc(method, parrot, dinov2_weights):
    from wrcli.checkpoints import shipped_checkpoint

    upsamplers = "bilinear,wrc" if shipped_checkpoint("wrc", ARCH) else "bilinear"
    report = real_run("generic", parrot, dinov2_weights, upsamplers, method)
    (image,) = report["per_image"]
    for label, found in image["found"].items():
        assert found["correct"], (label, found)  # a random box of the image: IoU ≥ 0.5 far less often
        assert report["results"][label]["CorLoc"] == 100.0


@pytest.mark.slow
def test_real_voc07_tokencut_bilinear_and_shipped_wrc_as_measured(dinov2_weights):
    """What these 4 images give (see above), whichever wins: 0/4 for both at 224 ×2 as at 448 ×2 (2026-12-04);
    every box misses (IoU < 0.5)."""
    if not (VOC_DET / "VOCdevkit/VOC2007/ImageSets/Main/trainval.txt").is_file():
        pytest.skip(f"VOC07 detection samples not found under {VOC_DET}")
    from wrcli.checkpoints import shipped_checkpoint

    if shipped_checkpoint("wrc", ARCH) is None:
        pytest.skip(f"no shipped WRC checkpoint for {ARCH}")
    report = real_run("voc07", VOC_DET, dinov2_weights, "bilinear,wrc", "tokencut")
    assert report["dataset"]["images"] == 4 and report["skipped"] == []
    assert report["protocol"]["grid"] == [32, 32] and report["protocol"]["eigen_solver"] == "eigh"
    assert {label: row["CorLoc"] for label, row in report["results"].items()} == {"bilinear": 0.0, "wrc": 0.0}
    for image in report["per_image"]:
        for found in image["found"].values():
            assert found["iou"] < 0.5


def test_cli_table_json_and_usage_errors(tmp_path, vits_weights, capsys, monkeypatch):
    from tests.test_extract import run_cli

    root = generic_set(tmp_path / "set")
    args = ["eval", "discovery", str(root), "--dataset", "generic", "--upsampler", "bilinear", "--backbone", ARCH,
            "--backbone-weights", str(vits_weights), "--device", "cpu", "--imsize", "56"]
    code, out, _ = run_cli([*args, "--out", str(tmp_path / "r.json")], capsys, monkeypatch)
    assert code == 0 and "CorLoc" in out and "bilinear" in out and "tokencut" in out
    assert json.loads((tmp_path / "r.json").read_text())["task"] == "discovery"
    code, out, _ = run_cli([*args, "--json", "--method", "lost"], capsys, monkeypatch)
    assert code == 0 and json.loads(out)["protocol"]["method"] == "lost"
    assert run_cli([*args, "--method", "ncut"], capsys, monkeypatch)[0] == 2
    assert run_cli(["eval", "discovery", str(root), "--dataset", "voc"], capsys, monkeypatch)[0] == 2
