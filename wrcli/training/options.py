"""The settings of one ``wrc train`` run, with the recipe presets resolved and every value checked."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from wrcli.defaults import (
    DEFAULT_BACKBONE,
    DEFAULT_TRAIN_RECIPE,
    TRAIN_MSE,
    TRAIN_RECIPES,
)
from wrcli.errors import WrcError
from wrcli.models.wrc import SOLVER_NAMES


@dataclass(frozen=True)
class TrainOptions:
    """What to train and how. ``lr``, ``skip``, ``mse``, ``affinity_weight`` and ``contrast_weight`` left at None take the values of ``recipe``
    (:data:`wrcli.defaults.TRAIN_RECIPES`): ``wrcli``, the recipe of the shipped checkpoint, or
    ``published``, the authors'; given values override the recipe. They are resolved on construction, so
    ``TrainOptions().skip`` is True; ``dataclasses.replace(opts, recipe=...)`` keeps the resolved values (build
    new options to change the recipe). Invalid values raise :class:`WrcError` on construction."""

    recipe: str = DEFAULT_TRAIN_RECIPE  # preset of lr, skip and mse: "wrcli" or "published"
    steps: int = 100_000  # optimiser steps in all (the authors' max_steps); the learning-rate schedule spans them
    batch_size: int = 4  # images per step and process (the authors': 4)
    lr: float | None = None  # AdamW peak learning rate (wrcli 1e-3, the authors' README command; published 2e-4, their config)
    weight_decay: float = 1e-5  # AdamW weight decay; betas are (0.9, 0.999)
    warmup: int = 1000  # linear warm-up steps before the cosine decay, at most a tenth of --steps (authors: constant lr)
    clip_grad: float | None = None  # clip the gradient norm to this value; None: no clipping
    solver: str = "official"  # WRC solve: official (upsampler wrc), exact (wrc-exact) or converse (wrc-converse)
    mse: str | None = None  # MSE term of the loss: "raw" (wrcli) or "range" (published: scaled by the target's per-pixel range)
    skip: bool | None = None  # bilinear skip on the published network (wrcli: True; WRCUpsampler skip=True starts as bilinear)
    skip_map: bool = False  # a per-pixel affine channel map on the skip (WRCUpsampler skip_map=True; needs skip)
    backbone: str = DEFAULT_BACKBONE  # frozen timm ViT whose features are upsampled
    backbone_weights: str | None = None  # .safetensors (timm layout) for the backbone; None: timm's pretrained weights
    backbone_kwargs: dict[str, Any] | None = None  # extra timm.create_model arguments (e.g. a small ViT for tests)
    size: int = 448  # training image side, a multiple of 2×patch; the low-res view and the local crops are size/2
    crops: int = 4  # local crops per image
    down_weight: float = 1.0  # weight of the down term (the authors' loop: 1; their config names an unused 0.1)
    aug_weight: float = 1.0  # weight of the augmentation-consistency term (likewise)
    affinity_weight: float | None = None  # weight of the affinity term (pairwise cosines of the local and down
    # terms' outputs against their targets', wrcli.training.affinity); None: the recipe's (wrcli 1, published 0)
    contrast_weight: float | None = None  # weight of the contrast term (each output map's mean pairwise cosine
    # against its target's, wrcli.training.affinity); None: the recipe's
    init: str | None = None  # start from this checkpoint's weights with a fresh optimiser and schedule (with resume:
    # only when there is no training state yet)
    device: str = "auto"  # auto, cpu, cuda or cuda:N (under torchrun, auto/cuda take the local rank's GPU)
    precision: str = "auto"  # auto, fp32 or bf16 (wrcli.precision): autocast of the backbone targets and the upsampler
    workers: int = 2  # DataLoader processes that decode and augment images (0: in the main process)
    seed: int = 0  # seeds the upsampler's initialisation, the data order, the crops and the augmentations
    val: float | str | Sequence[str] | None = 0.05  # validation images: a fraction held out of IMAGES (by a hash
    # of each file name), a folder / list file / glob, a list of paths, or None for no validation
    val_every: int = 1000  # validate every this many steps (and at the end); 0: only at the end
    log_every: int = 50  # every this many steps: a JSON line in the log file and a loss line in the log
    log_file: str | None = None  # JSON-lines log; default OUT + ".log.jsonl"
    checkpoint_every: int = 1000  # save the training state OUT + ".state.pt" every this many steps (and at exit)
    resume: bool = False  # continue from OUT + ".state.pt" (bit for bit); a fresh start when there is none
    overwrite: bool = False  # without resume: delete an earlier run's model, state and log and start over (else refused)
    stop_after: int | None = None  # stop at this step (saving the training state) to continue later with resume
    cache: str | None = None  # folder of precomputed backbone outputs (built on first use): no backbone in the loop
    cache_variants: int = 8  # random crop sets cached per image (each: `crops` local crops and their features)
    bn_batches: int = 200  # at the end: BatchNorm statistics re-estimated over this many clean batches (0: keep the
    # running averages of training; wrcli.training.batchnorm)
    fit_batches: int = 200  # at the end, with skip_map: the map set in closed form over this many clean batches (0: keep
    # the learned map; wrcli.training.skipfit), after the BatchNorm statistics
    fit_ridge: float = 1.0  # ridge of that fit per sample, towards the plain bilinear skip
    progress: bool = True  # progress bar (periodic lines when stderr is not a terminal) and loss lines (logger INFO)

    def __post_init__(self) -> None:
        preset = TRAIN_RECIPES.get(self.recipe)
        if preset is None:
            raise WrcError(f"unknown recipe {self.recipe!r}; use one of {', '.join(TRAIN_RECIPES)}")
        for name, value in preset.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        _check(self)

    def as_dict(self) -> dict[str, Any]:
        """The options as plain JSON values (what the state file and the checkpoint's provenance record)."""
        return json.loads(json.dumps(asdict(self)))


def _check(opts: TrainOptions) -> None:
    positive = ("steps", "batch_size", "crops", "cache_variants", "log_every", "checkpoint_every")
    bad = [f"{k}={getattr(opts, k)}" for k in positive if getattr(opts, k) < 1]
    non_negative = ("warmup", "val_every", "workers", "bn_batches", "fit_batches")
    bad += [f"{k}={getattr(opts, k)}" for k in non_negative if getattr(opts, k) < 0]
    if opts.lr <= 0 or min(opts.weight_decay, opts.down_weight, opts.aug_weight, opts.affinity_weight,
                                opts.contrast_weight) < 0:
        bad.append("lr > 0 and non-negative weight_decay, down_weight, aug_weight, affinity_weight, contrast_weight are needed")
    if opts.fit_ridge < 0:
        bad.append(f"fit_ridge={opts.fit_ridge}")
    if opts.skip_map and not opts.skip:
        bad.append("skip_map needs skip (--skip-map with --skip)")
    if opts.stop_after is not None and opts.stop_after < 1:
        bad.append(f"stop_after={opts.stop_after}")
    if bad:
        raise WrcError(f"invalid training options: {', '.join(bad)}")
    if opts.mse not in TRAIN_MSE:
        raise WrcError(f"unknown --mse {opts.mse!r}; use {' or '.join(TRAIN_MSE)}")
    if opts.solver not in SOLVER_NAMES:
        raise WrcError(f"unknown solver {opts.solver!r}; use one of {', '.join(SOLVER_NAMES)}")
