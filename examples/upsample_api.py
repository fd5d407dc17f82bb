"""The Python API in a dozen lines: a frozen backbone, an upsampler, dense features for a batch of images.

Run: python examples/upsample_api.py [--weights dinov2_vits14.safetensors] [--upsampler wrc]
"""

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wrcli import load_backbone, load_upsampler

here = Path(__file__).parent
parser = argparse.ArgumentParser()
parser.add_argument("--weights", default=os.environ.get("WRC_BACKBONE_WEIGHTS"),
                    help="backbone weights file for offline use (default: $WRC_BACKBONE_WEIGHTS, else the model hub)")
parser.add_argument("--upsampler", default="default", help="registry name (default, wrc, bilinear, ...) or checkpoint file")
args = parser.parse_args()

backbone = load_backbone("vit_small_patch14_dinov2.lvd142m", weights=args.weights)
upsampler = load_upsampler(args.upsampler, backbone)

# two photos as a uint8 batch at 448×448 (any size that is a multiple of the patch works)
paths = sorted((here / "images").glob("*.jpg"))[:2]
pixels = torch.stack([
    torch.from_numpy(np.array(Image.open(p).convert("RGB").resize((448, 448)))).permute(2, 0, 1) for p in paths
])

with torch.inference_mode():
    images = backbone.normalize(pixels)          # uint8 → normalised float
    feats = backbone(images)                     # (2, 384, 32, 32) patch features
    dense = upsampler.upsample(feats, images, scale=2)   # (2, 384, 64, 64)
    sized = upsampler.upsample(feats, images, size=(100, 120))  # ×2 passes, then one final resize

print(f"backbone {tuple(feats.shape)} → ×2 {tuple(dense.shape)}; explicit size {tuple(sized.shape)}")
