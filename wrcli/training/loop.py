"""The training loop of one run: a step, the periodic work (log, validate, save the state), the finish (the final
validation and the model file). :func:`wrcli.training.builder.build_run` assembles a :class:`TrainingRun`."""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from wrcli.backbones import Backbone
from wrcli.errors import WrcError, first_line
from wrcli.models import Upsampler, save_upsampler
from wrcli.precision import autocast
from wrcli.progress import Progress
from wrcli.reports import command_line
from wrcli.runtime import Rank

from . import batchnorm, data, skipfit, validation
from .affinity import affinity_loss, contrast_loss
from .options import TrainOptions
from .outputs import start_log
from .recipe import cosine_mse, crop_windows
from .state import rng_states, save_state, set_rng_states
from .stop import StopFlag, ignore_stop_signals
from .targets import train_targets

log = logging.getLogger(__name__)

TERMS = ("local", "down", "aug", "affinity", "contrast")


class TrainingStopped(KeyboardInterrupt):
    """A run stopped on request (Ctrl-C, SIGTERM) between two steps, its state saved to continue with resume."""

    def __init__(self, step: int, steps: int, state: Path) -> None:
        super().__init__(f"stopped at step {step}/{steps}; the training state is in {state}")
        self.step, self.steps, self.state = step, steps, state


@dataclass
class Learner:
    """What the optimiser updates: the upsampler, the forward that DDP wraps, the optimiser and its schedule."""

    model: Upsampler
    objective: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


@dataclass
class Sources:
    """Where the training samples and the validation samples (by index) come from."""

    samples: Dataset
    val_sample: Callable[[int], validation.Sample]


@dataclass
class _Clock:
    """Training seconds: ``before`` (earlier sessions of the run) plus this session's; ``last`` starts the
    current throughput window."""

    before: float
    start: float = field(default_factory=time.monotonic)
    last: float = 0.0

    def __post_init__(self) -> None:
        self.last = self.start

    def total(self, now: float | None = None) -> float:
        return self.before + (time.monotonic() if now is None else now) - self.start


@dataclass
class TrainingRun:
    """One call of :func:`wrcli.train.train` once set up: :meth:`run` trains from ``step`` to the end."""

    opts: TrainOptions
    out: Path
    state_path: Path
    log_path: Path
    rank: Rank
    device: torch.device
    backbone: Backbone
    identity: dict[str, Any]
    images: data.ImageSplit
    sources: Sources
    learner: Learner
    fingerprint: dict[str, Any]
    precision: str = "fp32"  # resolved --precision: the backbone's targets and the upsampler's forward under autocast
    step: int = 0
    seconds_before: float = 0.0
    losses: dict[str, float] = field(default_factory=dict, init=False)  # the means of the last log window
    _window: list[Tensor] = field(default_factory=list, init=False)  # per-step loss terms since the last log line
    _updating: bool = field(default=False, init=False)  # inside an optimiser update: the state is not consistent
    final_batchnorm: dict[str, Any] | None = field(default=None, init=False)  # how the final BatchNorm statistics were made
    final_skip_fit: dict[str, Any] | None = field(default=None, init=False)  # how the skip map was fitted at the end

    @property
    def main(self) -> bool:
        return self.rank.is_main

    # -- state --------------------------------------------------------------------------------------
    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a saved training state (see :mod:`wrcli.training.state`)."""
        self.learner.model.load_state_dict(state["model"])
        self.learner.optimizer.load_state_dict(state["optimizer"])
        self.learner.scheduler.load_state_dict(state["scheduler"])
        self.step, self.seconds_before = int(state["step"]), float(state["seconds"])
        set_rng_states(state["rng"])

    def _save_state(self, seconds: float) -> None:
        if self.main:
            learner = self.learner
            save_state(self.state_path, {
                "model": learner.model.state_dict(), "optimizer": learner.optimizer.state_dict(),
                "scheduler": learner.scheduler.state_dict(), "step": self.step, "seconds": seconds,
                "options": self.opts.as_dict(), "fingerprint": self.fingerprint, "rng": rng_states(),
            })

    # -- the loop -------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train to the end (or to ``stop_after``), then validate and write the model. Raises
        :class:`TrainingStopped` when asked to stop; saves the state on any other error between updates."""
        opts, start = self.opts, self.step
        end = opts.steps if opts.stop_after is None else min(opts.steps, max(opts.stop_after, start))
        sampler = data.StepSampler(len(self.images.train), opts.batch_size, opts.seed, start, end,
                                   self.rank.rank, self.rank.world)
        loader = DataLoader(self.sources.samples, batch_sampler=sampler, num_workers=opts.workers,
                            worker_init_fn=ignore_stop_signals)
        if self.main:
            start_log(self.log_path, start, finished=start >= opts.steps)
        bar = Progress(end - start, "train", unit="step", enabled=opts.progress and self.main)
        clock = _Clock(self.seconds_before)
        try:
            stopped = self._loop(loader, end, bar, clock)
        except BaseException:
            if not self._updating:  # the state is consistent between updates: keep it
                self._save_state(clock.total())
                if self.main and opts.progress:
                    log.warning("stopped at step %d/%d; state saved to %s", self.step, opts.steps, self.state_path)
            raise
        finally:
            bar.close()
        return self._finish(start, time.monotonic() - clock.start, stopped)

    def _loop(self, loader: DataLoader, end: int, bar: Progress, clock: _Clock) -> bool:
        """Steps up to ``end``; True when a process was asked to stop first."""
        with StopFlag() as stop:
            batches = iter(loader)
            try:
                while self.step < end:
                    if self._stop_everywhere(stop.requested):
                        return True
                    used_lr, terms = self._update(_next_batch(batches))
                    bar.advance()
                    self._window.append(torch.stack([terms[k].detach() for k in ("loss", *TERMS)]))
                    self._periodic(end, used_lr, clock)
            finally:
                _stop_workers(batches)
        return False

    def _update(self, batch: dict[str, Tensor]) -> tuple[float, dict[str, Tensor]]:
        """One optimiser step on ``batch``: the learning rate it used and the loss terms."""
        learner = self.learner
        terms = self._losses(batch)
        learner.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        used_lr = learner.optimizer.param_groups[0]["lr"]
        self._updating = True
        if self.opts.clip_grad is not None:
            nn.utils.clip_grad_norm_(learner.model.parameters(), self.opts.clip_grad)
        learner.optimizer.step()
        learner.scheduler.step()
        self.step += 1
        self._updating = False
        return used_lr, terms

    def _periodic(self, end: int, used_lr: float, clock: _Clock) -> None:
        """After a step: the log line, validation and the state file when their step has come."""
        opts = self.opts
        if self.step % opts.log_every == 0 or self.step == end:
            now = time.monotonic()
            self.losses = self._report(self._window, used_lr, now - clock.last, clock.total(now))
            self._window, clock.last = [], now
        pause = time.monotonic()
        if opts.val_every and self.step % opts.val_every == 0 and self.step < opts.steps:
            self._validate()
        if self.step % opts.checkpoint_every == 0:
            self._save_state(clock.total())
        clock.last += time.monotonic() - pause  # throughput counts training time only

    def _finish(self, start: int, seconds: float, stopped: bool) -> dict[str, Any]:
        """Save the state; at the last step validate and write the model; the result of :func:`wrcli.train.train`."""
        opts = self.opts
        self._save_state(self.seconds_before + seconds)
        completed = self.step >= opts.steps
        result = None
        if completed:
            self.final_batchnorm = self._reestimate_batchnorm()
            self.final_skip_fit = self._fit_skip_map()
            result = self._validate()
            if self.main:
                save_upsampler(self.learner.model, self.out, backbone=self.backbone,
                               provenance=self._provenance(result, self.seconds_before + seconds))
        if self.rank.world > 1:
            dist.barrier()
        if stopped:
            raise TrainingStopped(self.step, opts.steps, self.state_path)
        done = (self.step - start) * opts.batch_size * self.rank.world
        return {
            "steps": self.step, "completed": completed, "seconds": seconds, "images_per_s": done / max(seconds, 1e-9),
            "losses": self.losses, "validation": result, "out": str(self.out) if completed else None,
            "state": str(self.state_path), "log_file": str(self.log_path), "images": len(self.images.train),
            "skipped": self.images.skipped,
        }

    def _losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        device, backbone = self.device, self.backbone
        lr = batch["lr"].to(device)
        if "lr_feats" in batch:
            feats, crop_feats, down_feats = (batch[k].to(device) for k in ("lr_feats", "crop_feats", "down_feats"))
            crop_feats = crop_feats.flatten(0, 1)
        else:
            with autocast(device, self.precision):
                feats, crop_feats, down_feats = train_targets(backbone, lr, batch["crops"].to(device).flatten(0, 1))
        with autocast(device, self.precision):
            output, augmented = self.learner.objective(feats, backbone.normalize(lr),
                                                       backbone.normalize(batch["aug"].to(device)))
        loss = functools.partial(cosine_mse, normalise=self.opts.mse == "range")
        windows = crop_windows(output, batch["offsets"], backbone.patch_size)
        weights = {"affinity": self.opts.affinity_weight, "contrast": self.opts.contrast_weight}
        structure = {}
        for name, fn in (("affinity", affinity_loss), ("contrast", contrast_loss)):
            with torch.set_grad_enabled(torch.is_grad_enabled() and weights[name] > 0):  # logged either way
                structure[name] = fn(windows, crop_feats) + fn(output, down_feats)
        terms = {
            "local": loss(windows, crop_feats),
            "down": loss(output, down_feats),  # authors: criterion(backbone feats, output), i.e. min-max by the output
            # Target of the augmentation term: the clean-guided output without gradient. The authors run the
            # upsampler a third time under no_grad for it; the values are identical (same inputs, batch-norm in
            # training mode), but their batch-norm running statistics see that clean batch twice per step.
            "aug": loss(augmented, output.detach()),
            **structure,  # the local windows' and the whole output's pairwise cosines against their targets'
        }
        terms["loss"] = terms["local"] + self.opts.down_weight * terms["down"] + self.opts.aug_weight * terms["aug"]
        for name, weight in weights.items():
            if weight > 0:
                terms["loss"] = terms["loss"] + weight * structure[name]
        return terms

    def _clean_batches(self, count: int, targets: bool) -> Iterator[tuple[Tensor, ...]]:
        """``count`` clean batches of training samples (:func:`wrcli.training.batchnorm.sample_batches`: drawn with
        their own seed, the same on every rank): (lr features, normalised 224 view) and, with ``targets``, (down-term
        targets, crop features (B·K,C,h,w), crop offsets (B,K,2)) too, from the cache or the backbone."""
        opts, device, backbone = self.opts, self.device, self.backbone
        for samples in batchnorm.sample_batches(self.sources.samples, len(self.images.train), count,
                                                opts.batch_size, opts.seed):
            lr = _stack(samples, "lr", device)
            with autocast(device, self.precision), torch.no_grad():
                if "lr_feats" in samples[0]:  # from the cache
                    feats = _stack(samples, "lr_feats", device)
                    if targets:
                        crop_feats = _stack(samples, "crop_feats", device).flatten(0, 1)
                        down = _stack(samples, "down_feats", device)
                elif targets:
                    feats, crop_feats, down = train_targets(backbone, lr, _stack(samples, "crops", device).flatten(0, 1))
                else:
                    feats = backbone(backbone.normalize(lr)).float()
            if targets:
                yield feats, backbone.normalize(lr), down, crop_feats, _stack(samples, "offsets", device)
            else:
                yield feats, backbone.normalize(lr)

    def _reestimate_batchnorm(self) -> dict[str, Any] | None:
        """The model's BatchNorm statistics over ``bn_batches`` clean batches of training samples (the 224 view
        and its features; :func:`wrcli.training.batchnorm.reestimate`); what the provenance records of it."""
        opts = self.opts
        if not opts.bn_batches:
            return None
        with autocast(self.device, self.precision):
            seen = batchnorm.reestimate(self.learner.model, self._clean_batches(opts.bn_batches, targets=False))
        return {"reestimated_over_batches": seen, "batch": opts.batch_size, "inputs": "clean training samples"}

    def _fit_skip_map(self) -> dict[str, Any] | None:
        """With a skip map: set it in closed form over ``fit_batches`` clean batches of training samples, the rest of
        the model as it ends (:func:`wrcli.training.skipfit.fit`); what the provenance records of it."""
        opts = self.opts
        if not (opts.skip_map and opts.fit_batches):
            return None
        with autocast(self.device, self.precision):
            record = skipfit.fit(self.learner.model, self._clean_batches(opts.fit_batches, targets=True),
                                 patch=self.backbone.patch_size, ridge=opts.fit_ridge, down_weight=opts.down_weight)
        if self.main and opts.progress and "objective_after" in record:
            log.info("skip map fitted over %d samples: objective %.4f -> %.4f", record["samples"],
                     record["objective_before"], record["objective_after"])
        return {**record, "batches": opts.fit_batches, "batch": opts.batch_size, "inputs": "clean training samples"}

    def _stop_everywhere(self, requested: bool) -> bool:
        """Whether any process was asked to stop (all must stop at the same step)."""
        if self.rank.world == 1:
            return requested
        flag = torch.tensor([float(requested)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    # -- logging and validation --------------------------------------------------------------------------
    def _log(self, record: dict[str, Any], line: str) -> None:
        if not self.main:
            return
        with self.log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.opts.progress:
            log.info(line)

    def _report(self, window: list[Tensor], used_lr: float, span: float, elapsed: float) -> dict[str, float]:
        means = torch.stack(window).mean(0)
        if self.rank.world > 1:
            dist.all_reduce(means)
            means /= self.rank.world
        values = dict(zip(("loss", *TERMS), means.tolist()))
        rate = len(window) * self.opts.batch_size * self.rank.world / max(span, 1e-9)
        record = {"step": self.step, **values, "lr": used_lr, "images_per_s": rate, "elapsed": elapsed}
        self._log(record, f"step {self.step}/{self.opts.steps}  loss {values['loss']:.4f} (local {values['local']:.4f}, "
                          f"down {values['down']:.4f}, aug {values['aug']:.4f}, affinity {values['affinity']:.4f}, "
                          f"contrast {values['contrast']:.5f})  lr {used_lr:.2e}  {rate:.2f} img/s")
        return values

    def _validate(self) -> dict[str, Any] | None:
        if not self.images.val:
            return None
        model = self.learner.model
        if self.rank.world > 1:
            for buffer in model.buffers():  # every rank evaluates rank 0's batch-norm statistics
                dist.broadcast(buffer, 0)
        result = validation.validate(
            model, self.backbone.normalize, self.sources.val_sample, len(self.images.val), self.device,
            batch=self.opts.batch_size, rank=self.rank.rank, world=self.rank.world,
        )
        self._log({"step": self.step, "validation": result}, f"step {self.step}: {validation.describe(result)}")
        return result

    def _provenance(self, result: dict | None, seconds: float) -> dict[str, Any]:
        import timm

        opts = self.opts
        device = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return {
            "command": command_line(sys.argv[1:]), "recipe": opts.recipe, "options": opts.as_dict(),
            "objective": "self-supervised WRC training: local crops + down + augmentation consistency, cosine + "
                         + ("range-scaled MSE (Cosine_MSE)" if opts.mse == "range" else "plain MSE")
                         + "".join(f" + {w:g} × {name}" for name, w in (("affinity", opts.affinity_weight),
                                                                          ("contrast", opts.contrast_weight)) if w > 0),
            "init": self.fingerprint.get("init"),
            "samples": data.samples_seen(len(self.images.train), opts.batch_size, opts.seed, self.step, self.rank.world,
                                         opts.cache_variants if opts.cache is not None else None),
            "data": {"images": len(self.images.train), "list_sha256": self.fingerprint["data_sha256"],
                     "skipped": self.images.skipped, "validation": self.images.split},
            "backbone": self.identity, "steps": self.step, "seconds": seconds, "device": device,
            "precision": self.precision,
            "processes": self.rank.world, "torch": torch.__version__, "timm": timm.__version__,
            "final_losses": self.losses, "batchnorm": self.final_batchnorm, "skip_fit": self.final_skip_fit,
            "validation": result,
        }


def _stack(samples: list[dict[str, Tensor]], key: str, device: torch.device) -> Tensor:
    """The samples' ``key`` tensors stacked into a batch on ``device``."""
    return torch.stack([s[key] for s in samples]).to(device)


def _next_batch(batches: Iterator[dict[str, Tensor]]) -> dict[str, Tensor]:
    try:
        return next(batches)
    except WrcError as e:  # from a DataLoader worker the message is its traceback, ending in the original one
        raise WrcError(first_line(str(e).rpartition("wrcli.errors.WrcError: ")[2] or e)) from None


def _stop_workers(batches: Iterator[dict[str, Tensor]]) -> None:
    """Shut the loader's worker processes down now, however the loop ended. Torch does it when the iterator is
    freed, but not once an error's traceback holds the iterator in a reference cycle (the garbage collector
    closes the queues first), and its fallback, SIGTERM, is what the workers ignore (a stop is the main
    process's): the process would hang at exit waiting for them."""
    shutdown = getattr(batches, "_shutdown_workers", None)  # torch's multi-process iterator; nothing without workers
    if shutdown is not None:
        shutdown()
