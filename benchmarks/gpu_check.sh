#!/usr/bin/env bash
# Issue 6's device check, prepared for a session lent a CUDA GPU: run from the repository root on the device
# machine (its python3 has torch, cupy, timm; zarr is not needed). It runs the GPU tests (CuPy against
# PyTorch, forward and backward), then `wrc bench` for DINOv2 ViT-S/14 at 448, ×2, batch 1 and 8, fp32 and
# bf16, every solve backend. Random-init weights: the timings do not depend on the weights' values.
set -euo pipefail
PY=${PY:-python3}
OUT=${OUT:-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$PY -m pytest -q -p no:cacheprovider tests/test_cuda_kernels.py tests/test_ops_backends.py
$PY - "$OUT/vits14-random.safetensors" <<'PYEOF'
import sys

import safetensors.torch
import timm

model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, dynamic_img_size=True)
safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, sys.argv[1])
PYEOF
HF_HUB_OFFLINE=1 $PY -m wrcli bench --device cuda --backbone-weights "$OUT/vits14-random.safetensors" \
    --size 448 --scale 2 --batch 1,8 --precision fp32,bf16 --backend torch,compiled,cupy --out "$OUT/bench-gpu.json"
