"""Precise BatchNorm statistics for a trained model (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021).

During training each BatchNorm keeps an exponential average (momentum 0.1) of its batch statistics: with batches
of 4 images it reflects the last few dozen images only, and in wrcli's recipe half of the forward passes are
guided by the photometrically augmented image. At the end of a run the averages are replaced by equal-weight
statistics over clean batches, the inputs the model sees at inference.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from . import recipe


def reestimate(model: nn.Module, batches: Iterable[tuple[Tensor, ...]]) -> int:
    """Set every BatchNorm's running mean and variance of ``model`` to the plain average over ``batches`` of its
    batch mean and (unbiased) batch variance, the statistics training mode computes:

        μ = (1/N) Σ_n mean_n,   σ² = (1/N) Σ_n var_n,   each batch n = ``model(*batch)`` in training mode.

    Nothing else changes (no gradient, no parameter update; momentum and the train/eval mode are restored).
    Returns N; with N = 0, no BatchNorm, or an exception from a batch the statistics are left as they were."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    was_training, finished = model.training, False
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # PyTorch's cumulative average: equal weights for every batch
    model.train()
    count = 0
    try:
        with torch.no_grad():
            for args in batches:
                model(*args)
                count += 1
        finished = True
    finally:
        for m, (momentum, mean, var, tracked) in zip(norms, saved):
            m.momentum = momentum
            if not finished or count == 0:  # interrupted, or no batch came: keep the old statistics
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(tracked)
        model.train(was_training)
    return count


def sample_batches(samples: Dataset, count: int, batches: int, batch: int, seed: int) -> Iterator[list[dict[str, Any]]]:
    """``batches`` lists of ``batch`` training samples, items (index, seed) of ``samples`` with indices drawn
    uniformly with replacement from [0, ``count``): the clean inputs :func:`reestimate` averages over (a sample's
    ``lr`` view and, from a cache, its ``lr_feats``). A pure function of ``seed``."""
    generator = torch.Generator().manual_seed(recipe.mix_seed(seed, "batchnorm"))
    for n in range(batches):
        picks = torch.randint(count, (batch,), generator=generator).tolist()
        yield [samples[(i, recipe.mix_seed(seed, "batchnorm", n, k))] for k, i in enumerate(picks)]
