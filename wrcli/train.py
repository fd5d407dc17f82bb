"""``wrc train``: self-supervised training of a WRC upsampler against a frozen backbone (the authors' recipe).

Per training image (size S = 448 by default, patch p = 14): the S×S image (short side resized, centre crop),
its S/2 low-res view → backbone → h×h tokens → upsampler ×2 (guided by the normalised low-res view) → 2h×2h.
The loss sums three Cosine_MSE terms (:func:`wrcli.training.recipe.cosine_mse`; ``mse="raw"`` uses the plain
MSE instead of the authors' range-scaled one):

- local: K=4 crops of side S/2 at offsets that are multiples of 2p; each crop's backbone features are the
  target of the output window at offset/p;
- down (× ``down_weight``): the backbone's features of the low-res view enlarged ×2 (bilinear,
  align_corners=True) against the whole output;
- aug (× ``aug_weight``): the output guided by a photometrically augmented view against the output guided by
  the clean view, without gradient through the latter.

AdamW, a linear warm-up then cosine decay, bf16 autocast on CUDA only. Runs resume bit for bit from
``OUT.state.pt``; under torchrun the upsampler is wrapped in DistributedDataParallel.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from wrcli.backbones import Backbone, load_backbone
from wrcli.defaults import DEFAULT_BACKBONE
from wrcli.errors import WrcError
from wrcli.models import Upsampler, create_upsampler, save_upsampler
from wrcli.models.wrc import SOLVER_NAMES
from wrcli.progress import Progress
from wrcli.runtime import Rank, current_rank, resolve_device, wait_until
from wrcli.training import cache as feature_cache
from wrcli.training import data, validation
from wrcli.training.recipe import cosine_mse, crop_windows, lr_factor
from wrcli.training.samples import CachedSamples, LiveSamples
from wrcli.training.state import (
    check_compatible,
    load_state,
    rng_states,
    save_state,
    set_rng_states,
)
from wrcli.training.stop import StopFlag, ignore_stop_signals
from wrcli.training.targets import autocast, backbone_identity, train_targets

__all__ = ["TrainOptions", "train"]

TERMS = ("local", "down", "aug")


@dataclass(frozen=True)
class TrainOptions:
    steps: int = 100_000  # optimiser steps in all (the authors' max_steps); the learning-rate schedule spans them
    batch_size: int = 4  # images per step and process (the authors': 4)
    lr: float = 2e-4  # AdamW peak learning rate (the authors' config; their README command uses 1e-3)
    weight_decay: float = 1e-5  # AdamW weight decay; betas are (0.9, 0.999)
    warmup: int = 1000  # linear warm-up steps before the cosine decay, at most a tenth of --steps (authors: constant lr)
    clip_grad: float | None = None  # clip the gradient norm to this value; None: no clipping
    solver: str = "official"  # WRC solve: official (upsampler wrc), exact (wrc-exact) or converse (wrc-converse)
    mse: str = "range"  # MSE term of the loss: "range" (the authors': scaled by the target's per-pixel range) or "raw"
    skip: bool = False  # add a bilinear skip to the published network (WRCUpsampler skip=True; it starts as bilinear)
    backbone: str = DEFAULT_BACKBONE  # frozen timm ViT whose features are upsampled
    backbone_weights: str | None = None  # .safetensors (timm layout) for the backbone; None: timm's pretrained weights
    backbone_kwargs: dict[str, Any] | None = None  # extra timm.create_model arguments (e.g. a small ViT for tests)
    size: int = 448  # training image side, a multiple of 2×patch; the low-res view and the local crops are size/2
    crops: int = 4  # local crops per image
    down_weight: float = 1.0  # weight of the down term (the authors' loop: 1; their config names an unused 0.1)
    aug_weight: float = 1.0  # weight of the augmentation-consistency term (likewise)
    device: str = "auto"  # auto, cpu, cuda or cuda:N (under torchrun, auto/cuda take the local rank's GPU)
    workers: int = 2  # DataLoader processes that decode and augment images (0: in the main process)
    seed: int = 0  # seeds the upsampler's initialisation, the data order, the crops and the augmentations
    val: float | str | Sequence[str] | None = 0.05  # validation images: a fraction held out of IMAGES (by a hash
    # of each file name), a folder / list file / glob, a list of paths, or None for no validation
    val_every: int = 1000  # validate every this many steps (and at the end); 0: only at the end
    log_every: int = 50  # every this many steps: a JSON line in the log file and a loss line on stderr
    log_file: str | None = None  # JSON-lines log; default OUT + ".log.jsonl"
    checkpoint_every: int = 1000  # save the training state OUT + ".state.pt" every this many steps (and at exit)
    resume: bool = False  # continue from OUT + ".state.pt" (bit for bit); a fresh start when there is none
    stop_after: int | None = None  # stop at this step (saving the training state) to continue later with resume
    cache: str | None = None  # folder of precomputed backbone outputs (built on first use): no backbone in the loop
    cache_variants: int = 4  # random crop sets cached per image
    progress: bool = True  # progress bar (periodic lines when stderr is not a terminal) and loss lines on stderr


class _Objective(nn.Module):
    """One forward for DistributedDataParallel: the upsampler guided by the clean and by the augmented view."""

    def __init__(self, model: Upsampler) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats: Tensor, guide: Tensor, aug_guide: Tensor) -> tuple[Tensor, Tensor]:
        return self.model(feats, guide), self.model(feats, aug_guide)


def train(images: str | Sequence[str], out: str, opts: TrainOptions) -> dict[str, Any]:
    """Train a WRC upsampler on IMAGES (folder, list file, glob or paths) and write it to ``out`` (safetensors).

    Returns {"steps", "completed", "seconds", "images_per_s", "losses": {loss, local, down, aug},
    "validation": {"images", "model" | "bilinear": {"full" | "tiles": {cos, mse}}} | None, "out", "state", "log_file",
    "images", "skipped"}. Raises KeyboardInterrupt after saving the state when interrupted.
    """
    _check(opts)
    rank = current_rank()
    device = resolve_device(opts.device, rank)
    owns_group = rank.world > 1 and not dist.is_initialized()
    if owns_group:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank.rank, world_size=rank.world, timeout=timedelta(hours=2))
    try:
        return _Run(images, Path(out), opts, rank, device).run()
    finally:
        if owns_group:
            dist.destroy_process_group()


def _check(opts: TrainOptions) -> None:
    positive = ("steps", "batch_size", "crops", "cache_variants", "log_every", "checkpoint_every")
    bad = [f"{k}={getattr(opts, k)}" for k in positive if getattr(opts, k) < 1]
    bad += [f"{k}={getattr(opts, k)}" for k in ("warmup", "val_every", "workers") if getattr(opts, k) < 0]
    if opts.lr <= 0 or opts.weight_decay < 0 or opts.down_weight < 0 or opts.aug_weight < 0:
        bad.append("lr > 0 and non-negative weight_decay, down_weight, aug_weight are needed")
    if opts.stop_after is not None and opts.stop_after < 1:
        bad.append(f"stop_after={opts.stop_after}")
    if bad:
        raise WrcError(f"invalid training options: {', '.join(bad)}")
    if opts.mse not in ("range", "raw"):
        raise WrcError(f"unknown --mse {opts.mse!r}; use range or raw")
    if opts.solver not in SOLVER_NAMES:
        raise WrcError(f"unknown solver {opts.solver!r}; use one of {', '.join(SOLVER_NAMES)}")


class _Run:
    """One call of :func:`train`: setup, the loop, the final model."""

    def __init__(self, images: str | Sequence[str], out: Path, opts: TrainOptions, rank: Rank, device: torch.device):
        self.opts, self.rank, self.device, self.out = opts, rank, device, out
        self.main = rank.is_main
        self.state_path = Path(f"{out}.state.pt")
        self.log_path = Path(opts.log_file or f"{out}.log.jsonl")
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(opts.seed)
        self.backbone: Backbone = load_backbone(
            opts.backbone, opts.backbone_weights, device=device, **(opts.backbone_kwargs or {})
        )
        self.patch = self.backbone.patch_size
        if opts.size % (2 * self.patch):
            raise WrcError(f"size {opts.size} is not a multiple of 2×patch ({2 * self.patch}); use e.g. 448 for patch 14")
        self.identity = backbone_identity(self.backbone)
        self._images(images)
        torch.manual_seed(opts.seed)
        self.model = create_upsampler(SOLVER_NAMES[opts.solver], self.backbone.channels, self.patch, skip=opts.skip).to(device).train()
        objective = _Objective(self.model)
        self.objective = DistributedDataParallel(objective) if rank.world > 1 else objective
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=opts.lr, betas=(0.9, 0.999), weight_decay=opts.weight_decay
        )
        warmup = min(opts.warmup, opts.steps // 10)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, functools.partial(lr_factor, steps=opts.steps, warmup=warmup)
        )
        self.fingerprint = {
            "solver": opts.solver, "skip": opts.skip, "mse": opts.mse, "backbone": self.identity, "backbone_kwargs": opts.backbone_kwargs,
            "size": opts.size, "crops": opts.crops, "batch_size": opts.batch_size, "world_size": rank.world,
            "lr": opts.lr, "weight_decay": opts.weight_decay, "warmup": warmup, "steps": opts.steps,
            "clip_grad": opts.clip_grad, "seed": opts.seed, "down_weight": opts.down_weight,
            "aug_weight": opts.aug_weight, "cached": opts.cache is not None,
            "cache_variants": opts.cache_variants if opts.cache is not None else None,
            "data_sha256": data.list_sha256(self.train_images),
        }
        self.step, self.seconds_before = 0, 0.0
        saved = self._saved_state() if opts.resume else None  # refuse changed settings before any long work
        self._sources()
        if saved is not None:
            self._restore(saved)

    # -- data -------------------------------------------------------------------------------------
    def _images(self, src: str | Sequence[str]) -> None:
        opts = self.opts
        every = data.list_images(src)
        val, split = self._val_split(every)
        held = {os.path.realpath(i.path) for i in val}
        train = [i for i in every if os.path.realpath(i.path) not in held]
        hashing = opts.cache is not None
        kept = data.readable(train, opts.size, self.patch, workers=opts.workers, hash_files=hashing, what="training")
        self.skipped = len(train) - len(kept)
        self.train_images = kept
        self.val_images = data.readable(val, opts.size, self.patch, workers=opts.workers, hash_files=hashing, what="validation")
        self.split = {**split, "images": len(self.val_images)}
        need = opts.batch_size * self.rank.world
        if len(kept) < need:
            raise WrcError(
                f"only {len(kept)} readable training image(s) ({self.skipped} skipped, {len(val)} held out for "
                f"validation); a step needs batch_size × processes = {need}: add images or lower the batch size"
            )

    def _sources(self) -> None:
        """Where samples and validation targets come from: decoding + the backbone, or the feature cache."""
        opts = self.opts
        if opts.cache is None:
            self.samples = LiveSamples(self.train_images, opts.size, self.patch, opts.crops)
            held_samples = validation.in_memory(
                self.val_images, self.backbone, self.device, size=opts.size, batch=opts.batch_size, workers=opts.workers
            )
            self.val_sample = held_samples.__getitem__
        else:
            train_entries, val_entries = self._build_cache()
            self.samples = CachedSamples([e.path for e in train_entries], opts.cache_variants)
            self.val_sample = validation.from_cache([e.path for e in val_entries])

    def _val_split(self, every: list[data.ImageRef]) -> tuple[list[data.ImageRef], dict[str, Any]]:
        val = self.opts.val
        if isinstance(val, str) and not os.path.exists(val):
            try:
                val = float(val)
            except ValueError:
                pass
        if val is None:
            return [], {"kind": "none"}
        if isinstance(val, (int, float)):
            if not 0 <= val < 1:
                raise WrcError(f"a validation fraction must be in [0, 1), got {val}")
            return [i for i in every if data.held_out(i.name, val)], {"kind": "fraction", "fraction": float(val)}
        images = data.list_images(val)
        return images, {"kind": "list", "list_sha256": data.list_sha256(images)}

    def _build_cache(self) -> tuple[list[feature_cache.Entry], list[feature_cache.Entry]]:
        opts = self.opts
        common = dict(identity=self.identity, size=opts.size, crops=opts.crops, variants=opts.cache_variants)
        train = [feature_cache.entry(opts.cache, i.path, i.sha256, "train", **common) for i in self.train_images]
        val = [feature_cache.entry(opts.cache, i.path, i.sha256, "val", **common) for i in self.val_images]
        everything = train + val
        mine = [e for n, e in enumerate(everything) if n % self.rank.world == self.rank.rank and not feature_cache.is_valid(e)]
        feature_cache.build(mine, self.backbone, self.device, size=opts.size, crops=opts.crops,
                            variants=opts.cache_variants, workers=opts.workers, progress=opts.progress and self.main)
        if self.rank.world > 1:
            wait_until(lambda: all(map(feature_cache.is_valid, everything)), timeout=7 * 86400.0, poll=2.0,
                       what=f"the other processes to build the feature cache in {opts.cache}")
        return train, val

    # -- state --------------------------------------------------------------------------------------
    def _saved_state(self) -> dict[str, Any] | None:
        if not self.state_path.is_file():
            if self.main:
                sys.stderr.write(f"no training state at {self.state_path}: starting at step 0\n")
            return None
        state = load_state(self.state_path)
        check_compatible(self.state_path, state["fingerprint"], self.fingerprint)
        return state

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.seconds_before = int(state["step"]), float(state["seconds"])
        set_rng_states(state["rng"])

    def _save_state(self, seconds: float) -> None:
        if self.main:
            save_state(self.state_path, {
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": self.step, "seconds": seconds,
                "options": json.loads(json.dumps(asdict(self.opts))), "fingerprint": self.fingerprint,
                "rng": rng_states(),
            })

    # -- logging --------------------------------------------------------------------------------------
    def _log(self, record: dict[str, Any], line: str) -> None:
        if not self.main:
            return
        with self.log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.opts.progress:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    def _validate(self) -> dict[str, Any] | None:
        if not self.val_images:
            return None
        if self.rank.world > 1:
            for buffer in self.model.buffers():  # every rank evaluates rank 0's batch-norm statistics
                dist.broadcast(buffer, 0)
        result = validation.validate(
            self.model, self.backbone.normalize, self.val_sample, len(self.val_images), self.device,
            batch=self.opts.batch_size, rank=self.rank.rank, world=self.rank.world,
        )
        self._log({"step": self.step, "validation": result}, f"step {self.step}: {validation.describe(result)}")
        return result

    # -- the loop -------------------------------------------------------------------------------------
    def _losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        device, backbone = self.device, self.backbone
        lr = batch["lr"].to(device)
        if "lr_feats" in batch:
            feats, crop_feats, down_feats = (batch[k].to(device) for k in ("lr_feats", "crop_feats", "down_feats"))
            crop_feats = crop_feats.flatten(0, 1)
        else:
            feats, crop_feats, down_feats = train_targets(backbone, lr, batch["crops"].to(device).flatten(0, 1))
        with autocast(device):
            output, augmented = self.objective(feats, backbone.normalize(lr), backbone.normalize(batch["aug"].to(device)))
        loss = functools.partial(cosine_mse, normalise=self.opts.mse == "range")
        terms = {
            "local": loss(crop_windows(output, batch["offsets"], self.patch), crop_feats),
            "down": loss(output, down_feats),  # authors: criterion(backbone feats, output), i.e. min-max by the output
            # Target of the augmentation term: the clean-guided output without gradient. The authors run the
            # upsampler a third time under no_grad for it; the values are identical (same inputs, batch-norm in
            # training mode), but their batch-norm running statistics see that clean batch twice per step.
            "aug": loss(augmented, output.detach()),
        }
        terms["loss"] = terms["local"] + self.opts.down_weight * terms["down"] + self.opts.aug_weight * terms["aug"]
        return terms

    def run(self) -> dict[str, Any]:
        opts, start = self.opts, self.step
        end = opts.steps if opts.stop_after is None else min(opts.steps, max(opts.stop_after, start))
        sampler = data.StepSampler(len(self.train_images), opts.batch_size, opts.seed, start, end,
                                   self.rank.rank, self.rank.world)
        loader = DataLoader(self.samples, batch_sampler=sampler, num_workers=opts.workers,
                            worker_init_fn=ignore_stop_signals)
        if self.main and not (opts.resume and start):
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path.write_text("")
        bar = Progress(end - start, "train", unit="step", enabled=opts.progress and self.main)
        t0 = last_t = time.monotonic()
        window: list[Tensor] = []
        losses: dict[str, float] = {}
        result, updating, stopped = None, False, False
        try:
            with StopFlag() as stop:
                batches = iter(loader)
                while self.step < end and not (stopped := self._stop_everywhere(stop.requested)):
                    terms = self._losses(self._next(batches))
                    self.optimizer.zero_grad(set_to_none=True)
                    terms["loss"].backward()
                    used_lr = self.optimizer.param_groups[0]["lr"]
                    updating = True
                    if opts.clip_grad is not None:
                        nn.utils.clip_grad_norm_(self.model.parameters(), opts.clip_grad)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.step += 1
                    updating = False
                    bar.advance()
                    window.append(torch.stack([terms[k].detach() for k in ("loss", *TERMS)]))
                    if self.step % opts.log_every == 0 or self.step == end:
                        now = time.monotonic()
                        losses = self._report(window, used_lr, now - last_t, self.seconds_before + now - t0)
                        window, last_t = [], now
                    pause = time.monotonic()
                    if opts.val_every and self.step % opts.val_every == 0 and self.step < opts.steps:
                        self._validate()
                    if self.step % opts.checkpoint_every == 0:
                        self._save_state(self.seconds_before + time.monotonic() - t0)
                    last_t += time.monotonic() - pause  # throughput counts training time only
        except BaseException:
            if not updating:  # the state is consistent between updates: keep it
                self._save_state(self.seconds_before + time.monotonic() - t0)
                if self.main and opts.progress:
                    sys.stderr.write(f"\nstopped at step {self.step}/{opts.steps}; state saved to {self.state_path}\n")
            raise
        finally:
            bar.close()
        seconds = time.monotonic() - t0
        self._save_state(self.seconds_before + seconds)
        completed = self.step >= opts.steps
        if completed:
            result = self._validate()
            if self.main:
                save_upsampler(self.model, self.out, backbone=self.backbone,
                               provenance=self._provenance(result, self.seconds_before + seconds, losses))
        if self.rank.world > 1:
            dist.barrier()
        if stopped:
            if self.main and opts.progress:
                sys.stderr.write(f"interrupted at step {self.step}/{opts.steps}; state saved to {self.state_path}; "
                                 f"continue with resume\n")
            raise KeyboardInterrupt
        done = (self.step - start) * opts.batch_size * self.rank.world
        return {
            "steps": self.step, "completed": completed, "seconds": seconds, "images_per_s": done / max(seconds, 1e-9),
            "losses": losses, "validation": result, "out": str(self.out) if completed else None,
            "state": str(self.state_path), "log_file": str(self.log_path), "images": len(self.train_images),
            "skipped": self.skipped,
        }

    @staticmethod
    def _next(batches: Iterator[dict[str, Tensor]]) -> dict[str, Tensor]:
        try:
            return next(batches)
        except WrcError as e:  # raised in a DataLoader worker: the message carries the worker's traceback
            raise WrcError(str(e).strip().splitlines()[-1].removeprefix("wrcli.errors.WrcError: ")) from None

    def _stop_everywhere(self, requested: bool) -> bool:
        """Whether any process was asked to stop (all must stop at the same step)."""
        if self.rank.world == 1:
            return requested
        flag = torch.tensor([float(requested)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _report(self, window: list[Tensor], used_lr: float, span: float, elapsed: float) -> dict[str, float]:
        means = torch.stack(window).mean(0)
        if self.rank.world > 1:
            dist.all_reduce(means)
            means /= self.rank.world
        values = dict(zip(("loss", *TERMS), means.tolist()))
        rate = len(window) * self.opts.batch_size * self.rank.world / max(span, 1e-9)
        record = {"step": self.step, **values, "lr": used_lr, "images_per_s": rate, "elapsed": elapsed}
        self._log(record, f"step {self.step}/{self.opts.steps}  loss {values['loss']:.4f} (local {values['local']:.4f}, "
                          f"down {values['down']:.4f}, aug {values['aug']:.4f})  lr {used_lr:.2e}  {rate:.2f} img/s")
        return values

    def _provenance(self, result: dict | None, seconds: float, losses: dict[str, float]) -> dict[str, Any]:
        import timm

        device = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return {
            "command": " ".join(sys.argv), "options": json.loads(json.dumps(asdict(self.opts))),
            "recipe": "wrcli self-supervised WRC training: local crops + down + augmentation consistency, cosine + "
                      + ("range-scaled MSE (Cosine_MSE)" if self.opts.mse == "range" else "plain MSE"),
            "data": {"images": len(self.train_images), "list_sha256": self.fingerprint["data_sha256"],
                     "skipped": self.skipped, "validation": self.split},
            "backbone": self.identity, "steps": self.step, "seconds": seconds, "device": device,
            "processes": self.rank.world, "torch": torch.__version__, "timm": timm.__version__,
            "final_losses": losses, "validation": result,
        }
