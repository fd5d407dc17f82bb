"""Shared fixtures: the real DINOv2 weights (skipped cleanly where absent) and deterministic seeds."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from PIL import Image

from wrcli.stores import lock_store

REPO = Path(__file__).resolve().parents[1]
DINOV2_WEIGHTS = Path(os.environ.get("WRC_TEST_WEIGHTS", REPO.parent / "shared/weights/dinov2_vits14.safetensors"))
PHOTOS = Path(os.environ.get("WRC_TEST_PHOTOS", REPO.parent / "shared/data/photos"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ARCH = "vit_small_patch14_dinov2"


@pytest.fixture
def dinov2_weights() -> Path:
    if not DINOV2_WEIGHTS.is_file():
        pytest.skip(f"real DINOv2 weights not found at {DINOV2_WEIGHTS}")
    return DINOV2_WEIGHTS


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def vits_weights(tmp_path_factory) -> Path:
    """Random-init ViT-S/14 weights in timm layout: the real architecture without depending on real weights."""
    torch.manual_seed(0)
    model = timm.create_model(ARCH, pretrained=False, dynamic_img_size=True)
    path = tmp_path_factory.mktemp("weights") / "vits14-random.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def photos(folder: Path, n: int, seed: int = 0) -> Path:
    """n small smooth colour images of a few different aspect ratios."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [(60, 80), (80, 60), (70, 70), (50, 90)]
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        base = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC).save(folder / f"img {i:03d}.jpg", quality=95)
    return folder


def _hold_lock(path: Path, ready: Path, release: Path) -> None:
    """Child process: hold the store's lease until ``release`` exists."""
    with lock_store(path):
        ready.touch()
        deadline = time.monotonic() + 60
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.02)


@pytest.fixture
def held_by_child(tmp_path):
    """Start a process holding the lease on a store path; yields (path, process)."""
    procs = []

    def start(path: Path):
        ready, release = tmp_path / "ready", tmp_path / "release"
        child = multiprocessing.get_context("spawn").Process(target=_hold_lock, args=(path, ready, release))
        child.start()
        procs.append((child, release))
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert child.is_alive() and time.monotonic() < deadline
            time.sleep(0.02)
        return child
    yield start
    for child, release in procs:
        release.touch()
        child.join(30)
