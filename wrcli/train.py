"""``wrc train``: self-supervised training of a WRC upsampler against a frozen backbone (the authors' recipe, by
default with the two changes that trained the shipped checkpoint).

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

AdamW, a linear warm-up then cosine decay, and ``precision`` (:mod:`wrcli.precision`; auto: bf16 autocast on a GPU
or a CPU with bf16 arithmetic, else fp32) for the backbone's targets and the upsampler's forward; the loss, the
optimiser and validation stay float32. Two recipes
(:data:`wrcli.defaults.TRAIN_RECIPES`, options overriding them): ``wrcli`` (the default, the shipped
checkpoint's: lr 1e-3, the bilinear skip, plain MSE) and ``published`` (the authors' config: lr 2e-4, no skip,
range-scaled MSE). Runs resume bit for bit from ``OUT.state.pt``; under torchrun the upsampler is wrapped in
DistributedDataParallel. The parts are in :mod:`wrcli.training` (options, builder, loop, ...).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from wrcli.errors import WrcError
from wrcli.runtime import Rank, current_rank
from wrcli.session import open_session
from wrcli.training.builder import build_run
from wrcli.training.loop import TrainingStopped
from wrcli.training.options import TrainOptions
from wrcli.training.outputs import RunFiles, check_writable, claim
from wrcli.training.validation import TARGETS

__all__ = ["TrainOptions", "TrainingStopped", "summary_line", "train"]


def train(images: str | Sequence[str], out: str, opts: TrainOptions) -> dict[str, Any]:
    """Train a WRC upsampler on IMAGES (folder, list file, glob or paths) and write it to ``out`` (safetensors).

    Returns {"steps", "completed", "seconds", "images_per_s", "losses": {loss, local, down, aug},
    "validation": {"images", "model" | "bilinear": {"full" | "tiles": {cos, mse}}} | None, "out", "state", "log_file",
    "images", "skipped"}. Raises :class:`WrcError` before loading anything when ``out`` (or the log) cannot be
    written, or when an earlier run's files are there and neither ``resume`` nor ``overwrite`` is set. Raises
    :class:`TrainingStopped` (a KeyboardInterrupt) after saving the state when asked to stop (Ctrl-C, SIGTERM). Loss and validation lines go to this package's loggers (INFO) with ``progress``.
    """
    files, rank = RunFiles.of(out, opts.log_file), current_rank()
    check_writable(files)  # before anything loads: not after the last step
    _check_init(opts.init)
    claim(files, resume=opts.resume, overwrite=opts.overwrite, main=rank.is_main)
    torch.manual_seed(opts.seed)
    session = open_session(None, backbone=opts.backbone, weights=opts.backbone_weights, device=opts.device,
                           precision=opts.precision, **(opts.backbone_kwargs or {}))
    with _process_group(rank, session.device):
        return build_run(images, files, opts, rank, session).run()


def _check_init(init: str | None) -> None:
    """A ``--init`` that is neither a registry name nor an existing file is refused before anything loads."""
    from wrcli.models import list_upsamplers

    if init is not None and init not in list_upsamplers() and not Path(init).is_file():
        raise WrcError(f"--init: checkpoint not found: {init} (give a .safetensors file from wrc train, or wrc)")


@contextmanager
def _process_group(rank: Rank, device: torch.device) -> Iterator[None]:
    """The process group of a torchrun or SLURM run for the call's duration, unless the caller made one."""
    owns = rank.world > 1 and not dist.is_initialized()
    if owns:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank.rank, world_size=rank.world, timeout=timedelta(hours=2))
    try:
        yield
    finally:
        if owns:
            dist.destroy_process_group()


def summary_line(result: dict[str, Any]) -> str:
    """What a call of :func:`train` left, in one line: the model file with its steps and validation cosine
    against bilinear's per target, or, when it stopped early, the step and the training state to resume from."""
    if not result["completed"]:
        return f"stopped at step {result['steps']}; the training state is in {result['state']}"
    val = result["validation"]
    scores = "no validation images" if val is None else "validation " + ", ".join(
        f"{t} cos {val['model'][t]['cos']:.4f} vs bilinear {val['bilinear'][t]['cos']:.4f}" for t in TARGETS
    )
    return f"wrote {result['out']} ({result['steps']} steps, {scores})"
