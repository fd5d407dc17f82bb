"""End-to-end `wrc extract` throughput against forward-only throughput, peak memory and bytes per image.

Throughput is measured in ``--rounds`` rounds, each a forward-only run and an end-to-end run, each in a fresh
process, their order alternating from round to round (so a slow drift in the machine's speed biases neither);
the ratio reported is the median of the rounds' ratios. On a shared 2-core VM one run's speed drifts by
5-15 % within half an hour, more than the overhead being measured, so a single pair of runs decides nothing.

Forward-only = the same images, decoded and resized beforehand with the same policy, held in memory as exactly
the uint8 batches extract forms (same shards, same size buckets), run through normalisation + backbone +
upsampler + cast to the stored dtype (what extract computes), with no decoding and no writing. End-to-end =
the `wrc extract` command itself (decode in workers, compute, background writes), timed from its first image
to its last shard written, plus its whole wall time; nothing samples it while it runs (reading
/proc/PID/smaps_rollup walks the page tables of a process that faults in ~100k pages a second, and sampling it
every 0.2 s cost a fifth of its throughput). Peak memory is measured in separate runs: the PSS summed over the
process tree (main process + DataLoader workers) sampled every 0.5 s and whenever the main process's RSS (read
every 20 ms from /proc/PID/status, which costs nothing) reaches a new high: the tree's peak is the main
process's, at the largest batch, and lasts a fraction of a second, so fixed-interval samples miss it the more
often the shorter the run. And the main process's own peak RSS (VmHWM). Those runs cycle through the same 100
photos, spread evenly over the image folder, so 100 and 1000 images differ only in their number, not in which
image sizes they meet.

    python benchmarks/extract_throughput.py --images ../shared/data/photos --weights W.safetensors \
        --n 200 --rss 100,1000 --rss-size 224 --json results.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path
from statistics import median

import torch


def tree_pss_kib(pid: int) -> int:
    """Proportional set size of a process and all its descendants, from /proc (KiB): pages shared between
    the main process and its forked DataLoader workers are counted once, not once per process."""
    total, todo = 0, [pid]
    children: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children[int(fields[1])].append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
        todo.extend(children.get(p, []))
    return total


def status_kib(pid: int, key: str) -> int:
    """A size from /proc/PID/status in KiB, e.g. ``VmRSS`` or ``VmHWM`` (peak RSS so far); 0 once it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_extract(src: Path, out: Path, args: argparse.Namespace, size: int, *, memory: bool) -> dict:
    cmd = [sys.executable, "-m", "wrcli", "extract", str(src), str(out), "--backbone-weights", args.weights,
           "--upsampler", args.upsampler, "--size", str(size), "--batch-size", str(args.batch_size),
           "--workers", str(args.workers), "--device", "cpu", "--json", "--overwrite"]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    peak, hwm = [0], [0]

    def sample() -> None:
        top, due = 0, 0.0
        while proc.poll() is None:
            rss = status_kib(proc.pid, "VmRSS")
            if rss > top or time.monotonic() >= due:
                peak[0] = max(peak[0], tree_pss_kib(proc.pid))
                top, due = max(top, rss), time.monotonic() + 0.5
            hwm[0] = max(hwm[0], status_kib(proc.pid, "VmHWM"))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    if memory:
        sampler.start()
    stdout, _ = proc.communicate()
    if memory:
        sampler.join()
    if proc.returncode not in (0, 3):
        raise SystemExit(f"wrc extract failed ({proc.returncode}): {' '.join(cmd)}")
    summary = json.loads(stdout)
    result = {"images_per_s": summary["images_per_s"], "wall_s": time.monotonic() - start,
              "bytes_per_image": summary["bytes_on_disk"] / summary["n_images"], "n": summary["n_images"], "size": size}
    if memory:
        result |= {"peak_pss_mib": peak[0] / 1024, "main_peak_rss_mib": hwm[0] / 1024}
    return result


def forward_only(files: list[Path], args: argparse.Namespace) -> float:
    """Images/s of the compute alone, on exactly the batches extract forms (same shards, same buckets), with
    the tensor alignment extract sets."""
    from wrcli.backbones import load_backbone
    from wrcli.data import ResizePolicy, load_image
    from wrcli.extract import Buckets, shard_size_for
    from wrcli.models import load_upsampler
    from wrcli.runtime import page_align_large_tensors

    page_align_large_tensors()
    backbone = load_backbone(weights=args.weights)
    upsampler = load_upsampler(args.upsampler, backbone).fold_batchnorm()
    policy = ResizePolicy(size=args.size, patch=backbone.patch_size)
    grid = tuple(2 * v // backbone.patch_size for v in policy.max_input_hw())
    shard = shard_size_for(backbone.channels, grid, "float16")
    batches = []
    for first in range(0, len(files), shard):
        buckets = Buckets(args.batch_size)
        for f in files[first : first + shard]:
            pixels = torch.from_numpy(load_image(str(f), policy)[0]).permute(2, 0, 1)
            if (batch := buckets.push(tuple(pixels.shape[-2:]), pixels)) is not None:
                batches.append(torch.stack(batch))
        batches += [torch.stack(b) for b in buckets.rest()]
    with torch.inference_mode():
        start = time.monotonic()
        for x in batches:
            images = backbone.normalize(x)
            upsampler.upsample(backbone(images), images, scale=2).half().cpu()
        return len(files) / (time.monotonic() - start)


def forward_only_fresh(files: list[Path], args: argparse.Namespace) -> float:
    """:func:`forward_only` in a new process, as fresh as the `wrc extract` process it is compared with."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(forward_only, files, args).result()


def throughput_rounds(src: Path, out: Path, args: argparse.Namespace) -> dict:
    """``args.rounds`` × (forward-only, end-to-end), alternating which goes first; medians and paired ratios."""
    files = sorted(src.iterdir())
    rounds = []
    for r in range(args.rounds):
        runs = {}
        for kind in (("forward", "e2e") if r % 2 == 0 else ("e2e", "forward")):
            if kind == "forward":
                runs[kind] = forward_only_fresh(files, args)
            else:  # a new store each time: on a finished store with the same settings extract has nothing to do
                shutil.rmtree(out, ignore_errors=True)
                runs[kind] = run_extract(src, out, args, args.size, memory=False)
        rounds.append({"forward_only_images_per_s": runs["forward"], "end_to_end": runs["e2e"],
                       "ratio": runs["e2e"]["images_per_s"] / runs["forward"],
                       "first": "forward" if r % 2 == 0 else "e2e"})
    fwd = median(r["forward_only_images_per_s"] for r in rounds)
    e2e = median(r["end_to_end"]["images_per_s"] for r in rounds)
    return {"rounds": rounds, "forward_only_images_per_s": fwd, "end_to_end_images_per_s": e2e,
            "ratio": median(r["ratio"] for r in rounds), "ratio_of_medians": e2e / fwd,
            "bytes_per_image": rounds[0]["end_to_end"]["bytes_per_image"]}


def image_folder(images: Path, n: int, into: Path, pool: int | None = None) -> Path:
    """A folder of n images (symlinks under distinct names), cycling through the source photos in name order,
    or through ``pool`` of them spread evenly over that order."""
    photos = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if pool is not None:
        photos = [photos[i * len(photos) // pool] for i in range(min(pool, len(photos)))]
    into.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        link = into / f"{i:05d}-{photos[i % len(photos)].name}"
        if not link.exists():
            link.symlink_to(photos[i % len(photos)].resolve())
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--upsampler", default="wrc")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="forward-only/end-to-end pairs for the throughput ratio")
    parser.add_argument("--rss", default="100,1000", help="image counts for the peak-memory comparison ('' to skip)")
    parser.add_argument("--rss-size", type=int, help="--size of the peak-memory runs (default: --size)")
    parser.add_argument("--memory-only", action="store_true", help="only the peak-memory runs (no throughput)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        result = {
            "date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "settings": vars(args) | {"images": str(args.images), "json": None},
        }
        if not args.memory_only:
            src = image_folder(args.images, args.n, tmp / f"n{args.n}")
            result |= throughput_rounds(src, tmp / "e2e.zarr", args)
        result["rss"] = {}
        counts = sorted(int(v) for v in args.rss.split(",") if v)
        for n in counts:
            folder = image_folder(args.images, n, tmp / f"pool{n}", pool=counts[0])
            result["rss"][n] = run_extract(folder, tmp / f"rss{n}.zarr", args, args.rss_size or args.size, memory=True)
        if len(counts) >= 2:
            first, last = result["rss"][counts[0]], result["rss"][counts[-1]]
            result["rss_ratio"] = last["peak_pss_mib"] / first["peak_pss_mib"]
            result["main_rss_ratio"] = last["main_peak_rss_mib"] / first["main_peak_rss_mib"]
    print(json.dumps(result, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
