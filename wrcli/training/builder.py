"""Setting up a training run: the images and their split, the upsampler and its optimiser, the fingerprint of
everything that changes the result (checked against a saved state before any long work), the sample sources."""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from wrcli.backbones import Backbone
from wrcli.errors import WrcError
from wrcli.files import file_sha256
from wrcli.models import Upsampler, create_upsampler, load_upsampler
from wrcli.models.wrc import SOLVER_NAMES, WRCUpsampler
from wrcli.runtime import Rank
from wrcli.session import Session

from . import cache as feature_cache
from . import data, skipfit, validation
from .loop import Learner, Sources, TrainingRun
from .options import TrainOptions
from .outputs import RunFiles
from .recipe import lr_factor
from .samples import CachedSamples, LiveSamples
from .state import check_compatible, load_state
from .targets import backbone_identity

log = logging.getLogger(__name__)


class _Objective(nn.Module):
    """One forward for DistributedDataParallel: the upsampler guided by the clean and by the augmented view."""

    def __init__(self, model: Upsampler) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats: Tensor, guide: Tensor, aug_guide: Tensor) -> tuple[Tensor, Tensor]:
        return self.model(feats, guide), self.model(feats, aug_guide)


def build_run(images: str | Sequence[str], files: RunFiles, opts: TrainOptions, rank: Rank, session: Session) -> TrainingRun:
    """The run of ``opts`` on IMAGES into ``files`` with the session's backbone and device, at step 0 or, with
    ``resume``, at the saved state's step. The caller checks and claims ``files`` (:mod:`.outputs`) and seeds
    torch with ``opts.seed`` before loading the backbone."""
    backbone, device = session.backbone, session.device
    patch = backbone.patch_size
    if opts.size % (2 * patch):
        raise WrcError(f"size {opts.size} is not a multiple of 2×patch ({2 * patch}); use e.g. 448 for patch 14")
    files.out.parent.mkdir(parents=True, exist_ok=True)
    identity = backbone_identity(backbone)
    split = data.split_images(images, opts.val, size=opts.size, patch=patch, workers=opts.workers,
                              hash_files=opts.cache is not None, need=opts.batch_size * rank.world)
    torch.manual_seed(opts.seed)
    warmup = min(opts.warmup, opts.steps // 10)
    learner = _learner(opts, backbone, device, rank.world, warmup)
    init = _initialise(learner.model, opts.init, backbone) if opts.init is not None else None
    fingerprint = _fingerprint(opts, identity, rank.world, warmup, split, session.precision, init)
    saved = _saved_state(files.state, fingerprint, rank.is_main) if opts.resume else None
    run = TrainingRun(opts, files.out, files.state, files.log, rank, device, backbone,
                      identity, split, _sources(opts, split, session, identity, rank), learner, fingerprint,
                      precision=session.precision)
    if saved is not None:
        run.restore(saved)
    return run


def _learner(opts: TrainOptions, backbone: Backbone, device: torch.device, world: int, warmup: int) -> Learner:
    model = create_upsampler(SOLVER_NAMES[opts.solver], backbone.channels, backbone.patch_size, skip=opts.skip,
                             skip_map=opts.skip_map)
    model = model.to(device).train()
    objective = _Objective(model)
    objective = DistributedDataParallel(objective) if world > 1 else objective
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, betas=(0.9, 0.999), weight_decay=opts.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(lr_factor, steps=opts.steps, warmup=warmup))
    return Learner(model, objective, optimizer, scheduler)


def _initialise(model: Upsampler, init: str, backbone: Backbone) -> dict[str, Any]:
    """Load the weights (and batch-norm statistics) of checkpoint ``init`` (a file, or a name with a shipped
    checkpoint for this backbone) into the fresh ``model``: a warm start. The checkpoint must be a trained model of
    the same network (its solver may differ: the parameters are the same; a run with a skip map may start from one
    without, whose map starts at zero); returns what the run records of it."""
    with warnings.catch_warnings():  # a name without a checkpoint is refused below, not warned about
        warnings.simplefilter("ignore", UserWarning)
        source = load_upsampler(init, backbone)
    if source.checkpoint is None:
        raise WrcError(f"--init {init}: no trained checkpoint of that name for {backbone.name}; give a checkpoint file")
    if hasattr(model, "skip_map") and isinstance(source, WRCUpsampler) and source.skip:
        source = skipfit.with_skip_map(source)
    theirs, ours = source.config["options"], model.config["options"]
    if type(source) is not type(model) or theirs != ours:
        raise WrcError(f"--init {init}: {source.checkpoint.name} is a {source.name!r} upsampler with options {theirs}, "
                       f"this run trains {model.name!r} with {ours}; train with the checkpoint's settings (e.g. --skip)")
    model.load_state_dict(source.state_dict())
    provenance = source.provenance or {}
    record = {"file": source.checkpoint.name, "sha256": file_sha256(source.checkpoint), "upsampler": source.name,
              "steps": provenance.get("steps"), "samples": provenance.get("samples")}
    log.info("starting from the weights of %s (%s, %s steps)", source.checkpoint, source.name, record["steps"])
    return record


def _fingerprint(opts: TrainOptions, identity: dict, world: int, warmup: int, split: data.ImageSplit,
                 precision: str, init: dict[str, Any] | None) -> dict[str, Any]:
    """Every setting that changes the result, resolved (a recipe counts by the values it gives, not its name;
    ``precision`` as the session resolved it; ``init`` what :func:`_initialise` records of the starting weights)."""
    return {
        "solver": opts.solver, "skip": opts.skip, "mse": opts.mse, "backbone": identity,
        "backbone_kwargs": opts.backbone_kwargs, "size": opts.size, "crops": opts.crops, "batch_size": opts.batch_size,
        "world_size": world, "lr": opts.lr, "weight_decay": opts.weight_decay, "warmup": warmup, "steps": opts.steps,
        "clip_grad": opts.clip_grad, "seed": opts.seed, "down_weight": opts.down_weight,
        "aug_weight": opts.aug_weight, "affinity_weight": opts.affinity_weight,
        "contrast_weight": opts.contrast_weight, "init": init,
        "cached": opts.cache is not None,
        "cache_variants": opts.cache_variants if opts.cache is not None else None,
        "data_sha256": data.list_sha256(split.train), "precision": precision,
        **({"skip_map": True} if opts.skip_map else {}),  # only when set: states saved before the option still match
    }


def _saved_state(path: Path, fingerprint: dict[str, Any], main: bool) -> dict[str, Any] | None:
    """The state to resume from (None when there is none); WrcError when it was made with other settings."""
    if not path.is_file():
        if main:
            log.warning("no training state at %s: starting at step 0", path)
        return None
    state = load_state(path)
    check_compatible(path, state["fingerprint"], fingerprint)
    return state


def _sources(opts: TrainOptions, split: data.ImageSplit, session: Session, identity: dict, rank: Rank) -> Sources:
    """Samples and validation targets from decoding + the backbone, or from the feature cache (built first)."""
    backbone, device = session.backbone, session.device
    if opts.cache is None:
        samples = LiveSamples(split.train, opts.size, backbone.patch_size, opts.crops)
        held = validation.in_memory(split.val, backbone, device, size=opts.size, batch=opts.batch_size,
                                    workers=opts.workers, precision=session.precision)
        return Sources(samples, held.__getitem__)
    train, val = feature_cache.prepare(
        opts.cache, split, backbone, device, identity=identity, size=opts.size, crops=opts.crops,
        variants=opts.cache_variants, workers=opts.workers, progress=opts.progress and rank.is_main, rank=rank,
        precision=session.precision,
    )
    return Sources(CachedSamples([e.path for e in train], opts.cache_variants), validation.from_cache([e.path for e in val]))
