"""``--precision auto|fp32|bf16``: how ``auto`` resolves (detection mocked), bf16 against fp32 features, the
choice recorded by every command (store metadata, reports, checkpoints), and a store or a training state made
at another precision refused on resume, naming ``--precision``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from wrcli import precision as prec
from wrcli.backbones import load_backbone
from wrcli.errors import WrcError
from wrcli.eval.task import Measurement, RunOptions, run_task
from wrcli.models import create_upsampler
from wrcli.stores import open_store
from wrcli.stores.mismatch import difference

from .conftest import ARCH, photos
from .test_extract import base_args, run_cli

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 112}


@pytest.fixture
def cpu_caps(monkeypatch):
    """Mock PyTorch's view of the CPU: ``set(onednn_bf16, **instructions)``."""

    def set_caps(onednn_bf16: bool = True, **instructions: bool) -> None:
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn_bf16)
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_f": True, **instructions})
        prec.cpu_has_bf16.cache_clear()

    yield set_caps
    prec.cpu_has_bf16.cache_clear()


# ---------------------------------------------------------------------------------------------------
# resolution
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("caps,onednn,expected", [
    ({"avx512_bf16": True}, True, "bf16"),  # Zen 4, Cooper Lake
    ({"amx_bf16": True}, True, "bf16"),  # Sapphire Rapids
    ({"avx512_bf16": False, "amx_bf16": False}, True, "fp32"),  # AVX-512 without bf16: oneDNN would only emulate it
    ({"avx512_bf16": True}, False, "fp32"),  # oneDNN refuses bf16
    ({}, True, "fp32"),  # AVX2-only x86, or a platform without those keys
])
def test_auto_on_cpu_follows_the_detected_instructions(cpu_caps, caps, onednn, expected):
    cpu_caps(onednn, **caps)
    assert prec.resolve_precision("auto", CPU) == expected


@pytest.mark.parametrize("native,expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_follows_native_bf16(monkeypatch, native, expected):
    asked = {}

    def supported(including_emulation: bool = True) -> bool:
        asked["emulation"] = including_emulation
        return native

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert prec.resolve_precision("auto", CUDA) == expected and asked == {"emulation": False}


def test_explicit_choices_are_kept_and_others_refused(cpu_caps, caplog):
    cpu_caps(True)  # no bf16 instructions
    assert prec.resolve_precision("fp32", CPU) == "fp32"
    assert prec.resolve_precision("bf16", CPU) == "bf16" and "emulated" in caplog.text
    assert prec.resolve_precision("auto", torch.device("meta")) == "fp32"
    with pytest.raises(WrcError, match="--precision"):
        prec.resolve_precision("fp16", CPU)
    with pytest.raises(ValueError):
        prec.autocast(CPU, "auto")  # only resolved precisions


def test_autocast_is_bf16_for_bf16_only():
    x = torch.randn(4, 8)
    with prec.autocast(CPU, "bf16"):
        assert (x @ x.T).dtype == torch.bfloat16
    with prec.autocast(CPU, "fp32"):
        assert (x @ x.T).dtype == torch.float32


# ---------------------------------------------------------------------------------------------------
# bf16 against fp32
# ---------------------------------------------------------------------------------------------------
def test_bf16_backbone_and_wrc_agree_with_fp32():
    """A random-init small ViT + random-init WRC (no BatchNorm folding needed: eval mode) on smooth images:
    per image, the cosine over channels averaged over pixels. bf16 keeps 8 bits of mantissa (relative rounding
    2^-9 ≈ 2e-3 per value); over a few layers that leaves ≥ 0.995 per pixel on average for random weights,
    whose activations are less regular than trained ones (the real DINOv2 + shipped WRC give ≥ 0.9998, README).
    The WRC solve computes in float32 in both (autocast off inside), so the output is float32."""
    torch.manual_seed(0)
    backbone = load_backbone(ARCH, pretrained=False, **TINY)
    wrc = create_upsampler("wrc", backbone.channels, backbone.patch_size).eval()
    y, x = torch.meshgrid(torch.linspace(0, 1, 84), torch.linspace(0, 1, 112), indexing="ij")
    pixels = (torch.stack([torch.sin(6 * x), torch.cos(5 * y), torch.sin(4 * (x + y))])[None].repeat(2, 1, 1, 1)
              * torch.tensor([1.0, 0.5])[:, None, None, None] * 100 + 128).to(torch.uint8)

    def run(precision: str) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode(), prec.autocast(CPU, precision):
            images = backbone.normalize(pixels)
            tokens = backbone(images)
            return tokens.float(), wrc.upsample(tokens, images, scale=2)

    (t32, u32), (t16, u16) = run("fp32"), run("bf16")
    assert u16.dtype == torch.float32 and u16.shape == u32.shape == (2, 64, 12, 16)
    for a, b in ((t16, t32), (u16, u32)):
        cos = F.cosine_similarity(a, b, dim=1).mean(dim=(1, 2))
        assert cos.min() > 0.995, cos


# ---------------------------------------------------------------------------------------------------
# recorded by every command
# ---------------------------------------------------------------------------------------------------
def test_extract_records_precision_and_refuses_to_mix_them(tmp_path, vits_weights, capsys, monkeypatch):
    src = photos(tmp_path / "in", 2)
    out = tmp_path / "s.zarr"
    args = base_args(vits_weights, "--upsampler", "bilinear")
    assert run_cli(["extract", str(src), str(out), *args, "--precision", "bf16"], capsys, monkeypatch)[0] == 0
    with open_store(out) as store:
        meta = store.metadata
    assert meta["precision"] == "bf16" and meta["dtype"] == "float16"
    code, _, err = run_cli(["extract", str(src), str(out), *args, "--precision", "fp32"], capsys, monkeypatch)
    assert code != 0 and "--precision bf16 ≠ fp32" in err, err
    # a resolved auto is recorded as what it resolved to
    auto = tmp_path / "a.zarr"
    args = ["--backbone", ARCH, "--backbone-weights", str(vits_weights), "--size", "56", "--workers", "0",
            "--upsampler", "bilinear"]
    assert run_cli(["extract", str(src), str(auto), *args], capsys, monkeypatch)[0] == 0
    with open_store(auto) as store:
        assert store.metadata["precision"] == prec.resolve_precision("auto", CPU)


def test_mismatch_names_precision_only():
    old = {"images_sha256": "x", "store": {"n_images": 1, "layout_version": 3}, "precision": "fp32",
           "dtype": "float16", "fingerprint": "a"}
    new = {**old, "precision": "bf16", "fingerprint": "b"}
    from wrcli.stores.base import LAYOUT_KEYS

    for meta in (old, new):
        meta["store"] = {**meta["store"], **{k: 1 for k in LAYOUT_KEYS}}
    assert difference(old, new) == "was made with other settings (--precision fp32 ≠ bf16)"


def test_viz_and_bench_record_precision(tmp_path, vits_weights, capsys, monkeypatch):
    src = photos(tmp_path / "in", 1)
    code, stdout, _ = run_cli(["viz", str(src), "-o", str(tmp_path / "v"), "--upsampler", "bilinear", "--backbone", ARCH,
                               "--backbone-weights", str(vits_weights), "--size", "56", "--precision", "bf16",
                               "--json"], capsys, monkeypatch)
    assert code == 0 and json.loads(stdout)["precision"] == "bf16"
    code, stdout, _ = run_cli(["bench", "--cases", "backbone", "--batch", "1", "--size", "56", "--repeats", "1",
                               "--warmup", "0", "--precision", "fp32,auto", "--backbone", ARCH, "--backbone-weights",
                               str(vits_weights), "--json"], capsys, monkeypatch)
    report = json.loads(stdout)
    auto = prec.resolve_precision("auto", CPU)
    assert report["settings"]["precision_auto"] == auto
    assert report["settings"]["precisions"] == list(dict.fromkeys(["fp32", auto]))
    assert [r["precision"] for r in report["results"]] == report["settings"]["precisions"]


class _AutocastProbe:
    """A minimal eval task on the shared dense path (:func:`wrcli.eval.dense.feature_maps`): records whether the
    backbone ran under bf16 autocast, and whether the metric itself did (it must not)."""

    kind, metrics = "probe", ("backbone_bf16", "metric_autocast")

    def read(self) -> None:
        pass

    def features(self, session, bars):
        from contextlib import nullcontext

        from wrcli.eval.dense import feature_maps

        return nullcontext(feature_maps(session.backbone, session.upsamplers, 2, session.device, session.precision))

    def measure(self, session, features, bars) -> Measurement:
        seen = []
        def record(*_) -> None:
            seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)

        hook = session.backbone.model.patch_embed.register_forward_hook(record)
        try:
            ((label, maps),) = list(features(torch.full((1, 3, 28, 28), 128, dtype=torch.uint8)))
        finally:
            hook.remove()
        assert maps.dtype == torch.float32 and maps.shape[-2:] == (28, 28)
        return Measurement({label: {"backbone_bf16": float(all(seen) and bool(seen)),
                                    "metric_autocast": float(torch.is_autocast_enabled("cpu"))}})

    def protocol(self, session) -> dict:
        return {}

    def dataset(self) -> dict:
        return {}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_eval_reports_and_runs_at_the_precision(vits_weights, precision):
    options = RunOptions("bilinear", ARCH, str(vits_weights), "cpu", progress=False, precision=precision)
    report = run_task(_AutocastProbe(), options)
    assert report["environment"]["precision"] == precision
    assert report["results"]["bilinear"] == {"backbone_bf16": float(precision == "bf16"), "metric_autocast": 0.0}


def test_eval_feature_cache_is_keyed_by_precision(tmp_path, vits_weights):
    from wrcli.eval.datasets import Split
    from wrcli.eval.discovery import WarpedImage
    from wrcli.eval.features import build_cache

    src = photos(tmp_path / "in", 1)
    split = Split("warped", tuple(WarpedImage(p.name, str(p), 56) for p in sorted(src.iterdir())))
    backbone = load_backbone(ARCH, vits_weights)
    caches = [build_cache(tmp_path / "c", "d", split, size=56, flip=False, backbone=backbone, device=CPU,
                          target_dtype=None, progress=False, precision=precision) for precision in ("fp32", "bf16")]
    assert len(list((tmp_path / "c").iterdir())) == 2
    a, b = (torch.from_numpy(np.asarray(c.feats)).float() for c in caches)
    assert not torch.equal(a, b) and F.cosine_similarity(a, b, dim=1).mean() > 0.995


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("prec-train")
    photos(root / "images", 4)
    photos(root / "val", 1, seed=1)
    torch.manual_seed(0)
    save_file(load_backbone(ARCH, pretrained=False, **TINY).model.state_dict(), root / "tiny.safetensors")
    return {"root": root, "weights": str(root / "tiny.safetensors")}


def test_train_records_precision_and_refuses_to_resume_at_another(tiny_run, tmp_path):
    from wrcli.models import load_upsampler
    from wrcli.train import TrainOptions, train

    def opts(**changes) -> TrainOptions:
        return TrainOptions(**{
            "recipe": "published", "steps": 3, "batch_size": 2, "warmup": 0, "size": 56, "backbone": ARCH,
            "backbone_weights": tiny_run["weights"], "backbone_kwargs": TINY, "workers": 0,
            "val": str(tiny_run["root"] / "val"), "val_every": 0, "checkpoint_every": 100, "progress": False,
            "device": "cpu", **changes})

    results = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.safetensors"
        results[precision] = train(str(tiny_run["root"] / "images"), str(out), opts(precision=precision))
        assert load_upsampler(out).provenance["precision"] == precision
    assert all(np.isfinite(r["losses"]["loss"]) for r in results.values())
    out = tmp_path / "stop.safetensors"
    train(str(tiny_run["root"] / "images"), str(out), opts(precision="fp32", stop_after=1))
    with pytest.raises(WrcError, match="precision: 'fp32' then, 'bf16' now"):
        train(str(tiny_run["root"] / "images"), str(out), opts(precision="bf16", resume=True))


def test_precision_option_is_on_every_command():
    from typer.testing import CliRunner

    from wrcli.cli import app

    runner = CliRunner()
    for command in (["extract"], ["train"], ["viz"], ["bench"], ["eval", "seg"], ["eval", "depth"], ["eval", "corr"],
                    ["eval", "vos"], ["eval", "discovery"], ["eval", "ovseg"]):
        assert "--precision" in runner.invoke(app, [*command, "--help"]).output, command
    result = runner.invoke(app, ["viz", "x.jpg", "-o", "o", "--precision", "fp16"])
    assert result.exit_code == 2
