"""wrcli.data: discovery of image lists, the resize policy, decoding of good, odd and bad files, the Dataset."""

from __future__ import annotations

import io
import json
import os
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin

from wrcli.data import IMAGE_EXTENSIONS, ImageDataset, ImageError, ResizePolicy, Source, discover, load_image
from wrcli.data import images as images_mod
from wrcli.data.names import name_bytes
from wrcli.errors import WrcError

POLICY = ResizePolicy()


def save(path: Path, array: np.ndarray | Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = array if isinstance(array, Image.Image) else Image.fromarray(array)
    img.save(path, **kwargs)
    return path


def rgb(h: int = 32, w: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def quadrants(h: int, w: int) -> np.ndarray:
    """Red, green / blue, yellow quadrants: survive resizing and JPEG, and show any rotation."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = (255, 0, 0)
    a[: h // 2, w // 2 :] = (0, 255, 0)
    a[h // 2 :, : w // 2] = (0, 0, 255)
    a[h // 2 :, w // 2 :] = (255, 255, 0)
    return a


def opened(path: Path) -> Image.Image:
    """The file decoded by Pillow alone (its first frame), with the file closed again."""
    with Image.open(path) as img:
        img.load()
        return img


def reason(path: Path | str, policy: ResizePolicy = POLICY) -> str:
    with pytest.raises(ImageError) as info:
        load_image(str(path), policy)
    return info.value.reason


# ---------------------------------------------------------------- discovery


def test_folder_is_recursive_sorted_and_filters_by_extension(tmp_path):
    root = tmp_path / "imgs"
    for rel in ["b/Z.JPG", "b/c/d.png", "a.Tiff", "m.jpeg", "b/x.webp", "n.PBM"]:
        save(root / rel, rgb(), **({"format": "PPM"} if rel.endswith("PBM") else {}))
    (root / "notes.txt").write_text("not an image")
    (root / "raw.cr2").write_bytes(b"\0")
    save(root / ".hidden.jpg", rgb())
    save(root / ".cache" / "in_hidden.png", rgb())
    (root / "dir.jpg").mkdir()  # a folder with an image extension is walked, not listed
    save(root / "dir.jpg" / "inner.png", rgb())
    source = discover(str(root))
    names = [name for name, _ in source.items]
    assert names == ["a.Tiff", "b/Z.JPG", "b/c/d.png", "b/x.webp", "dir.jpg/inner.png", "m.jpeg", "n.PBM"]
    assert source.kind == "folder" and source.root == str(root)
    assert all(fs == os.path.join(str(root), name) and os.path.isfile(fs) for name, fs in source.items)


def test_folder_follows_symlinks_without_looping_and_keeps_broken_links(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    save(root / "a" / "1.png", rgb())
    save(outside / "o.png", rgb())
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)  # back to an ancestor
    (root / "b_same").symlink_to(root / "a", target_is_directory=True)  # a second way into a visited folder
    (root / "ext").symlink_to(outside, target_is_directory=True)
    (root / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    names = [name for name, _ in discover(str(root)).items]
    assert names == ["a/1.png", "ext/o.png", "gone.jpg"]
    assert reason(root / "gone.jpg") == "broken symlink"


def test_unreadable_subfolder_is_skipped_with_a_warning(tmp_path, monkeypatch):
    root = tmp_path / "root"
    save(root / "ok.png", rgb())
    save(root / "locked" / "x.png", rgb())
    real_scandir = os.scandir

    def scandir(path):
        if os.path.basename(path) == "locked":
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.warns(UserWarning, match=r"skipping unreadable folder .*locked.*Permission denied"):
        source = discover(str(root))
    assert [name for name, _ in source.items] == ["ok.png"]


def test_unicode_and_spaces_round_trip(tmp_path):
    names = ["café/日本 語.png", " leading space.jpg", "trailing space .png", "a  b/ç é.webp"]
    for name in names:
        save(tmp_path / "root" / name, rgb())
    source = discover(str(tmp_path / "root"))
    assert [n for n, _ in source.items] == sorted(names)
    for _, fs in source.items:
        assert load_image(fs, POLICY)[0].shape == (448, 672, 3)
    listing = tmp_path / "root" / "list.txt"
    listing.write_text("\n".join(names) + "\n", encoding="utf-8")
    assert [n for n, _ in discover(str(listing)).items] == names
    assert [n for n, _ in discover("-", stdin=io.StringIO("\n".join(names))).items] == names


def test_glob_matches_image_files_only_sorted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for rel in ["g/b.png", "g/a.PNG", "g/sub/c.png", "g/sub/d.jpg", "g/e.txt"]:
        save(tmp_path / rel, rgb()) if not rel.endswith("txt") else (tmp_path / rel).write_text("x")
    (tmp_path / "g" / "folder.png").mkdir()
    source = discover("g/**/*.[pP][nN][gG]")
    assert source.kind == "glob" and source.root is None
    assert [n for n, _ in source.items] == ["g/a.PNG", "g/b.png", "g/sub/c.png"]
    assert all(n == fs for n, fs in source.items)
    assert [n for n, _ in discover("g/*").items] == ["g/a.PNG", "g/b.png"]
    with pytest.raises(WrcError, match=r"no images found matching 'g/\*\.gif'"):
        discover("g/*.gif")
    (tmp_path / "g" / "sub" / "up").symlink_to(tmp_path / "g", target_is_directory=True)  # a loop for **
    assert [n for n, _ in discover("g/**/*.png").items] == ["g/b.png", "g/sub/c.png"]


def test_literal_path_with_glob_characters_is_not_a_pattern(tmp_path):
    folder = tmp_path / "shots[1]"
    save(folder / "x.png", rgb())
    assert discover(str(folder)).kind == "folder"


def test_list_file_resolves_relative_paths_against_its_folder(tmp_path, monkeypatch):
    save(tmp_path / "data" / "imgs" / "a.png", rgb())
    save(tmp_path / "elsewhere.png", rgb())
    listing = tmp_path / "data" / "list.lst"
    listing.write_bytes(
        f"# comment\r\nimgs/a.png\r\n\n  imgs/spaced.png  \n{tmp_path / 'elsewhere.png'}\nmissing.jpg".encode()
    )
    monkeypatch.chdir(tmp_path)
    source = discover("data/list.lst")
    assert source.kind == "list" and source.root is None
    assert source.items == (
        ("imgs/a.png", os.path.join("data", "imgs/a.png")),
        ("  imgs/spaced.png  ", os.path.join("data", "  imgs/spaced.png  ")),
        (str(tmp_path / "elsewhere.png"), str(tmp_path / "elsewhere.png")),
        ("missing.jpg", os.path.join("data", "missing.jpg")),
    )
    assert load_image(source.items[0][1], POLICY)[1] == (32, 48)
    assert reason(source.items[3][1]) == "file not found"


def test_stdin_paths_are_taken_as_written():
    stdin = io.StringIO("a.jpg\n# skipped\n\n b c.png \nd/e.tif\n")
    source = discover("-", stdin=stdin)
    assert source.kind == "stdin"
    assert source.items == (("a.jpg", "a.jpg"), (" b c.png ", " b c.png "), ("d/e.tif", "d/e.tif"))
    with pytest.raises(WrcError, match="no images found on stdin"):
        discover("-", stdin=io.StringIO("# nothing\n\n"))


def test_process_stdin_is_read_as_bytes(monkeypatch):
    raw = "café.jpg\n".encode() + b"latin1-\xe9.png\n"  # one UTF-8 name, one that is not
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(raw)))
    items = discover("-").items
    assert [n for n, _ in items] == ["café.jpg", "latin1-\\xe9.png"]  # recorded as text (wrcli.data.names)
    assert name_bytes(items[1][0]) == os.fsencode(items[1][1]) == b"latin1-\xe9.png"


def test_single_image_and_limit(tmp_path):
    image = save(tmp_path / "one.JPG", rgb())
    assert discover(str(image)).items == ((str(image), str(image)),)
    for i in range(5):
        save(tmp_path / "many" / f"{i}.png", rgb())
    source = discover(str(tmp_path / "many"), limit=3)
    assert [n for n, _ in source.items] == ["0.png", "1.png", "2.png"]
    assert discover(str(tmp_path / "many"), limit=50).items == discover(str(tmp_path / "many")).items


def test_sha256_depends_on_names_and_order_only():
    a = Source("folder", "/x", (("a.png", "/x/a.png"), ("b.png", "/x/b.png")))
    moved = Source("folder", "/y", (("a.png", "/y/a.png"), ("b.png", "/y/b.png")))
    swapped = Source("folder", "/x", (("b.png", "/x/b.png"), ("a.png", "/x/a.png")))
    joined = Source("list", None, (("a.pngb.png", "z"),))
    assert a.sha256() == moved.sha256() == Source("glob", None, a.items).sha256()
    assert len({a.sha256(), swapped.sha256(), joined.sha256()}) == 3
    assert len(a.sha256()) == 64


def _missing(p: Path) -> str:
    return str(p / "nope")


def _empty_folder(p: Path) -> str:
    (p / "empty").mkdir()
    return str(p / "empty")


def _folder_without_images(p: Path) -> str:
    (p / "t").mkdir()
    (p / "t" / "a.txt").write_text("x")
    save(p / "t" / ".hidden.png", rgb())
    return str(p / "t")


def _comments_only_list(p: Path) -> str:
    (p / "l.txt").write_text("# only\n\n")
    return str(p / "l.txt")


def _binary_non_image(p: Path) -> str:
    (p / "x.avif").write_bytes(b"\0\0\0 ftypavif")
    return str(p / "x.avif")


def _broken_link(p: Path) -> str:
    (p / "dead").symlink_to(p / "void")
    return str(p / "dead")


@pytest.mark.parametrize(
    "make, match",
    [
        (_missing, r"'.*nope' does not exist; give a folder"),
        (_empty_folder, r"no images found in '.*empty' \(looked recursively for .*\.jpg"),
        (_folder_without_images, r"no images found in '.*t' .*hidden files and folders are skipped"),
        (_comments_only_list, r"no images found in list file"),
        (_binary_non_image, r"neither an image .* nor a text list"),
        (_broken_link, r"is a broken symlink"),
    ],
)
def test_discover_errors_are_one_line(tmp_path, make, match):
    with pytest.raises(WrcError, match=match) as info:
        discover(make(tmp_path))
    assert "\n" not in str(info.value)


def test_limit_must_be_positive(tmp_path):
    save(tmp_path / "a.png", rgb())
    with pytest.raises(WrcError, match="at least 1"):
        discover(str(tmp_path), limit=0)


def test_extensions():
    assert {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".pnm"} <= IMAGE_EXTENSIONS
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)


# ---------------------------------------------------------------- resize policy


@pytest.mark.parametrize(
    "policy, orig, expected",
    [
        (ResizePolicy(), (1000, 1000), (448, 448)),
        (ResizePolicy(), (480, 640), (448, 602)),  # 597.3 → 602
        (ResizePolicy(), (640, 480), (602, 448)),
        (ResizePolicy(), (17, 31), (448, 812)),  # small images are enlarged
        (ResizePolicy(), (100, 1000), (84, 896)),  # long side capped at 2*size, short side follows
        (ResizePolicy(), (14, 10000), (14, 896)),  # never below one patch
        (ResizePolicy(crop=True), (300, 900), (448, 448)),
        (ResizePolicy(size=500), (500, 500), (504, 504)),  # size rounds to the nearest patch multiple
        (ResizePolicy(size=224, patch=16), (480, 640), (224, 304)),
        (ResizePolicy(max_side=300), (480, 640), (224, 294)),  # max_side rounds down to a patch multiple
        (ResizePolicy(size=5), (40, 40), (14, 14)),
    ],
)
def test_input_hw_examples(policy, orig, expected):
    assert policy.input_hw(orig) == expected


@pytest.mark.parametrize(
    "policy",
    [ResizePolicy(), ResizePolicy(size=224, patch=16), ResizePolicy(size=518, max_side=700), ResizePolicy(size=100, patch=7, crop=True)],
)
def test_input_hw_properties(policy):
    rng = random.Random(0)
    p, cap, short = policy.patch, policy.long_cap, policy.short_side
    max_h, max_w = policy.max_input_hw()
    sizes = [(rng.randint(1, 6000), rng.randint(1, 6000)) for _ in range(2000)]
    sizes += [(rng.randint(1, 40), rng.randint(1000, 20000)) for _ in range(200)]  # extreme aspect ratios
    for h, w in sizes + [(w, h) for h, w in sizes]:
        H, W = policy.input_hw((h, w))
        assert H % p == 0 and W % p == 0 and H >= p and W >= p
        assert H <= max_h and W <= max_w
        if policy.crop:
            assert (H, W) == (short, short)
            continue
        k = min(short / min(h, w), cap / max(h, w))
        for got, ideal in ((H, h * k), (W, w * k)):
            assert abs(got - ideal) <= p / 2 + 1e-9 or got == p
        if max(h, w) * short / min(h, w) <= cap:
            assert min(H, W) == short  # uncapped: the short side hits its target exactly
        assert policy.input_hw((w, h)) == (W, H)  # rotating the image rotates the answer


def test_max_input_hw_and_to_dict():
    assert ResizePolicy().max_input_hw() == (896, 896)
    assert ResizePolicy(crop=True).max_input_hw() == (448, 448)
    assert ResizePolicy(max_side=1000).max_input_hw() == (994, 994)
    d = ResizePolicy().to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["max_side"] == 896 and d["min_side"] == 14 and d["alpha_background"] == [255, 255, 255]
    fields = {k: d[k] for k in ("size", "patch", "crop", "max_side", "min_side")}
    assert ResizePolicy(**fields).input_hw((123, 4567)) == ResizePolicy().input_hw((123, 4567))


@pytest.mark.parametrize("kwargs", [{"size": 0}, {"patch": 0}, {"max_side": 10}, {"min_side": 0}])
def test_invalid_policy(kwargs):
    with pytest.raises(WrcError):
        ResizePolicy(**kwargs)


def test_input_hw_rejects_empty_images():
    with pytest.raises(ValueError):
        POLICY.input_hw((0, 10))


# ---------------------------------------------------------------- decoding


def test_good_image_matches_a_plain_resize(tmp_path):
    a = rgb(300, 400)
    path = save(tmp_path / "a.png", a)
    pixels, orig = load_image(str(path), POLICY)
    assert orig == (300, 400) and pixels.shape == (448, 602, 3) and pixels.dtype == np.uint8
    assert pixels.flags.writeable and pixels.flags.c_contiguous
    expected = np.asarray(Image.fromarray(a).resize((602, 448), Image.Resampling.BICUBIC, reducing_gap=3.0))
    np.testing.assert_array_equal(pixels, expected)


def test_crop_keeps_the_centre_square(tmp_path):
    a = np.zeros((300, 600, 3), np.uint8)
    a[:, :100] = (255, 0, 0)  # the crop keeps columns 150..450
    a[:, 100:500] = (0, 0, 255)
    a[:, 500:] = (255, 0, 0)
    pixels, orig = load_image(str(save(tmp_path / "c.png", a)), ResizePolicy(crop=True))
    assert orig == (300, 600) and pixels.shape == (448, 448, 3)
    assert np.abs(pixels.astype(int) - (0, 0, 255)).max() <= 2  # the red margins were cropped away


def test_corrupt_jpeg(tmp_path):
    data = bytearray((save(tmp_path / "ok.jpg", rgb(64, 64), quality=90)).read_bytes())
    sos = data.find(b"\xff\xda")
    data[sos + 2 : sos + 12] = bytes(10)  # damage the start-of-scan header
    (tmp_path / "bad.jpg").write_bytes(bytes(data))
    assert reason(tmp_path / "bad.jpg") == "corrupt JPEG data"


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_truncated_files_fail(tmp_path, fmt):
    data = save(tmp_path / f"ok.{fmt}", rgb(128, 128)).read_bytes()
    for cut in (len(data) // 2, len(data) - 30):
        (tmp_path / f"cut.{fmt}").write_bytes(data[:cut])
        assert reason(tmp_path / f"cut.{fmt}") == "truncated file"


def test_file_level_failures(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello, I am not a JPEG\n")
    (tmp_path / "dir.png").mkdir()
    assert reason(tmp_path / "zero.jpg") == "zero-byte file"
    assert reason(tmp_path / "text.jpg").startswith("not an image")
    assert reason(tmp_path / "dir.png") == "a folder, not an image file"
    assert reason(tmp_path / "missing.png") == "file not found"


def test_decompression_bomb_limits(tmp_path, monkeypatch):
    path = str(save(tmp_path / "big.png", rgb(100, 100)))
    filters = list(warnings.filters)
    monkeypatch.setattr(images_mod, "MAX_IMAGE_PIXELS", 5000)
    assert reason(path) == "decompression bomb (10000 pixels > 5000)"
    monkeypatch.setattr(images_mod, "MAX_IMAGE_PIXELS", None)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 8000)  # Pillow's warning zone (limit < pixels ≤ 2 × limit)
    assert reason(path) == "decompression bomb (10000 pixels > 8000)"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # Pillow's error zone
    assert reason(path) == "decompression bomb (10000 pixels > 2000)"
    assert warnings.filters == filters
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert load_image(path, POLICY)[1] == (100, 100)


def test_too_small(tmp_path):
    path = save(tmp_path / "tiny.png", rgb(3, 5))
    with pytest.raises(ImageError) as info:
        load_image(str(path), POLICY)
    assert info.value.reason == "smaller than one patch (5x3 < 14)" and info.value.orig_hw == (3, 5)
    assert reason(save(tmp_path / "small.png", rgb(20, 30)), ResizePolicy(min_side=32)).startswith("smaller than the minimum side")


def test_cmyk_jpeg_colours(tmp_path):
    a = quadrants(448, 448)
    path = save(tmp_path / "cmyk.jpg", Image.fromarray(a).convert("CMYK"), quality=95)
    assert opened(path).mode == "CMYK" and "adobe" in opened(path).info  # Adobe, inverted CMYK
    pixels, _ = load_image(str(path), POLICY)
    assert np.abs(pixels.astype(int) - a).mean() < 3


def test_16_bit_greyscale_uses_the_full_range(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 280).astype(np.uint16), (28, 1))
    path = save(tmp_path / "ramp16.png", ramp)
    assert opened(path).mode.startswith("I;16")
    pixels, orig = load_image(str(path), ResizePolicy(size=28, max_side=280))
    assert orig == (28, 280) and pixels.shape == (28, 280, 3)
    row = pixels[14, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and np.all(np.diff(row) >= 0)
    assert (row == 255).sum() <= 2  # scaled, not clipped
    assert np.array_equal(pixels[..., 0], pixels[..., 2])


def test_float_and_32_bit_greyscale(tmp_path):
    ramp = np.tile(np.linspace(0, 1, 280, dtype=np.float32), (28, 1))
    policy = ResizePolicy(size=28, max_side=280)
    for name, array in [("f.tif", ramp), ("wide.tif", (ramp * 1e6 - 5e5).astype(np.int32))]:
        row = load_image(str(save(tmp_path / name, array)), policy)[0][14, :, 0].astype(int)
        assert row[0] == 0 and row[-1] == 255 and np.all(np.diff(row) >= 0)


def test_transparency_is_composited_over_white(tmp_path):
    pal = Image.new("P", (28, 28), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(1, (14, 0, 28, 28))
    pal.info["transparency"] = 1
    pixels = load_image(str(save(tmp_path / "pal.png", pal, transparency=1)), ResizePolicy(size=28))[0]
    assert tuple(pixels[14, 3]) == (255, 0, 0) and tuple(pixels[14, 24]) == (255, 255, 255)

    a = np.zeros((28, 42, 4), np.uint8)
    a[..., :3] = (0, 128, 0)
    a[:, 14:28, 3] = 255
    a[:, 28:, 3] = 128
    pixels = load_image(str(save(tmp_path / "rgba.png", a)), ResizePolicy(size=28))[0].astype(int)
    assert tuple(pixels[14, 5]) == (255, 255, 255)  # alpha 0, whatever its colour
    assert tuple(pixels[14, 20]) == (0, 128, 0)
    assert np.abs(pixels[14, 36] - (127, 191, 127)).max() <= 2

    la = Image.fromarray(np.dstack([np.zeros((28, 28), np.uint8), np.full((28, 28), 0, np.uint8)]), "LA")
    assert tuple(load_image(str(save(tmp_path / "la.png", la)), ResizePolicy(size=28))[0][5, 5]) == (255, 255, 255)


def test_modes_all_become_rgb(tmp_path):
    base = Image.fromarray(quadrants(56, 56))
    policy = ResizePolicy(size=56)
    for mode in ["1", "L", "P", "RGB", "CMYK", "I", "F", "RGBA"]:
        suffix = "tif" if mode in ("CMYK", "I", "F") else "png"
        pixels, orig = load_image(str(save(tmp_path / f"m_{mode}.{suffix}", base.convert(mode))), policy)
        assert pixels.shape == (56, 56, 3) and orig == (56, 56), mode
    for fmt in ["bmp", "ppm", "webp", "gif"]:
        assert load_image(str(save(tmp_path / f"x.{fmt}", base)), policy)[0].shape == (56, 56, 3)


def test_exif_orientation_6_rotates_clockwise(tmp_path):
    a = quadrants(60, 90)
    exif = Image.Exif()
    exif[0x0112] = 6
    policy = ResizePolicy(size=84)
    for name in ["o6.jpg", "o6.png"]:
        pixels, orig = load_image(str(save(tmp_path / name, a, exif=exif, quality=95)), policy)
        assert orig == (90, 60) and pixels.shape == (126, 84, 3)  # portrait now
        upright = np.rot90(a, k=-1)  # orientation 6: turn 90° clockwise to display
        for y, x in [(30, 20), (30, 60), (95, 20), (95, 60)]:
            expected = upright[y * 90 // 126, x * 60 // 84]
            assert np.abs(pixels[y, x].astype(int) - expected).max() < 20, (name, y, x)


def test_animated_gif_uses_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (40, 30), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40, loop=0)
    with Image.open(path) as gif:
        assert gif.n_frames == 3
    pixels, orig = load_image(str(path), POLICY)
    assert orig == (30, 40) and np.all(pixels == (255, 0, 0))


def test_big_jpeg_uses_draft_with_nearly_the_same_pixels(tmp_path, monkeypatch):
    smooth = Image.fromarray(rgb(30, 40)).resize((4000, 3000), Image.Resampling.BICUBIC)
    noisy = np.clip(np.asarray(smooth, dtype=np.int16) + np.random.default_rng(1).integers(-20, 21, (3000, 4000, 3)), 0, 255)
    path = save(tmp_path / "big.jpg", noisy.astype(np.uint8), quality=90)
    drafted = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = real_draft(self, mode, size)
        drafted.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    pixels, orig = load_image(str(path), POLICY)
    assert orig == (3000, 4000) and pixels.shape == (448, 602, 3)
    assert drafted == [(2000, 1500)]  # decoded at half scale, still ≥ 2× the output
    full = opened(path).convert("RGB").resize((602, 448), Image.Resampling.BICUBIC, reducing_gap=3.0)
    diff = np.abs(pixels.astype(int) - np.asarray(full, dtype=int))
    assert diff.mean() < 1.0 and diff.max() <= 12


# ---------------------------------------------------------------- dataset


def test_dataset_in_dataloader_workers(tmp_path):
    good = [save(tmp_path / f"good{i}.png", rgb(30 + 10 * i, 40)) for i in range(3)]
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("nope")
    data = save(tmp_path / "t.jpg", rgb(64, 64)).read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    tiny = save(tmp_path / "tiny.png", rgb(3, 5))
    paths = [good[0], tmp_path / "zero.jpg", good[1], tmp_path / "text.png", tmp_path / "gone.png",
             tmp_path / "trunc.jpg", tiny, good[2]]
    items = [(100 + i, str(p)) for i, p in enumerate(paths)]
    loader = torch.utils.data.DataLoader(ImageDataset(items, POLICY), batch_size=None, num_workers=2)
    out = list(loader)
    assert [o["index"] for o in out] == [i for i, _ in items]
    for o, p in zip(out, paths):
        if p in good:
            assert o["error"] is None and o["pixels"].dtype == torch.uint8
            h, w = opened(p).size[::-1]
            assert tuple(o["orig_hw"]) == (h, w) and tuple(o["pixels"].shape) == (3, *POLICY.input_hw((h, w)))
            np.testing.assert_array_equal(o["pixels"].permute(1, 2, 0).numpy(), load_image(str(p), POLICY)[0])
        else:
            assert o["pixels"] is None and isinstance(o["error"], str) and o["error"]
    errors = {p.name: o["error"] for o, p in zip(out, paths) if o["error"]}
    assert errors == {
        "zero.jpg": "zero-byte file",
        "text.png": "not an image (unknown format or damaged header)",
        "gone.png": "file not found",
        "trunc.jpg": "truncated file",
        "tiny.png": "smaller than one patch (5x3 < 14)",
    }
    assert tuple(out[6]["orig_hw"]) == (3, 5)
