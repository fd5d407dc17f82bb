"""``wrc eval corr``: the keypoint protocol (:mod:`wrcli.eval.keypoints`, SPair-71k or a pairs file) or the
stereo protocol (:mod:`wrcli.eval.stereo`), chosen by ``--dataset``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from wrcli.defaults import DEFAULT_BACKBONE, DEFAULT_UPSAMPLER
from wrcli.errors import WrcError

from . import keypoints, stereo
from .dense import PairTask
from .task import RunOptions, run_task

DATASETS = (*keypoints.DATASETS, "stereo")


def corr_task(dataset: str, path: str, *, imsize: int | None = None, scale: int = 2, split: str = "test",
              pairs_per_category: int = 100, seed: int = 0, stride: int = 1, limit: int | None = None) -> PairTask:
    """The task for ``--dataset``: ``imsize`` defaults to 224 for keypoints, 448 for stereo; ``split``,
    ``pairs_per_category`` and ``seed`` are SPair-71k's, ``stride`` is stereo's."""
    if dataset not in DATASETS:
        raise WrcError(f"--dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    if dataset == "stereo":
        return stereo.StereoTask(path, imsize=imsize or stereo.DEFAULT_IMSIZE, scale=scale, stride=stride, limit=limit)
    return keypoints.KeypointTask(dataset, path, imsize=imsize or keypoints.DEFAULT_IMSIZE, scale=scale, split=split,
                                  pairs_per_category=pairs_per_category, seed=seed, limit=limit)


def run_corr(dataset: str, path: str, *, upsamplers: str | Sequence[str] = f"bilinear,{DEFAULT_UPSAMPLER}",
             backbone: str = DEFAULT_BACKBONE, backbone_weights: str | None = None, device: str = "auto",
             progress: bool = True, precision: str = "auto", command: str | None = None,
             **settings: Any) -> dict[str, Any]:
    """Every upsampler on the same pairs; the report. ``settings`` are :func:`corr_task`'s."""
    task = corr_task(dataset, path, **settings)
    options = RunOptions(upsamplers, backbone, backbone_weights, device, progress, precision)
    return run_task(task, options, command)
