"""``wrc extract``: images → frozen backbone → upsampler → feature store; streamed, resumable, sharded.

Decoding runs in DataLoader workers (uint8 to the device, normalisation there), compute in the main
thread, and writing in a background thread, so the three overlap; memory is bounded by a few shards and
one batch's activations (freed heap memory goes back to the OS after every batch).
The unit of work is a shard of images written whole. Rank r of W takes shards r, r+W, ... (static), so a
torchrun/SLURM job writes exactly the store a single process would, and a rerun after a crash only
redoes the shards that were not marked done, whose files changed since, or that hold an image whose file's
(size, mtime_ns) differs from the one recorded when it was read (one ``stat`` per image of a done shard).
A rerun of a finished store that needs none of that writes nothing, and also runs where OUT's folder is read-only.

Tar shards as input (:mod:`wrcli.data.tars`). The tars are listed first (one forward pass each: member headers
only for local uncompressed tars), which fixes the image list, its order (tar by tar, members in tar order) and so
the store's shards of images, as for any SRC. The store's shards may span two tars; the tars are dealt to the ranks
(tar t to rank t mod W), and a store shard belongs to the rank of the tar its first image is in. A rank reads each
tar its shards need once, forward, from the first member it needs to the last, then stops (the head of the next
tar, for a shard that runs into it). Batches are formed within a shard, as always, so a resumed or multi-rank run
computes every image in the batch a single uninterrupted run would: the stores are bitwise equal. The images of a
tar (or of a table's bytes column) are read in the main process by a background thread, in order, and decoded in
the DataLoader workers (:class:`~wrcli.data.images.Prefetched`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TextIO

import numpy as np
import torch
from torch.utils.data import DataLoader

from wrcli import __version__
from wrcli.allocator import trim_memory
from wrcli.backbones import Backbone
from wrcli.data import ImageDataset, ResizePolicy, discover
from wrcli.data.images import EncodedDataset, Prefetched, file_stat
from wrcli.data.sources import Source
from wrcli.data.tables import TableOptions
from wrcli.defaults import DEFAULT_BACKBONE, DEFAULT_UPSAMPLER, STORE_DTYPES
from wrcli.errors import WrcError
from wrcli.models import Upsampler
from wrcli.progress import Progress
from wrcli.runtime import Rank, current_rank, lean_forks, page_align_large_tensors, run_when_idle, wait_until
from wrcli.session import describe_upsampler, open_session
from wrcli.stores import (
    ImageRecord, StoreSpec, check_job, create_store, current_job, finalize_store, lock_store, open_writer, resume_state,
    store_format, summary,
)
from wrcli.stores.base import StoreState, kept_metadata, shard_list

log = logging.getLogger(__name__)

SHARD_BYTES = 64 << 20  # padded bytes of features per shard (bounds memory and the redo after a crash)
MAX_SHARD_IMAGES = 256
UNWRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})  # why the lease beside OUT cannot be made


@dataclass(frozen=True)
class ExtractOptions:
    backbone: str = DEFAULT_BACKBONE
    backbone_weights: str | None = None
    layers: tuple[int, ...] | None = None
    upsampler: str = DEFAULT_UPSAMPLER
    scale: int = 2  # × the token grid; 1 stores the backbone's own grid
    out_size: tuple[int, int] | None = None  # explicit (H, W) for every image instead of a scale
    size: int = 448
    crop: bool = False
    max_side: int | None = None
    dtype: str = "float16"  # of the stored features
    precision: str = "auto"  # of the compute (auto, fp32, bf16: wrcli.precision); recorded resolved
    batch_size: int = 8
    workers: int = 2
    device: str = "auto"
    limit: int | None = None
    overwrite: bool = False
    format: str | None = None
    shard_size: int | None = None  # images per shard (the unit of work and of resume); default: ~64 MiB of padded features
    table: TableOptions = TableOptions()  # which columns of a table SRC hold the images, which are kept
    wait_timeout: float = 86400.0


class Extractor:
    """Backbone + upsampler + resize policy: turns uint8 image batches into upsampled features."""

    def __init__(self, opts: ExtractOptions):
        if opts.scale < 1:
            raise WrcError(f"--scale must be ≥ 1, got {opts.scale}")
        if opts.dtype not in STORE_DTYPES:
            raise WrcError(f"--dtype must be one of {', '.join(STORE_DTYPES)}, got {opts.dtype!r}")
        upsampled = opts.scale != 1 or opts.out_size is not None
        session = open_session([opts.upsampler] if upsampled else None, backbone=opts.backbone,
                               weights=opts.backbone_weights, device=opts.device, precision=opts.precision,
                               layers=opts.layers)
        self.opts, self.session, self.device = opts, session, session.device
        self.backbone: Backbone = session.backbone
        self.upsampler: Upsampler | None = next(iter(session.upsamplers.values()), None)
        self.policy = ResizePolicy(size=opts.size, patch=self.backbone.patch_size, crop=opts.crop, max_side=opts.max_side)
        self.n_layers = len(self.backbone.layers)

    def feat_hw(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        if self.opts.out_size is not None:
            return self.opts.out_size
        p, s = self.backbone.patch_size, self.opts.scale
        return input_hw[0] // p * s, input_hw[1] // p * s

    def grid(self) -> tuple[int, int]:
        return self.feat_hw(self.policy.max_input_hw())

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B,3,H,W) on any device → features (B, C, h', w') in the store dtype, on the CPU; computed at
        the session's precision."""
        with self.session.autocast():
            return self._features(pixels)

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        images = self.backbone.normalize(pixels.to(self.device, non_blocking=True))
        feats = self.backbone(images)
        if self.upsampler is not None:
            if self.n_layers > 1:  # one upsampler, applied to each layer's features
                B, C, h, w = feats.shape
                feats = feats.reshape(B * self.n_layers, C // self.n_layers, h, w)
                images = images.repeat_interleave(self.n_layers, dim=0)
            feats = self.upsampler.upsample(feats, images, scale=None if self.opts.out_size else self.opts.scale,
                                            size=self.opts.out_size)
            if self.n_layers > 1:
                feats = feats.reshape(-1, self.backbone.channels, *feats.shape[-2:])
        return feats.to(getattr(torch, self.opts.dtype)).cpu()

    def settings(self) -> dict[str, Any]:
        """Everything that determines the stored features (hashed into the store's fingerprint)."""
        upsampler = {"name": "none"} if self.upsampler is None else describe_upsampler(self.upsampler)
        return {
            "wrcli_version": __version__,
            "backbone": self.backbone.config(),
            "upsampler": upsampler,
            "scale": None if self.opts.out_size else self.opts.scale,
            "out_size": list(self.opts.out_size) if self.opts.out_size else None,
            "resize": self.policy.to_dict(),
            "normalisation": {"mean": list(self.backbone.mean), "std": list(self.backbone.std), "on": "device"},
            "dtype": self.opts.dtype,
            "precision": self.session.precision,
        }


def shard_size_for(channels: int, grid: tuple[int, int], dtype: str) -> int:
    per_image = channels * grid[0] * grid[1] * np.dtype(dtype).itemsize
    return int(max(1, min(MAX_SHARD_IMAGES, SHARD_BYTES // per_image)))


class _ShardWriter(threading.Thread):
    """Pads and writes finished shards in the background; the first error is re-raised in the main thread.
    With ``idle``, it and the store's I/O threads run only on CPU time the compute leaves (:func:`run_when_idle`)."""

    def __init__(self, writer, spec: StoreSpec, on_written: Callable[[int, list[ImageRecord]], None], idle: bool):
        super().__init__(daemon=True, name="wrc-writer")
        self.writer, self.spec, self.on_written, self.idle = writer, spec, on_written, idle
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.error: BaseException | None = None

    def run(self) -> None:
        if self.idle:
            for tid in (0, *self.writer.io_threads()):
                run_when_idle(tid)
        while (job := self.queue.get()) is not None:
            if self.error is None:
                k, features, records = job
                try:
                    self.writer.write_shard(k, padded(features, self.spec), records)
                    self.on_written(k, records)
                except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                    self.error = exc
                del job, features

    def submit(self, job) -> None:
        self.check()
        self.queue.put(job)

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        self.queue.put(None)
        self.join()
        self.check()


def _idle_worker(worker_id: int) -> None:
    run_when_idle()


def padded(features: list[np.ndarray | None], spec: StoreSpec) -> np.ndarray:
    """Per-image (C, h, w) arrays (None for a failed image) → one (n, C, H, W) array, zero outside each image."""
    out = np.zeros((len(features), spec.channels, spec.height, spec.width), dtype=spec.dtype)
    for j, f in enumerate(features):
        if f is not None:
            out[j, :, : f.shape[-2], : f.shape[-1]] = f
    return out


class Buckets:
    """Batching within one shard: images of equal input size in arrival order; a batch is released as soon
    as it holds ``size`` images, the partial ones at the end of the shard in order of first arrival. A
    function of the shard alone, so a resumed or multi-rank run computes every image in exactly the batch
    an uninterrupted single-process run would (batch composition can change float results)."""

    def __init__(self, size: int):
        self.size = size
        self._open: dict[tuple[int, int], list] = {}

    def push(self, key: tuple[int, int], item) -> list | None:
        bucket = self._open.setdefault(key, [])
        bucket.append(item)
        return self._open.pop(key) if len(bucket) == self.size else None

    def rest(self) -> list[list]:
        batches, self._open = list(self._open.values()), {}
        return batches


def extract(
    src: str, out: str, opts: ExtractOptions = ExtractOptions(), *, stdin: TextIO | None = None,
    on_record: Callable[[dict], None] | None = None, progress: bool = True, command_line: str = "",
) -> dict:
    """Run (or resume) an extraction. Rank 0 returns the summary of the whole store; other ranks return
    ``{"rank": r, ...}`` with the counts of their own shards."""
    page_align_large_tensors()
    rank = current_rank()
    fmt = store_format(out, opts.format)
    if not rank.is_main:
        model, source, spec = _prepare(src, opts, fmt, stdin, command_line)
        if not _resumed(out, fmt, source, spec)[2]:  # finished: rank 0 writes nothing, and may take no lease
            return {"rank": rank.rank, "ok": 0, "failed": 0, "processed": 0, "seconds": 0.0, "images_per_s": 0.0}
        job = current_job()
        wait_until(lambda: check_job(Path(out), job) and _opens(out, spec), timeout=opts.wait_timeout,
                   what=f"rank 0 to create {out}")
        return {"rank": rank.rank, **_write_mine(model, source, spec, out, rank, on_record, progress)}
    lease = lock_store(out)
    try:
        lease.acquire()  # before anything loads: a second writer is refused at once
    except WrcError as exc:
        if not (isinstance(exc.__cause__, OSError) and exc.__cause__.errno in UNWRITABLE):
            raise
        _, source, spec = _prepare(src, opts, fmt, stdin, command_line)
        return _complete_read_only(out, fmt, source, spec, exc.__cause__)
    try:
        model, source, spec = _prepare(src, opts, fmt, stdin, command_line)
        state, changed, why = _resumed(out, fmt, source, spec)
        if not why:
            return _already_complete(out)
        create_store(out, spec, overwrite=opts.overwrite, format=fmt)
        stats = _write_mine(model, source, spec, out, rank, on_record, progress, state, changed)
        if rank.world > 1:
            wait_until(lambda: _all_done(out, spec), timeout=opts.wait_timeout,
                       what="the other ranks to finish their shards")
        result = finalize_store(out)
    finally:
        lease.release()
    result.update(rank=0, seconds=stats["seconds"], images_per_s=stats["images_per_s"], processed=stats["processed"])
    return result


def _already_complete(out: str) -> dict:
    """The summary of a store this run has nothing to write into (the CLI says it is already complete)."""
    return {**summary(out), "rank": 0, "seconds": 0.0, "images_per_s": 0.0, "processed": 0}


def _complete_read_only(out: str, fmt: str, source, spec: StoreSpec, error: OSError) -> dict:
    """:func:`_already_complete` where OUT's folder cannot be written (no lease can be made there); WrcError when
    the store needs writing."""
    if not (why := _resumed(out, fmt, source, spec)[2]):
        return _already_complete(out)
    folder = Path(out).absolute().parent
    raise WrcError(f"{out} needs writing, as {why}, but its folder {folder} is not writable "
                   f"({error.strerror or error}); make it writable or choose another OUT") from error


def _resumed(out: str, fmt: str, source, spec: StoreSpec) -> tuple[StoreState | None, list[int] | None, str]:
    """The store this run resumes (None: none yet, or another), the images of its done shards that changed since
    they were extracted (None unless it is finalized: only then can it be complete; the ranks check their own
    shards of an unfinished one), and why it needs writing ("" when it needs none)."""
    state, why = resume_state(out, spec, format=fmt)
    if state is None:
        return None, None, why
    changed = _changed_images(state, spec, source, range(spec.n_shards)) if state.finalized else None
    return state, changed, _why_write(state, spec, source, changed or [])


def _changed_images(state: StoreState, spec: StoreSpec, source: Source, shards: Iterable[int]) -> list[int]:
    """The images of the done ones of ``shards`` whose file's (size, mtime_ns) is not the recorded one, i.e.
    changed, replaced, gone or back since it was read (one ``stat`` each; for images inside a tar or a table, the
    stat its listing gave)."""
    recorded = state.columns["file_stat"].tolist()
    return [i for k in sorted(state.done.intersection(shards)) for i in spec.shard_range(k)
            if _stat(source, i) != tuple(recorded[i])]


def _stat(source: Source, i: int) -> tuple[int, int]:
    return file_stat(source.items[i][1]) if source.stats is None else source.stats[i]


def _why_write(state: StoreState, spec: StoreSpec, source, changed: list[int]) -> str:
    """Why the store that this run resumes needs writing, given its ``changed`` images ("" when it needs none:
    finalized, every shard done and as written, no image changed)."""
    if not state.finalized:
        return f"it is not finalized ({len(state.done)} of {spec.n_shards} shards written)"
    if inconsistent := state.inconsistent():
        return f"{shard_list(inconsistent)} {'is' if len(inconsistent) == 1 else 'are'} missing or changed"
    return _changed_line(changed, source) if changed else ""


def _prepare(src: str, opts: ExtractOptions, fmt: str, stdin: TextIO | None,
             command_line: str) -> tuple[Extractor, Any, StoreSpec]:
    """The images, the loaded model and the spec of the store they make (its metadata and fingerprint)."""
    source = discover(src, stdin=stdin, limit=opts.limit, table=opts.table, containers=True)
    model = Extractor(opts)
    grid = model.grid()
    settings = model.settings()
    settings["shard_size"] = opts.shard_size or shard_size_for(model.backbone.channels, grid, opts.dtype)
    identity = {**settings, "upsampler": {k: v for k, v in settings["upsampler"].items() if k != "checkpoint"}}
    fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()  # content, not paths
    described = {"kind": source.kind, "root": source.root}
    if source.units is not None:
        described["shards"] = len(set(source.units))
    columns = {"columns": {**kept_metadata(source.columns), "sha256": source.columns_sha256()}} if source.columns else {}
    spec = StoreSpec(
        n_images=len(source.items), channels=model.backbone.channels, height=grid[0], width=grid[1],
        dtype=opts.dtype, shard_size=settings["shard_size"],
        metadata={
            **settings, "fingerprint": fingerprint, "images_sha256": source.sha256(), **columns, "format": fmt,
            "source": described, "command_line": command_line,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "options": {k: v for k, v in asdict(opts).items() if k in ("batch_size", "workers", "device")},
        },
        kept=source.columns,
    )
    return model, source, spec


def _write_mine(model: Extractor, source, spec: StoreSpec, out: str, rank: Rank,
                on_record: Callable[[dict], None] | None, progress: bool, state: StoreState | None = None,
                changed: list[int] | None = None) -> dict:
    """Write this rank's shards that are not done yet, whose files are missing or changed, or that hold an image
    changed since it was extracted; their counts and speed. ``state`` and ``changed`` (of all shards): as the
    caller found them (else read here)."""
    with open_writer(out, spec) as writer:
        state = state or resume_state(out, spec)[0]
        mine = {k for k in range(spec.n_shards) if _owner(source, spec, k, rank.world) == rank.rank}
        if changed is None:
            changed = _changed_images(state, spec, source, mine)
        changed = [i for i in changed if i // spec.shard_size in mine]
        if redo := sorted(mine & state.broken):
            log.warning("%s: %s marked done but missing or changed since written; redoing them", out, shard_list(redo))
        if changed:
            log.warning("%s: %s; redoing %s", out, _changed_line(changed, source),
                        shard_list(sorted({i // spec.shard_size for i in changed})))
        todo = sorted(mine - state.done | {i // spec.shard_size for i in changed})
        return _run_shards(model, source, spec, todo, writer, rank, on_record, progress)


def _owner(source: Source, spec: StoreSpec, k: int, world: int) -> int:
    """The rank that writes shard ``k``: ``k mod world``, or for images read from input shards (tars) the rank of
    the input shard that the store shard's first image is in (input shard t goes to rank t mod world)."""
    if source.units is None:
        return k % world
    return source.units[spec.shard_range(k).start] % world


def _changed_line(changed: list[int], source) -> str:
    """``3 images changed since they were extracted (size or modification time), e.g. 'a.jpg'``."""
    name = source.items[changed[0]][0]
    if len(changed) == 1:
        return f"1 image changed since it was extracted (size or modification time): {name!r}"
    return f"{len(changed)} images changed since they were extracted (size or modification time), e.g. {name!r}"


def _opens(out: str, spec: StoreSpec) -> bool:
    try:
        open_writer(out, spec).close()
        return True
    except WrcError:
        return False


def _all_done(out: str, spec: StoreSpec) -> bool:
    writer = open_writer(out, spec)
    try:
        return len(writer.done_shards()) == spec.n_shards
    finally:
        writer.close()


def _run_shards(model: Extractor, source, spec: StoreSpec, shards: list[int], writer, rank: Rank,
                on_record: Callable[[dict], None] | None, show_progress: bool) -> dict:
    indices = [i for k in shards for i in spec.shard_range(k)]
    bar = Progress(len(indices), "extract" if rank.world == 1 else f"extract[rank {rank.rank}]", enabled=show_progress)
    counts = {"ok": 0, "failed": 0}

    def written(k: int, records: list[ImageRecord]) -> None:
        for i, rec in zip(spec.shard_range(k), records):
            counts["failed" if rec.error else "ok"] += 1
            if on_record is not None:
                on_record({"index": i, "path": rec.name, "status": "failed" if rec.error else "ok", "error": rec.error or None,
                           "orig_hw": list(rec.orig_hw), "input_hw": list(rec.input_hw), "feat_hw": list(rec.feat_hw), "shard": k})

    on_cpu = model.device.type == "cpu"  # the compute's threads are the CPU's: decoding and writing yield to them
    sink = _ShardWriter(writer, spec, written, idle=on_cpu)
    sink.start()
    if source.read is None:  # image files: the workers open them
        dataset, sampler = ImageDataset([(i, source.items[i][1]) for i in indices], model.policy), None
    else:  # images inside tars or a table: read here in order, decoded in the workers
        dataset, sampler = EncodedDataset(model.policy), Prefetched(source.read, indices)
    loader = DataLoader(
        dataset, batch_size=None, sampler=sampler, num_workers=model.opts.workers,
        pin_memory=model.device.type == "cuda", prefetch_factor=4 if model.opts.workers else None,
        worker_init_fn=_idle_worker if on_cpu else None,
    )
    start = time.monotonic()
    try:
        with lean_forks():
            shard = None
            for item in loader:
                k = item["index"] // spec.shard_size
                if shard is None or k != shard.k:
                    if shard is not None:
                        sink.submit(shard.finish(model))
                    shard = _Shard(k, spec, source, bar, model.opts.batch_size)
                shard.add(item, model)
            if shard is not None:
                sink.submit(shard.finish(model))
        sink.finish()
    except BaseException:
        sink.queue.put(None)  # let the thread end; unwritten shards stay undone and are redone on rerun
        raise
    finally:
        bar.close()
    seconds = time.monotonic() - start
    return {**counts, "processed": len(indices), "seconds": seconds, "images_per_s": len(indices) / max(seconds, 1e-9)}


class _Shard:
    """One shard in flight: per-image features (valid region only), records, and :class:`Buckets`."""

    def __init__(self, k: int, spec: StoreSpec, source, bar: Progress, batch_size: int):
        self.k, self.bar = k, bar
        self.first = spec.shard_range(k).start
        n = len(spec.shard_range(k))
        self.features: list[np.ndarray | None] = [None] * n
        self.records: list[ImageRecord | None] = [None] * n
        self.names = [source.items[i][0] for i in spec.shard_range(k)]
        self.buckets = Buckets(batch_size)

    def add(self, item: dict, model: Extractor) -> None:
        j = item["index"] - self.first
        if item["error"]:
            orig = tuple(item["orig_hw"]) if item["orig_hw"] else (0, 0)
            self.records[j] = ImageRecord(self.names[j], orig, (0, 0), (0, 0), item["error"],
                                          tuple(item["file_stat"]))
            self.bar.advance()
            return
        if (batch := self.buckets.push(tuple(item["pixels"].shape[-2:]), item)) is not None:
            self._run(batch, model)

    def _run(self, batch: list[dict], model: Extractor) -> None:
        feats = model(torch.stack([it["pixels"] for it in batch])).numpy()
        fh, fw = feats.shape[-2:]
        for it, f in zip(batch, feats):
            j = it["index"] - self.first
            self.features[j] = f
            input_hw = tuple(it["pixels"].shape[-2:])
            self.records[j] = ImageRecord(self.names[j], tuple(it["orig_hw"]), input_hw, (fh, fw),
                                          file_stat=tuple(it["file_stat"]))
        self.bar.advance(len(batch))
        trim_memory()  # batches of other sizes reuse the freed activations only in part: without this the RSS creeps up

    def finish(self, model: Extractor):
        for batch in self.buckets.rest():
            self._run(batch, model)
        assert all(r is not None for r in self.records), "every image of a shard is recorded before it is written"
        return self.k, self.features, self.records
