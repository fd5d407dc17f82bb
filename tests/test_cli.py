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
    names = json.loads(out)
    assert code == 0 and {"wrc", "wrc-exact", "wrc-converse", "bilinear", "transposed", "converse2d"} <= names.keys()


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
