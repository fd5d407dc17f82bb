#!/usr/bin/env bash
# Train a WRC checkpoint on a lent GPU for a fixed wall time (issue 17 item 5), run from the repository root on the
# device machine. Prepare here first, once per checkout (the pack is git-ignored and travels as a carried path):
#
#     python benchmarks/gpu_pack.py pack --weights ../shared/weights/dinov2_vits14.safetensors \
#         --photos ../shared/data/photos --val 0.1 --out gpu-pack
#
# then run it there with `gpu-pack` in the call's carry and a timeout of ~590 s, e.g. `bash benchmarks/gpu_train.sh`.
# In order:
#   1. the bf16 backbone weights are unpacked from gpu-pack/ (checked against the manifest's sha256);
#   2. a short calibration run (CALIB_STEPS steps, no validation, no BatchNorm step) measures the steps per second
#      of this recipe on this GPU, after its first log window (cuDNN's autotuning, the workers' start);
#   3. the training run: as many steps as fit in TRAIN_SECONDS at that rate (× 0.85), so that the learning-rate
#      schedule (warm-up, cosine decay) completes, then wrc train's BatchNorm step; live backbone targets (no
#      cache: fresh crops and augmentations at every draw), bf16 autocast, no validation there (the held-out
#      photos never travel: validate and judge the result here, with the model card's commands);
#   4. $OUT receives the checkpoint (float32), its JSON-lines log, both runs' output and env.txt.
# Settings (environment): TRAIN_SECONDS (400), BATCH (16), LR (1e-3), SOLVER (official), INIT (empty: from scratch;
# `wrc` or a checkpoint path: warm start), SEED (0), WORKERS (12), CALIB_STEPS (40), BN_BATCHES (200), DEVICE (cuda),
# PRECISION (bf16), NAME (wrc_gpu), PACK (gpu-pack), WORK (/tmp/wrc-gpu-train), PY (python3).
set -uo pipefail
PY=${PY:-python3}
OUT=${OUT:-out}
WORK=${WORK:-/tmp/wrc-gpu-train}
PACK=${PACK:-gpu-pack}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-bf16}
TRAIN_SECONDS=${TRAIN_SECONDS:-400}
BATCH=${BATCH:-16}
LR=${LR:-1e-3}
SOLVER=${SOLVER:-official}
INIT=${INIT:-}
SEED=${SEED:-0}
WORKERS=${WORKERS:-12}
CALIB_STEPS=${CALIB_STEPS:-40}
BN_BATCHES=${BN_BATCHES:-200}
NAME=${NAME:-wrc_gpu}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
{
    date -u +%FT%TZ
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    $PY -c "import sys, torch, timm; print(sys.version.split()[0], 'torch', torch.__version__, 'timm', timm.__version__)"
    git rev-parse HEAD 2>/dev/null || true
} | tee "$OUT/env.txt"

$PY benchmarks/gpu_pack.py unpack "$PACK" "$WORK/backbone.bf16.safetensors" | tee -a "$OUT/env.txt" || exit 1

common=(train "$PACK/photos" --backbone-weights "$WORK/backbone.bf16.safetensors" --device "$DEVICE"
        --precision "$PRECISION" --batch-size "$BATCH" --lr "$LR" --solver "$SOLVER" --val 0 --workers "$WORKERS"
        --seed "$SEED" --overwrite)

start=$SECONDS
$PY -m wrcli "${common[@]}" --out "$WORK/calib.safetensors" --steps "$CALIB_STEPS" --warmup 0 --bn-batches 0 \
    --log-every $(( CALIB_STEPS / 4 > 0 ? CALIB_STEPS / 4 : 1 )) >"$OUT/calib.log" 2>&1
rc=$?
echo "== calibration: exit $rc in $((SECONDS - start)) s" | tee -a "$OUT/env.txt"
[ $rc -eq 0 ] || { tail -n 20 "$OUT/calib.log"; exit 1; }
steps=$($PY - "$WORK/calib.safetensors.log.jsonl" "$BATCH" "$TRAIN_SECONDS" "$OUT/env.txt" <<'PYEOF'
import json
import sys

log, batch, budget, env = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
rates = [r["images_per_s"] / batch for r in map(json.loads, open(log)) if "images_per_s" in r]
line = f"calibration: {rates[-1]:.2f} steps/s at batch {batch} (log windows: {', '.join(f'{r:.2f}' for r in rates)})"
print(line, file=sys.stderr)
print(line, file=open(env, "a"))
print(max(20, int(rates[-1] * budget * 0.85)))  # the last window's rate: after the first one's warm-up
PYEOF
) || exit 1
echo "training $steps steps (TRAIN_SECONDS=$TRAIN_SECONDS, batch $BATCH, lr $LR, solver $SOLVER, init ${INIT:-none})" \
    | tee -a "$OUT/env.txt"

start=$SECONDS
timeout -s TERM $(( 2 * TRAIN_SECONDS + 120 )) $PY -m wrcli "${common[@]}" --out "$WORK/$NAME.safetensors" \
    --steps "$steps" --bn-batches "$BN_BATCHES" --log-every 100 --checkpoint-every 100000 ${INIT:+--init "$INIT"} \
    >"$OUT/train.log" 2>&1  # the timeout only guards against a hang: a SIGTERM saves the state and writes no model
rc=$?
echo "== training: exit $rc in $((SECONDS - start)) s" | tee -a "$OUT/env.txt"
tail -n 8 "$OUT/train.log"
cp "$WORK/$NAME.safetensors.log.jsonl" "$OUT/" 2>/dev/null
[ $rc -eq 0 ] && cp "$WORK/$NAME.safetensors" "$OUT/"
exit $rc
