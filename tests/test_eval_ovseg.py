"""wrc eval ovseg: ProxyCLIP's proxy attention and MaskCLIP on constructed cases, the class lists and label maps,
the slide geometry, and the command end to end with a tiny random-init open_clip CLIP (no CLIP weights exist
here: the numbers only check the mechanics)."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from wrcli.errors import WrcError
from wrcli.eval.clip import (
    CLASS_LISTS,
    class_list,
    imagenet_templates,
    load_clip,
    text_embeddings,
    tokenizer_for,
)
from wrcli.eval.datasets import open_seg
from wrcli.eval.ovseg import (
    COCO171_LUT,
    COCO_OBJECT_LUT,
    classify,
    clip_dense,
    clip_values,
    cosine_logits,
    label_map,
    open_ovseg_data,
    ovseg_task,
    proxy_attention,
    resized_size,
    run_ovseg,
    windows,
)
from wrcli.eval.task import REPORT_KEYS, Task

from .conftest import ARCH

open_clip = pytest.importorskip("open_clip")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TINY = {"embed_dim": 16, "vision_cfg": {"image_size": 28, "layers": 2, "width": 32, "patch_size": 14, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> tuple[Path, Path]:
    """A random-init tiny CLIP: its open_clip config file and its weights (safetensors)."""
    import safetensors.torch

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clip")
    config = folder / "tiny-clip.json"
    config.write_text(json.dumps(TINY))
    model = open_clip.model.CLIP(**TINY)
    weights = folder / "tiny-clip.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    return config, weights


def dense_reference(guide: torch.Tensor, values: torch.Tensor, beta: float = 1.2, gamma: float = 3.0) -> torch.Tensor:
    """ProxyCLIP's attention written densely, as in its paper: (C,H,W), (D,H,W) → (D,H,W)."""
    f = F.normalize(guide.flatten(1).double(), dim=0)
    a = f.T @ f
    s = (a - a.mean() * beta) * gamma
    s[s < 0] = -math.inf
    return (torch.softmax(s, dim=1) @ values.flatten(1).double().T).T.reshape(values.shape)


# -- maths ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [1, 7, 30, 1 << 24])
def test_chunked_proxy_attention_equals_the_dense_one(chunk):
    g = torch.Generator().manual_seed(1)
    guide, values = torch.randn(8, 5, 6, generator=g), torch.randn(3, 5, 6, generator=g)
    out = proxy_attention(guide, values, chunk=chunk)
    assert out.shape == values.shape
    assert torch.allclose(out.double(), dense_reference(guide, values), rtol=1e-5, atol=1e-6)


def test_a_row_with_every_entry_masked_attends_to_itself():
    guide = torch.ones(4, 2, 3)  # every feature equal: A = 1, mean 1, S = γ(1 − β) < 0 everywhere
    values = torch.arange(6.0).reshape(1, 2, 3)
    assert torch.equal(proxy_attention(guide, values), values)


def test_identity_proxy_affinity_gives_maskclip(tiny_clip):
    config, weights = tiny_clip
    visual = load_clip(str(config), weights, torch.device("cpu")).visual
    image = torch.randn(1, 3, 56, 42)  # a 4 x 3 CLIP grid
    values = clip_values(visual, image)
    assert values.shape == (1, 32, 4, 3)
    guide = torch.eye(12).reshape(12, 4, 3)  # orthogonal VFM features: A = I, so W = I
    proxy = clip_dense(visual, proxy_attention(guide, values[0])[None])
    maskclip = clip_dense(visual, values)
    assert proxy.shape == (1, 16, 4, 3)
    assert torch.allclose(proxy, maskclip, rtol=1e-6, atol=1e-6 * float(maskclip.abs().max()))


def test_clip_values_follow_the_open_clip_forward(tiny_clip):
    """At the native size, the last block's residual stream from our split equals open_clip's own blocks."""
    config, weights = tiny_clip
    visual = load_clip(str(config), weights, torch.device("cpu")).visual
    image = torch.randn(2, 3, 28, 28)
    x = visual._embeds(image)
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)
    last = visual.transformer.resblocks[-1]
    v = F.linear(last.ln_1(x), *(p[64:] for p in (last.attn.in_proj_weight, last.attn.in_proj_bias)))
    assert torch.allclose(clip_values(visual, image), v[:, 1:].transpose(1, 2).reshape(2, 32, 2, 2), atol=1e-6)


def test_one_hot_text_embeddings_give_the_largest_channel():
    dense = torch.zeros(3, 2, 2)
    dense[0, 0, 0], dense[1, 0, 1], dense[2, 1, 0], dense[2, 1, 1] = 1.0, 2.0, 3.0, 0.5
    dense[0, 1, 1] = 0.4
    logits = cosine_logits(dense, torch.eye(3))
    assert classify(logits, torch.arange(3), 3).tolist() == [[0, 1], [2, 2]]
    # synonyms: queries 1 and 2 both name class 1; the class takes the best of them
    assert classify(logits, torch.tensor([0, 1, 1]), 2).tolist() == [[0, 1], [1, 1]]


def test_probability_threshold_sends_unsure_pixels_to_class_zero():
    logits = torch.tensor([[[0.0, 0.0]], [[1.0, 0.01]]])  # pixel 0: class 1 sure; pixel 1: nearly a tie
    # p(class 1) at pixel 1 = sigmoid(40 · 0.01) = 0.599
    assert classify(logits, torch.arange(2), 2, prob_thd=0.6).tolist() == [[1, 0]]
    assert classify(logits, torch.arange(2), 2, prob_thd=0.59).tolist() == [[1, 1]]


def test_resize_and_slide_windows_follow_mmseg():
    assert resized_size(500, 375, 336) == (448, 336)  # short side to 336
    assert resized_size(2048, 1024, 448) == (896, 448)  # Cityscapes
    assert resized_size(5000, 400, 336) == (2048, 164)  # the long side caps it
    assert windows(336, 448, 336, 112) == [(0, 336, 0, 336), (0, 336, 112, 448)]
    assert windows(336, 500, 336, 112) == [(0, 336, 0, 336), (0, 336, 112, 448), (0, 336, 164, 500)]
    assert windows(200, 300, 336, 112) == [(0, 200, 0, 300)]  # smaller than a crop: one window


# -- class lists, templates, label maps ---------------------------------------------------------------------------

def test_shipped_class_lists_and_templates():
    counts = {"voc21": 21, "voc20": 20, "context59": 59, "context60": 60, "cocostuff171": 171, "cocoobject": 81,
              "ade150": 150, "cityscapes": 19}
    assert set(counts) == set(CLASS_LISTS)
    for name, k in counts.items():
        lst = class_list(name)
        assert len(lst.classes) == k and len(lst.queries) == len(lst.query_class) >= k, name
    voc = class_list("voc21")
    assert voc.classes[:2] == ("background", "aeroplane") and voc.query_class[:3] == (0, 0, 0)
    assert len(voc.queries) == 20 + 26  # 26 background synonyms
    assert class_list("cocoobject").classes[80] == "toothbrush" and class_list("cocostuff171").classes[-1] == "wood"
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    assert imagenet_templates() == tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES) and len(imagenet_templates()) == 80


def test_class_list_file_and_errors(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("# comment\nsky: sky, clouds\ncat\n")
    lst = class_list(str(f))
    assert (lst.classes, lst.queries, lst.query_class) == (("sky", "cat"), ("sky", "clouds", "cat"), (0, 0, 1))
    with pytest.raises(WrcError, match="neither"):
        class_list("voc22")


def test_coco_label_maps():
    assert sum(v != 255 for v in COCO171_LUT) == 171
    assert (COCO171_LUT[0], COCO171_LUT[10], COCO171_LUT[11], COCO171_LUT[12], COCO171_LUT[181]) == (0, 10, 255, 11, 170)
    assert (COCO_OBJECT_LUT[0], COCO_OBJECT_LUT[89], COCO_OBJECT_LUT[91], COCO_OBJECT_LUT[181]) == (1, 80, 0, 0)
    assert COCO_OBJECT_LUT[255] == 255 and COCO_OBJECT_LUT[90] == 255


def test_label_maps_by_dataset_and_class_list(tmp_path):
    reduce = label_map("ade20k", class_list("ade150"), 151)
    assert (reduce[0], reduce[1], reduce[150], reduce[255]) == (255, 0, 149, 255)
    assert label_map("voc", class_list("voc20"), 21) is reduce and label_map("voc", class_list("voc21"), 21) is None
    with pytest.raises(WrcError, match="has 19 classes but the voc labels have 21"):
        label_map("voc", class_list("cityscapes"), 21)
    for d in ("images/val2017", "annotations/val2017"):
        (tmp_path / d).mkdir(parents=True)
    Image.new("RGB", (8, 6)).save(tmp_path / "images/val2017/000000000139.jpg")
    Image.fromarray(np.array([[0, 11, 91, 255]], dtype=np.uint8), mode="L").save(tmp_path / "annotations/val2017/000000000139.png")
    data = open_ovseg_data("auto", tmp_path)
    assert data.name == "cocostuff" and [s.name for s in data.val.samples] == ["000000000139"]
    lut = np.asarray(label_map("cocostuff", class_list("cocoobject"), len(data.classes)), dtype=np.uint8)
    assert lut[data.val.samples[0].load()[1]].tolist() == [[1, 255, 0, 255]]


def test_text_embeddings_are_unit_rows(tiny_clip):
    config, weights = tiny_clip
    clip = load_clip(str(config), weights, torch.device("cpu"))
    text = text_embeddings(clip, tokenizer_for(str(config)), ["cat", "dog", "traffic light"], imagenet_templates()[:5])
    assert text.shape == (3, 16)
    assert torch.allclose(text.norm(dim=1), torch.ones(3), atol=1e-6)


# -- end to end ----------------------------------------------------------------------------------------------

def make_voc(root: Path, n: int = 2) -> Path:
    """VOC2012 layout: n val images (half background, half class 8 'cat', a void border), one train image."""
    base = root / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = [f"2007_{i:06d}" for i in range(n + 1)]
    for i in ids:
        Image.fromarray(rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)).resize((70, 50)).save(base / "JPEGImages" / f"{i}.jpg")
        label = np.zeros((50, 70), dtype=np.uint8)
        label[:, 35:] = 8
        label[:, 34] = 255
        Image.fromarray(label, mode="L").save(base / "SegmentationClass" / f"{i}.png")
    (base / "ImageSets/Segmentation/train.txt").write_text(ids[0] + "\n")
    (base / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids[1:]) + "\n")
    return base


def ovseg(root: Path, vits_weights: Path, tiny_clip, upsamplers: str = "bilinear,nearest", **settings) -> dict:
    config, weights = tiny_clip
    return run_ovseg(root, upsamplers=upsamplers, backbone=ARCH, backbone_weights=str(vits_weights), device="cpu",
                     progress=False, clip_model=str(config), clip_weights=str(weights),
                     **{"imsize": 42, "crop": 42, "stride": 28, "scale": 2, **settings})


def test_end_to_end_on_a_voc_folder(tmp_path, vits_weights, tiny_clip):
    base = make_voc(tmp_path, 4)
    *_, wrong, bad = (base / "ImageSets/Segmentation/val.txt").read_text().split()
    (base / "SegmentationClass" / f"{bad}.png").write_bytes(b"not a png")
    Image.fromarray(np.full((50, 70), 30, dtype=np.uint8), mode="L").save(base / "SegmentationClass" / f"{wrong}.png")
    report = ovseg(tmp_path, vits_weights, tiny_clip, cache=str(tmp_path / "cache"))
    assert [k for k in report if k in REPORT_KEYS] == list(REPORT_KEYS)
    assert report["task"] == "ovseg" and report["metrics"] == ["mIoU", "aAcc"]
    assert list(report["results"]) == ["bilinear", "nearest"]
    for row in report["results"].values():
        assert 0 <= row["mIoU"] <= 100 and 0 <= row["aAcc"] <= 100
    per_class = report["per_class_iou"]["bilinear"]
    assert list(per_class)[:2] == ["background", "aeroplane"] and len(per_class) == 21
    assert report["dataset"]["images"] == 4 and report["dataset"]["evaluated"] == 2
    first, second = report["dataset"]["skipped"]
    assert first == {"image": wrong, "reason": "label values [30] are not classes 0..20 or 255 (ignore)"}
    assert second["image"] == bad and "cannot read the sample" in second["reason"] and "\n" not in second["reason"]
    p = report["protocol"]
    assert (p["method"], p["classes"], p["prob_thd"], p["scale"], p["crop"]) == ("proxyclip", "voc21", 0.2, 2, 42)
    json.dumps(report, allow_nan=False)
    again = ovseg(tmp_path, vits_weights, tiny_clip, cache=str(tmp_path / "cache"))  # from the cache: same numbers
    assert again["results"]["bilinear"]["mIoU"] == report["results"]["bilinear"]["mIoU"]


def test_missing_files_are_skipped_images_and_train_txt_is_not_needed(tmp_path, vits_weights, tiny_clip):
    base = make_voc(tmp_path, 4)
    first, no_label, no_image, last = (base / "ImageSets/Segmentation/val.txt").read_text().split()
    (base / "SegmentationClass" / f"{no_label}.png").unlink()
    (base / "JPEGImages" / f"{no_image}.jpg").unlink()
    (base / "ImageSets/Segmentation/train.txt").unlink()  # only val is read
    report = ovseg(tmp_path, vits_weights, tiny_clip, upsamplers="bilinear")
    d = report["dataset"]
    assert (d["images"], d["evaluated"]) == (4, 2)
    assert d["skipped"] == [{"image": no_label, "reason": f"label file {base}/SegmentationClass/{no_label}.png is missing"},
                            {"image": no_image, "reason": f"image file {base}/JPEGImages/{no_image}.jpg is missing"}]
    assert 0 <= report["results"]["bilinear"]["mIoU"] <= 100
    assert [s.name for s in open_ovseg_data("voc", tmp_path).val.samples] == [first, last]
    with pytest.raises(OSError, match="train.txt"):  # the probes still need the train split
        open_seg("voc", tmp_path)
    for i in (first, last):
        (base / "SegmentationClass" / f"{i}.png").unlink()
    with pytest.raises(WrcError, match=r"no image of split val can be evaluated: each of the 4 listed lacks a file "
                                       r"\(first: label file .*is missing\)$"):
        ovseg(tmp_path, vits_weights, tiny_clip, upsamplers="bilinear")


def test_the_task_implements_the_one_interface(tmp_path):
    task = ovseg_task(tmp_path)
    assert isinstance(task, Task) and task.kind == "ovseg" and list(task.metrics) == ["mIoU", "aAcc"]
    for method in ("read", "features", "measure", "protocol", "dataset"):
        expected = list(inspect.signature(getattr(Task, method)).parameters)[1:]
        assert list(inspect.signature(getattr(task, method)).parameters) == expected, method


def test_maskclip_and_voc20(tmp_path, vits_weights, tiny_clip):
    make_voc(tmp_path, 2)
    report = ovseg(tmp_path, vits_weights, tiny_clip, upsamplers="bilinear", method="maskclip", classes="voc20")
    assert report["protocol"]["method"] == "maskclip" and len(report["per_class_iou"]["bilinear"]) == 20
    assert report["protocol"]["label_map"] == "0 -> 255, k -> k-1"
    with pytest.raises(WrcError, match="trained for the backbone"):
        ovseg(tmp_path, vits_weights, tiny_clip, upsamplers="bilinear,wrc", method="maskclip")


def test_bad_settings_fail_before_any_model(tmp_path, vits_weights, tiny_clip):
    make_voc(tmp_path, 1)
    with pytest.raises(WrcError, match="--method"):
        ovseg(tmp_path, vits_weights, tiny_clip, method="sclip")
    with pytest.raises(WrcError, match="has 150 classes but the voc labels have 21"):
        ovseg(tmp_path, vits_weights, tiny_clip, classes="ade150")
    with pytest.raises(WrcError, match="CLIP weights .* not found"):
        run_ovseg(tmp_path, upsamplers="bilinear", backbone=ARCH, backbone_weights=str(vits_weights), device="cpu",
                  progress=False, clip_weights=str(tmp_path / "none.safetensors"))


# -- real data: 3 VOC val images, the real DINOv2 and a random CLIP (mechanics only) --------------------------------

def voc_colormap() -> dict[tuple[int, int, int], int]:
    """The VOC palette: colour of index i from the bits of i, interleaved into r, g, b."""
    table = {}
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        table[(r, g, b)] = i
    return table


@pytest.mark.slow
def test_real_voc_samples_run_with_dinov2(tmp_path, dinov2_weights, tiny_clip):
    samples = SHARED / "data/seg-samples/voc/samples"
    if not samples.is_dir():
        pytest.skip(f"VOC samples not found at {samples}")
    base = tmp_path / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / d).mkdir(parents=True)
    colours = voc_colormap()
    ids = sorted(p.name.removesuffix("_image.png") for p in samples.glob("*_image.png"))
    for i in ids:
        Image.open(samples / f"{i}_image.png").convert("RGB").save(base / "JPEGImages" / f"{i}.jpg", quality=95)
        rgb = np.asarray(Image.open(samples / f"{i}_target.png").convert("RGB"))
        index = np.vectorize(lambda r, g, b: colours.get((r, g, b), 255), otypes=[np.uint8])(*rgb.transpose(2, 0, 1))
        Image.fromarray(index, mode="L").save(base / "SegmentationClass" / f"{i}.png")
    (base / "ImageSets/Segmentation/train.txt").write_text(ids[0] + "\n")
    (base / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
    config, weights = tiny_clip
    report = run_ovseg(tmp_path, upsamplers="bilinear", backbone=f"{ARCH}.lvd142m", backbone_weights=str(dinov2_weights),
                       device="cpu", progress=False, clip_model=str(config), clip_weights=str(weights), scale=2)
    assert report["dataset"]["evaluated"] == 3 and not report["dataset"]["skipped"]
    assert 0 <= report["results"]["bilinear"]["mIoU"] <= 100


def test_cli_table_json_and_usage_errors(tmp_path, vits_weights, tiny_clip, capsys, monkeypatch):
    from tests.test_extract import run_cli

    make_voc(tmp_path, 2)
    config, weights = tiny_clip
    args = ["eval", "ovseg", str(tmp_path), "--upsampler", "bilinear", "--backbone", ARCH, "--backbone-weights",
            str(vits_weights), "--device", "cpu", "--clip-model", str(config), "--clip-weights", str(weights),
            "--imsize", "42", "--crop", "42", "--stride", "28", "--scale", "2"]
    code, out, _ = run_cli(args, capsys, monkeypatch)
    assert code == 0 and "mIoU" in out and "bilinear" in out
    code, out, _ = run_cli([*args, "--json", "--method", "maskclip", "--prob-thd", "0.5"], capsys, monkeypatch)
    report = json.loads(out)
    assert code == 0 and (report["protocol"]["method"], report["protocol"]["prob_thd"]) == ("maskclip", 0.5)
    assert run_cli([*args, "--method", "clip"], capsys, monkeypatch)[0] == 2
    assert run_cli([*args, "--dataset", "pascal"], capsys, monkeypatch)[0] == 2
