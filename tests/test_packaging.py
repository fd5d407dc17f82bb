"""The wheel carries what the package needs at run time: every subpackage, the CUDA sources, the checkpoints."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from setuptools import find_packages

REPO = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert sorted(config["packages"]) == sorted([*find_packages(REPO, include=["wrcli*"]), "wrcli.cuda"])
    assert config["package-dir"] == {"wrcli.cuda": "cuda"}


def test_wheel_ships_kernels_and_checkpoints(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                           str(REPO)], capture_output=True, text=True)
    if done.returncode != 0 and "No module named" in done.stderr:
        pytest.skip(f"cannot build a wheel here: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("wrcli-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for source in [*(REPO / "cuda").glob("*.cu"), *(REPO / "cuda").glob("*.cuh")]:
        assert f"wrcli/cuda/{source.name}" in names
    for shipped in (REPO / "wrcli" / "checkpoints").glob("*.safetensors"):
        assert f"wrcli/checkpoints/{shipped.name}" in names and f"wrcli/checkpoints/{shipped.stem}.md" in names
    assert "wrcli/checkpoints/wrc_dinov2_vits14.safetensors" in names


def test_requires_python_admits_no_version_a_dependency_refuses():
    """Our Python floor must be one every runtime dependency supports (zarr 3, numpy 2 and typer need 3.11)."""
    from importlib.metadata import PackageNotFoundError, metadata

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    floor = SpecifierSet(project["requires-python"])
    (lowest,) = [spec.version for spec in floor if spec.operator == ">="]
    for dep in project["dependencies"]:
        name = Requirement(dep).name
        try:
            theirs = metadata(name).get("Requires-Python") or ""
        except PackageNotFoundError:
            continue
        assert SpecifierSet(theirs).contains(lowest), f"{name} needs Python {theirs}, but we say {floor}"
