#!/usr/bin/env bash
# Scale out: each rank takes every N-th shard (static assignment) and writes only those; the store equals a
# single-process run. Works the same under SLURM (srun sets SLURM_PROCID/SLURM_NTASKS) and on CPU.
set -euo pipefail
torchrun --nproc-per-node=4 -m wrcli extract /data/coco/train2017 /data/features/coco-train.zarr \
    --device cuda --batch-size 32 --workers 8      # offline: export WRC_BACKBONE_WEIGHTS=/path/to/weights first

# SLURM, 2 nodes × 4 GPUs, no rendezvous needed (ranks coordinate through the store):
#   srun --ntasks=8 --gpus-per-task=1 python -m wrcli extract /data/coco/train2017 /data/features/coco-train.zarr --device cuda
