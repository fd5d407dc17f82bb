"""Shared fixtures: the real DINOv2 weights (skipped cleanly where absent) and deterministic seeds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DINOV2_WEIGHTS = Path(os.environ.get("WRC_TEST_WEIGHTS", REPO.parent / "shared/weights/dinov2_vits14.safetensors"))
PHOTOS = Path(os.environ.get("WRC_TEST_PHOTOS", REPO.parent / "shared/data/photos"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def dinov2_weights() -> Path:
    if not DINOV2_WEIGHTS.is_file():
        pytest.skip(f"real DINOv2 weights not found at {DINOV2_WEIGHTS}")
    return DINOV2_WEIGHTS


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
