#!/usr/bin/env bash
# The device check for a session lent a CUDA GPU, run from the repository root on the device machine (its
# python3 has torch, cupy, timm, h5py; zarr travels as wheels in .whl/ when present). In order, each step
# under its own time limit so that one hang does not cost the rest:
#   1. the GPU tests: CuPy kernels against the PyTorch path, forward and backward, fp32/bf16/fp16;
#   2. `wrc bench` for DINOv2 ViT-S/14 at 448, ×2, batch 1 and 8, fp32 and bf16: every case, the solves on
#      eager torch and on cupy, the upsampler on its automatic backend (cupy for CUDA tensors);
#   3. the upsampler and backbone + upsampler again with the solve forced onto torch (WRC_BACKEND=torch);
#   4. `wrc extract` of examples/images on the GPU and on the CPU, and the two stores compared image by image;
#   5. benchmarks/gpu_profile.py: eager against CUDA-graph replay, and the profiler's kernel tables;
#   6. the compiled (torch.compile) solves: compiling dominates, so batch 1 and fp32 only.
# Random-init backbone weights: the timings do not depend on the weights' values. $OUT receives the steps' logs
# (check.log), the bench reports (JSON) and the profiler's tables; the weights and stores stay in $WORK.
set -uo pipefail
PY=${PY:-python3}
OUT=${OUT:-out}
DEVICE=${DEVICE:-cuda}
REPEATS=${REPEATS:-30}
BATCH=${BATCH:-1,8}
WORK=${WORK:-/tmp/wrc-gpu-check}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if ! $PY -c "import zarr" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader || true
$PY -c "import sys, torch, timm; print(sys.version.split()[0], 'torch', torch.__version__, 'timm', timm.__version__)"
$PY -c "import cupy; print('cupy', cupy.__version__)" || true

step() {  # step NAME SECONDS COMMAND...: run it under a time limit, log it, print its exit status and tail
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$WORK/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc in $((SECONDS - start)) s"
    { echo "== $name: exit $rc in $((SECONDS - start)) s"; cat "$WORK/$name.log"; } >>"$OUT/check.log"
    tail -n "${TAIL:-15}" "$WORK/$name.log"
}

step tests 150 $PY -m pytest -q -p no:cacheprovider -rs --tb=short tests/test_cuda_kernels.py tests/test_ops_backends.py

$PY - "$WORK/vits14-random.safetensors" <<'PYEOF'
import sys

import safetensors.torch
import timm

model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, dynamic_img_size=True)
safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, sys.argv[1])
PYEOF
export WRC_BACKBONE_WEIGHTS="$WORK/vits14-random.safetensors"

TAIL=40 step bench 150 $PY -m wrcli bench --device "$DEVICE" --size 448 --scale 2 --batch "$BATCH" --precision fp32,bf16 \
    --backend torch,cupy --warmup 5 --repeats "$REPEATS" --out "$OUT/bench-gpu.json"
WRC_BACKEND=torch TAIL=12 step bench-torch 60 $PY -m wrcli bench --device "$DEVICE" --size 448 --scale 2 \
    --batch "$BATCH" --precision fp32,bf16 --cases upsampler,pipeline --upsampler default --warmup 5 \
    --repeats "$REPEATS" --out "$OUT/bench-gpu-torch.json"

for dev in "$DEVICE" cpu; do
    step "extract-$dev" 60 $PY -m wrcli extract examples/images "$WORK/extract-$dev.h5" --device "$dev" --json
done
step extract-compare 20 $PY - "$WORK/extract-$DEVICE.h5" "$WORK/extract-cpu.h5" <<'PYEOF'
import sys

import numpy as np

from wrcli.stores import open_store

with open_store(sys.argv[1]) as a, open_store(sys.argv[2]) as b:
    pairs = list(zip(a, b))
    assert pairs and all(na == nb for (na, _), (nb, _) in pairs), "the two stores hold different images"
    for (name, x), (_, y) in pairs:
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        print(f"{name}: shape {x.shape}, rel. L2 difference {np.linalg.norm(x - y) / np.linalg.norm(y):.2e}")
PYEOF

PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} TAIL=25 step profile 120 $PY benchmarks/gpu_profile.py --device "$DEVICE" --batch "$BATCH" \
    --repeats "$REPEATS" --weights "$WORK/vits14-random.safetensors" --log "$OUT/profile.txt"

TAIL=15 step bench-compiled 120 $PY -m wrcli bench --device "$DEVICE" --size 448 --scale 2 --batch 1 --precision fp32 \
    --backend compiled --cases solve --warmup 3 --repeats "$REPEATS" --out "$OUT/bench-gpu-compiled.json"
