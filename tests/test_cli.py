"""The command line surface: instant help, version, config precedence, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

from wrcli import __version__, cli

from .conftest import ARCH, photos
from .test_extract import run_cli


def test_help_imports_no_heavy_modules():
    code = "import sys, wrcli.cli; sys.argv=['wrc','--help']\ntry: wrcli.cli.main()\nexcept SystemExit: pass\n" \
           "print(sorted(m for m in ('torch', 'timm', 'zarr', 'h5py', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("[]") and "extract" in out


def test_version_and_usage_error(capsys, monkeypatch):
    assert run_cli(["--version"], capsys, monkeypatch)[1].strip() == f"wrc {__version__}"
    code, _, err = run_cli(["extract"], capsys, monkeypatch)
    assert code == cli.EXIT_USAGE and "Missing argument" in err


def test_upsamplers_lists_the_registry(capsys, monkeypatch):
    code, out, _ = run_cli(["upsamplers", "--json"], capsys, monkeypatch)
    names = json.loads(out)["upsamplers"]
    assert code == 0 and {"wrc", "wrc-exact", "wrc-converse", "bilinear", "transposed", "converse2d"} <= names.keys()


def test_upsamplers_say_which_have_a_trained_checkpoint(capsys, monkeypatch):
    code, out, _ = run_cli(["upsamplers", "--json"], capsys, monkeypatch)
    table = json.loads(out)["upsamplers"]
    assert code == 0 and table["wrc"]["checkpoint"] == "wrc_dinov2_vits14.safetensors"
    assert table["wrc-exact"]["checkpoint"] == "wrc_exact_dinov2_vits14.safetensors"
    assert table["wrc-converse"] == {**table["wrc-converse"], "learned": True, "checkpoint": None}
    assert table["bilinear"]["learned"] is False
    code, out, _ = run_cli(["upsamplers", "--backbone", "vit_base_patch16_clip_224.openai"], capsys, monkeypatch)
    wrc = next(line for line in out.splitlines() if line.startswith("wrc "))
    assert code == 0 and "untrained here" in wrc and "vit_base_patch16_clip_224" in out.splitlines()[-1]
    code, out, _ = run_cli(["upsamplers"], capsys, monkeypatch)
    assert "trained: wrc_dinov2_vits14.safetensors" in next(line for line in out.splitlines() if line.startswith("wrc "))


def test_flags_beat_environment_beat_config_file(tmp_path, vits_weights, capsys, monkeypatch):
    src = photos(tmp_path / "in", 2)
    config = tmp_path / "wrc.toml"
    config.write_text(f'[extract]\nbackbone = "{ARCH}"\nbackbone-weights = "{vits_weights}"\nupsampler = "nearest"\n'
                      'size = 56\nworkers = 0\n')
    monkeypatch.setenv("WRC_CONFIG", str(config))

    def upsampler_of(out: str, *flags: str) -> str:
        code, stdout, err = run_cli(["extract", str(src), str(tmp_path / out), "--json", *flags], capsys, monkeypatch)
        assert code == 0, err
        return json.loads(stdout)["upsampler"]["name"]

    assert upsampler_of("a.zarr") == "nearest"
    monkeypatch.setenv("WRC_UPSAMPLER", "bilinear")
    assert upsampler_of("b.zarr") == "bilinear"
    assert upsampler_of("c.zarr", "--upsampler", "bicubic") == "bicubic"
    config.write_text("[extract\n")
    code, _, err = run_cli(["upsamplers"], capsys, monkeypatch)
    assert code == 1 and "config file" in err


def _heavy_after(args: list[str]) -> tuple[int, str, list[str]]:
    """Exit code, stderr and the heavy modules imported by ``wrc ARGS`` in a fresh interpreter."""
    code = ("import sys, wrcli.cli\nsys.argv = ['wrc', *sys.argv[1:]]\n"
            "try: wrcli.cli.main()\nexcept SystemExit as e: rc = e.code\n"
            "print(rc, sorted(m for m in ('torch', 'timm') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    rc, heavy = done.stdout.strip().split(" ", 1)
    return int(rc), done.stderr, json.loads(heavy.replace("'", '"'))


def test_bad_arguments_are_usage_errors_before_torch_loads(tmp_path):
    src = str(photos(tmp_path / "in", 1))
    for args, what in [
        (["extract", src, str(tmp_path / "x.zarr"), "--dtype", "bfloat16"], "--dtype"),
        (["extract", src, str(tmp_path / "x.zarr"), "--format", "parquet"], "--format"),
        (["extract", src, str(tmp_path / "x.store")], "OUT"),
        (["extract", src, str(tmp_path / "x.zarr"), "--device", "gpu"], "--device"),
    ]:
        code, err, heavy = _heavy_after(args)
        assert code == cli.EXIT_USAGE and what in err and heavy == [], (args, err)


def test_warnings_are_one_line(tmp_path, vits_weights, capsys, monkeypatch):
    src = photos(tmp_path / "in", 1)
    code, _, err = run_cli(["extract", str(src), str(tmp_path / "a.zarr"), "--backbone", ARCH, "--backbone-weights",
                            str(vits_weights), "--size", "56", "--workers", "0", "--upsampler", "transposed"],
                           capsys, monkeypatch)
    assert code == 0, err
    warned = [line for line in err.splitlines() if "untrained" in line]
    assert len(warned) == 1 and warned[0].startswith("wrc: warning: "), err
    assert "UserWarning" not in err and "warnings.warn" not in err


def test_rerun_of_a_finished_store_says_it_is_complete(tmp_path, vits_weights, capsys, monkeypatch):
    src, out = photos(tmp_path / "in", 2), tmp_path / "a.zarr"
    args = ["extract", str(src), str(out), "--backbone", ARCH, "--backbone-weights", str(vits_weights), "--size", "56",
            "--workers", "0", "--upsampler", "nearest"]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0 and "img/s" in err, err
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0 and "already complete (2 ok, 0 failed of 2 images)" in err and "img/s" not in err, err


def test_eval_choices_are_the_protocol_modules_names():
    from wrcli.eval import choices, correspondence, datasets, depth, seg

    assert set(choices.SEG_PROTOCOLS) == set(seg.SEG_PROTOCOLS)
    assert set(choices.DEPTH_PROTOCOLS) == set(depth.DEPTH_PROTOCOLS)
    assert set(choices.SEG_DATASETS) == {"auto", *datasets.SEG_READERS}
    assert set(choices.CORR_DATASETS) == set(correspondence.DATASETS)
    from wrcli.eval import discovery

    assert (choices.DISCOVERY_DATASETS, choices.DISCOVERY_METHODS) == (discovery.DATASETS, discovery.METHODS)
    from wrcli.eval import ovseg

    assert (choices.OVSEG_DATASETS, choices.OVSEG_METHODS) == (ovseg.DATASETS, ovseg.METHODS)
    from wrcli.eval import vos

    assert choices.VOS_PROTOCOLS == vos.PROTOCOLS


def test_train_solver_choices_are_the_wrc_solves():
    from wrcli.defaults import WRC_SOLVERS
    from wrcli.models.wrc import SOLVER_NAMES

    assert set(WRC_SOLVERS) == set(SOLVER_NAMES)


def test_unknown_eval_dataset_or_protocol_is_a_usage_error(tmp_path):
    for args in (["eval", "seg", str(tmp_path), "--dataset", "kitti"], ["eval", "depth", str(tmp_path), "--protocol", "x"],
                 ["eval", "corr", str(tmp_path), "--dataset", "sintel"]):
        code, err, heavy = _heavy_after(args)
        assert code == cli.EXIT_USAGE and "is not one of" in err and heavy == [], (args, err)
