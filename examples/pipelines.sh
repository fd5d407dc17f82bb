#!/usr/bin/env bash
# Shell pipelines around `wrc extract`. Offline, export WRC_BACKBONE_WEIGHTS=/path/to/dinov2_vits14.safetensors first.
set -euo pipefail
mkdir -p out

# every JPEG under a tree, newest first, the list on stdin
find examples/images -iname '*.jpg' -printf '%T@ %p\n' | sort -rn | cut -d' ' -f2- | wrc extract - out/newest.zarr

# a glob, square crops, ×4, HDF5, one JSON record per image (jq picks the failures)
wrc extract 'examples/images/*.jpg' out/crops.h5 --crop --scale 4 --jsonl | jq -c 'select(.status=="failed")'

# a list file; the exit status says whether some inputs failed (3) or the run failed (1)
# relative paths in a list file are read relative to the list file's folder (stdin: to the current one)
ls "$PWD"/examples/images/*.jpg > /tmp/list.txt
if wrc extract /tmp/list.txt out/list.zarr --json > out/summary.json; then echo "all ok"
elif [ $? -eq 3 ]; then echo "finished; some inputs failed:"; wrc info out/list.zarr
fi

# interrupted? rerun the same command: finished shards are kept, the rest is redone
wrc extract examples/images out/resume.zarr --shard-size 2
