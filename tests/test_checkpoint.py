"""Checkpoints: wrcli safetensors round trips, validation against the backbone, corrupt files, and the
authors' official .pth state dicts (weights only, never unpickled)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import wrcli
from wrcli.errors import WrcError
from wrcli.models import create_upsampler, load_upsampler, read_checkpoint_config, save_upsampler
from wrcli.models.checkpoint import (
    INVERSE_KEY_MAP,
    OFFICIAL_KEY_MAP,
    from_official_state_dict,
    to_official_state_dict,
)

C = 16


def backbone(channels=C, patch_size=14, arch="vit_small_patch14_dinov2", name="dinov2_vits14"):
    """A stand-in with the attributes of wrcli.backbones.Backbone that checkpoints look at."""
    return SimpleNamespace(name=name, arch=arch, patch_size=patch_size, channels=channels, embed_dim=channels)


def randomise(model):
    """Give every parameter and BN statistic a non-default value so that round trips are meaningful."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        for n, b in model.named_buffers():
            if n.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif n.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
            elif n.endswith("num_batches_tracked"):
                b.fill_(17)
    return model.eval()


def data(c=C, h=3, w=4, patch=14, b=2):
    return torch.randn(b, c, h, w), torch.randn(b, 3, h * patch, w * patch)


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


@pytest.fixture
def wrc_model():
    return randomise(create_upsampler("wrc", C, 14))


# ---------------------------------------------------------------------------------------------------
# wrcli safetensors format
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["wrc", "wrc-exact", "wrc-converse", "transposed", "converse2d", "bilinear"])
def test_round_trip_is_bitwise(tmp_path, name):
    model = randomise(create_upsampler(name, C, 14))
    path = save_upsampler(model, tmp_path / f"{name}.safetensors", backbone=backbone(), provenance={"steps": 10})
    loaded = load_upsampler(path, backbone())
    assert type(loaded) is type(model) and loaded.name == name and not loaded.training
    feats, img = data()
    with torch.no_grad():
        assert torch.equal(model.upsample(feats, img, scale=2), loaded.upsample(feats, img, scale=2))
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert loaded.provenance == {"steps": 10}
    assert sorted(os.listdir(tmp_path)) == [f"{name}.safetensors"]  # atomic write left no temporary file


def test_config_readable_with_plain_safetensors(tmp_path, wrc_model):
    path = tmp_path / "wrc.safetensors"
    save_upsampler(wrc_model, path, backbone=backbone(), provenance={"dataset": "photos", "lr": 2e-4})
    with safe_open(str(path), framework="pt") as f:
        cfg = json.loads(f.metadata()["wrcli"])
    assert cfg["format_version"] == 1 and cfg["architecture"] == "wrc"
    assert cfg["solver"] == "official" and cfg["centre"] is None and cfg["scale"] == 2
    assert cfg["channels"] == C and cfg["patch_size"] == 14
    assert cfg["backbone"] == {"name": "dinov2_vits14", "arch": "vit_small_patch14_dinov2"}
    assert cfg["wrcli_version"] == wrcli.__version__
    assert cfg["provenance"] == {"dataset": "photos", "lr": 2e-4}
    assert cfg["parameters"] == wrc_model.num_parameters()
    assert read_checkpoint_config(path) == cfg


def test_options_survive_round_trip(tmp_path):
    model = randomise(create_upsampler("wrc-exact", C, 8, centre="image"))
    path = save_upsampler(model, tmp_path / "x.safetensors")
    loaded = load_upsampler(path)
    assert loaded.centre == "image" and loaded.solver == "exact" and loaded.patch_size == 8
    assert loaded.config["backbone"] is None
    skip = randomise(create_upsampler("wrc", C, 14, skip=True))
    loaded = load_upsampler(save_upsampler(skip, tmp_path / "s.safetensors"))
    assert loaded.skip and loaded.options["skip"] is True
    x, img = data()
    assert torch.equal(loaded.eval()(x, img), skip.eval()(x, img))


def test_backbone_recorded_from_model_config(tmp_path):
    with pytest.warns(UserWarning):
        model = load_upsampler("transposed", backbone(channels=C))
    path = save_upsampler(model, tmp_path / "t.safetensors")
    assert read_checkpoint_config(path)["backbone"]["arch"] == "vit_small_patch14_dinov2"


def test_save_overwrites_atomically(tmp_path, wrc_model):
    path = tmp_path / "w.safetensors"
    save_upsampler(create_upsampler("transposed", C), path)
    save_upsampler(wrc_model, path)
    assert read_checkpoint_config(path)["architecture"] == "wrc"
    assert os.listdir(tmp_path) == ["w.safetensors"]


def test_save_rejects_mismatched_backbone(tmp_path, wrc_model):
    with pytest.raises(WrcError, match="16 channels"):
        save_upsampler(wrc_model, tmp_path / "w.safetensors", backbone=backbone(channels=32))
    with pytest.raises(WrcError, match="patch size 14.*patch size 16"):
        save_upsampler(wrc_model, tmp_path / "w.safetensors", backbone=backbone(patch_size=16))
    assert os.listdir(tmp_path) == []


def test_a_saved_checkpoint_is_an_ordinary_file(tmp_path, wrc_model):
    umask = os.umask(0o022)
    try:
        path = save_upsampler(wrc_model, tmp_path / "w.safetensors")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644  # not private (0o600), as safetensors' save_file makes it


def test_a_failed_save_leaves_the_old_checkpoint(tmp_path, wrc_model, monkeypatch):
    path = save_upsampler(create_upsampler("transposed", C), tmp_path / "w.safetensors")
    before = path.read_bytes()

    def full_disk(self, data):
        self.write_text("partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(OSError, match="No space"):
        save_upsampler(wrc_model, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["w.safetensors"]


# ---------------------------------------------------------------------------------------------------
# validation against the backbone
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path, wrc_model):
    return save_upsampler(wrc_model, tmp_path / "wrc.safetensors", backbone=backbone())


def test_channel_mismatch(saved):
    with pytest.raises(WrcError) as e:
        load_upsampler(saved, backbone(channels=768, name="dinov2_vitb14", arch="vit_base_patch14_dinov2"))
    msg = one_line(e)
    assert "16" in msg and "768" in msg and "--backbone dinov2_vits14" in msg and "retrain" in msg


def test_patch_size_mismatch(saved):
    with pytest.raises(WrcError) as e:
        load_upsampler(saved, backbone(patch_size=16))
    msg = one_line(e)
    assert "14" in msg and "16" in msg and "--backbone" in msg


def test_arch_mismatch_and_strict_false(saved):
    other = backbone(arch="vit_small_patch14_reg4_dinov2", name="dinov2_vits14_reg")
    with pytest.raises(WrcError) as e:
        load_upsampler(saved, other)
    msg = one_line(e)
    assert "vit_small_patch14_dinov2" in msg and "vit_small_patch14_reg4_dinov2" in msg and "--backbone" in msg
    assert msg.endswith("; use --backbone dinov2_vits14 or retrain the upsampler for this backbone; "
                        "only the Python API uses it anyway: load_upsampler(..., strict=False)")
    assert "--no-strict" not in msg  # no command has that option
    model = load_upsampler(saved, other, strict=False)
    assert model.channels == C
    with pytest.raises(WrcError):  # strict=False relaxes only the architecture check
        load_upsampler(saved, backbone(channels=8, arch="other"), strict=False)


def test_explicit_channels_and_patch_size_are_checked(saved):
    assert load_upsampler(saved, channels=C, patch_size=14).channels == C
    with pytest.raises(WrcError, match="32"):
        load_upsampler(saved, channels=32)
    with pytest.raises(WrcError, match="patch size"):
        load_upsampler(saved, patch_size=8)


# ---------------------------------------------------------------------------------------------------
# bad files
# ---------------------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(WrcError, match="not found"):
        load_upsampler(tmp_path / "nope.safetensors")


def test_truncated_file(tmp_path, saved):
    data_ = saved.read_bytes()
    for cut in (len(data_) // 2, 100, 20, 5, 0):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data_[:cut])
        with pytest.raises(WrcError) as e:
            load_upsampler(bad)
        one_line(e)


def test_corrupt_and_foreign_files(tmp_path, saved):
    cases = {
        "noise.safetensors": os.urandom(4096),
        "text.safetensors": b"this is not a checkpoint\n" * 10,
        "image.pth": b"\x89PNG\r\n\x1a\n" + os.urandom(200),
        "header.safetensors": (50).to_bytes(8, "little") + b"{not json at all" + b" " * 40,
    }
    corrupted = bytearray(saved.read_bytes())
    corrupted[9:30] = b"#" * 21  # break the JSON header
    cases["broken_header.safetensors"] = bytes(corrupted)
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(WrcError) as e:
            load_upsampler(tmp_path / name)
        one_line(e)


def test_safetensors_without_wrcli_metadata(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"head.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(WrcError, match="without wrcli metadata"):
        load_upsampler(path)


def test_wrong_keys_and_shapes(tmp_path, wrc_model, saved):
    meta = {"wrcli": json.dumps(read_checkpoint_config(saved))}
    sd = {k: v.contiguous() for k, v in wrc_model.state_dict().items()}
    renamed = {("x." + k if k.startswith("head.") else k): v for k, v in sd.items()}
    save_file(renamed, str(tmp_path / "keys.safetensors"), metadata=meta)
    with pytest.raises(WrcError, match="missing") as e:
        load_upsampler(tmp_path / "keys.safetensors")
    one_line(e)
    reshaped = dict(sd, **{"head.bias": torch.zeros(C + 1)})
    save_file(reshaped, str(tmp_path / "shape.safetensors"), metadata=meta)
    with pytest.raises(WrcError, match="head.bias") as e:
        load_upsampler(tmp_path / "shape.safetensors")
    one_line(e)
    bad_arch = json.loads(meta["wrcli"]) | {"architecture": "sparkles"}
    save_file(sd, str(tmp_path / "arch.safetensors"), metadata={"wrcli": json.dumps(bad_arch)})
    with pytest.raises(WrcError, match="known"):
        load_upsampler(tmp_path / "arch.safetensors")
    future = json.loads(meta["wrcli"]) | {"format_version": 99}
    save_file(sd, str(tmp_path / "future.safetensors"), metadata={"wrcli": json.dumps(future)})
    with pytest.raises(WrcError, match="newer"):
        load_upsampler(tmp_path / "future.safetensors")


# ---------------------------------------------------------------------------------------------------
# the authors' official .pth files
# ---------------------------------------------------------------------------------------------------
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def authors_keys() -> set[str]:
    """The authors' WRCUpsampler state-dict keys, written out by hand from their wrc/model.py:
    in_conv = [conv1x1, BN, ReLU]; image_convs_1 = Bottlenecks with strides 2,1,2,1; image_convs_2 =
    strides 2,1; up1.up = WRC(weight, bias, w_conv_low, w_conv_high); up1.conv = 2 Bottlenecks (the
    first changes width); up1.conv_1 = [Bottleneck changing width]; outc = 1×1 conv with bias.
    A Bottleneck has conv1/bn1/conv2/bn2/conv3/bn3 and, when projecting, downsample = [conv, BN]."""

    def bottleneck(prefix, project):
        keys = {f"{prefix}.conv{i}.weight" for i in (1, 2, 3)}
        keys |= {f"{prefix}.bn{i}.{b}" for i in (1, 2, 3) for b in BN}
        if project:
            keys |= {f"{prefix}.downsample.0.weight"} | {f"{prefix}.downsample.1.{b}" for b in BN}
        return keys

    keys = {"in_conv.0.weight", "outc.weight", "outc.bias"} | {f"in_conv.1.{b}" for b in BN}
    for i, stride in enumerate((2, 1, 2, 1)):
        keys |= bottleneck(f"image_convs_1.{i}", stride != 1)
    for i, stride in enumerate((2, 1)):
        keys |= bottleneck(f"image_convs_2.{i}", stride != 1)
    keys |= {"up1.up.weight", "up1.up.bias", "up1.up.w_conv_low.weight", "up1.up.w_conv_high.weight"}
    keys |= bottleneck("up1.conv.0", True) | bottleneck("up1.conv.1", False) | bottleneck("up1.conv_1.0", True)
    return keys


REAL_AUTHOR_KEYS = [
    "up1.up.w_conv_low.weight",
    "up1.up.w_conv_high.weight",
    "up1.up.weight",
    "up1.up.bias",
    "image_convs_1.0.conv1.weight",
    "image_convs_1.0.downsample.0.weight",
    "image_convs_1.2.downsample.1.running_var",
    "image_convs_2.1.bn2.num_batches_tracked",
    "outc.weight",
    "outc.bias",
    "in_conv.0.weight",
    "in_conv.1.running_mean",
    "up1.conv.0.downsample.1.weight",
    "up1.conv.1.conv3.weight",
    "up1.conv_1.0.bn3.running_mean",
    "up1.conv_1.0.downsample.0.weight",
]


def test_key_map_produces_the_authors_keys():
    ours = create_upsampler("wrc", 384, 14).state_dict()
    official = to_official_state_dict(ours)
    assert set(official) == authors_keys()
    for key in REAL_AUTHOR_KEYS:
        assert key in official, key
    assert official["up1.up.w_conv_low.weight"].shape == (208, 208, 3, 3)
    assert official["up1.conv.0.conv1.weight"].shape == (416, 416, 1, 1)
    assert official["up1.conv_1.0.conv3.weight"].shape == (192, 240, 1, 1)
    assert official["outc.weight"].shape == (384, 192, 1, 1)
    assert from_official_state_dict(official).keys() == ours.keys()
    assert {v: k for k, v in INVERSE_KEY_MAP.items()} == OFFICIAL_KEY_MAP


@pytest.mark.parametrize("layout", ["bare", "wrc", "state_dict_module", "wrc_prefix"])
def test_official_pth_loads_and_reproduces(tmp_path, wrc_model, layout):
    official = to_official_state_dict(wrc_model.state_dict())
    assert "up1.conv_1.0.bn3.running_mean" in official
    obj = {
        "bare": official,
        "wrc": {"wrc": official, "epoch": 3},
        "state_dict_module": {"state_dict": {"module." + k: v for k, v in official.items()}},
        "wrc_prefix": {"wrc." + k: v for k, v in official.items()},
    }[layout]
    path = tmp_path / "model_100000steps.pth"
    torch.save(obj, path)
    loaded = load_upsampler(path, backbone(), strict=True)
    assert loaded.solver == "official" and loaded.channels == C and loaded.patch_size == 14
    feats, img = data()
    with torch.no_grad():
        assert torch.equal(loaded.upsample(feats, img, scale=2), wrc_model.upsample(feats, img, scale=2))
        assert torch.equal(load_upsampler(path, patch_size=14)(feats, img), wrc_model(feats, img))
    # loaded official weights can be re-saved in wrcli's format
    again = load_upsampler(save_upsampler(loaded, tmp_path / "converted.safetensors"), backbone())
    with torch.no_grad():
        assert torch.equal(again(feats, img), wrc_model(feats, img))


def test_official_pth_needs_patch_size_and_matching_channels(tmp_path, wrc_model):
    path = tmp_path / "official.pth"
    torch.save(to_official_state_dict(wrc_model.state_dict()), path)
    with pytest.raises(WrcError, match="patch size") as e:
        load_upsampler(path)
    one_line(e)
    with pytest.raises(WrcError, match="768") as e:
        load_upsampler(path, backbone(channels=768))
    one_line(e)
    with pytest.raises(WrcError, match=r"requested upsampler \(patch size 8\) disagrees with backbone") as e:
        load_upsampler(path, backbone(), patch_size=8)
    one_line(e)


def test_pth_without_state_dict(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"weights": [1, 2, 3]}, path)
    with pytest.raises(WrcError) as e:
        load_upsampler(path, patch_size=14)
    one_line(e)
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(WrcError, match="not a WRC") as e:
        load_upsampler(path, patch_size=14)
    one_line(e)


EXECUTED = []


class Payload:
    """Unpickling this would run code (append to EXECUTED and create a file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_side_effect, (self.marker,))


def _side_effect(marker):
    EXECUTED.append(marker)
    open(marker, "w").close()
    return marker


@pytest.mark.parametrize("kind", ["payload", "namespace"])
@pytest.mark.parametrize("keys", [["wrc"], ["model"], ["state", "net"]])
def test_pickled_objects_are_refused_naming_the_state_dicts_key(tmp_path, monkeypatch, wrc_model, kind, keys):
    marker = tmp_path / "executed"
    extra = Payload(str(marker)) if kind == "payload" else argparse.Namespace(lr=1e-3, model="wrc")
    path = tmp_path / "model_1000steps.pth"
    content = to_official_state_dict(wrc_model.state_dict())
    for key in reversed(keys):
        content = {key: content, "epoch": 1}
    torch.save({"cfg": extra, **content}, path)
    assert not marker.exists() and not EXECUTED
    with pytest.raises(WrcError) as e:
        load_upsampler(path, backbone())
    msg = one_line(e)
    index = "".join(f'["{k}"]' for k in keys)
    assert msg == (f"refusing to load model_1000steps.pth: it holds pickled Python objects (e.g. a training config), "
                   f"which wrcli refuses to unpickle; in a trusted environment extract the weights with "
                   f"torch.save(torch.load({str(path)!r}, weights_only=False){index}, \"wrc_state.pth\") and load "
                   f"wrc_state.pth")
    assert not marker.exists() and not EXECUTED
    if kind == "namespace":  # the advice works
        monkeypatch.chdir(tmp_path)
        exec(msg.partition(" extract the weights with ")[2].partition(" and load ")[0], {"torch": torch})
        assert load_upsampler(tmp_path / "wrc_state.pth", backbone()).channels == C


def test_pickled_refusal_without_a_readable_key_names_none(tmp_path, wrc_model):
    path = tmp_path / "legacy.pth"  # the pre-zip format is not read for keys
    torch.save({"cfg": argparse.Namespace(lr=1e-3), "wrc": wrc_model.state_dict()}, path,
               _use_new_zipfile_serialization=False)
    with pytest.raises(WrcError) as e:
        load_upsampler(path, backbone())
    msg = one_line(e)
    assert msg.startswith("refusing to load legacy.pth: it holds pickled Python objects")
    assert msg.endswith("torch.save the upsampler's state dict (the dict of its tensors) alone to wrc_state.pth and "
                        "load that") and '["' not in msg


# ---------------------------------------------------------------------------------------------------
# with the real backbone (skipped when the DINOv2 weights are absent)
# ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_backbone_round_trip(tmp_path, dinov2_weights):
    from wrcli.backbones import load_backbone

    bb = load_backbone("vit_small_patch14_dinov2", weights=dinov2_weights)
    model = create_upsampler("wrc", bb.channels, bb.patch_size).eval()
    path = save_upsampler(randomise(model), tmp_path / "wrc.safetensors", backbone=bb)
    assert read_checkpoint_config(path)["backbone"] == {"name": bb.name, "arch": bb.arch}
    loaded = load_upsampler(path, bb)
    img = torch.randn(1, 3, 56, 70)
    with torch.no_grad():
        feats = bb(img)
        out = loaded.upsample(feats, img, scale=2)
        assert out.shape == (1, 384, 8, 10)
        assert torch.equal(out, model.upsample(feats, img, scale=2))
    with pytest.raises(WrcError, match="--backbone"):
        load_upsampler(path, backbone(channels=384, arch="vit_small_patch14_reg4_dinov2"))
