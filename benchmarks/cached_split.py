"""What the scripts that refine an existing checkpoint on cached training samples share (`precise_bn.py`,
`fit_skip.py`): their command-line arguments, and the photos' train / held-out split read from the entries of a
`wrc train --cache` folder, all of which must be built."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

import torch

from wrcli.backbones import Backbone
from wrcli.files import file_sha256
from wrcli.session import open_session
from wrcli.training import cache as feature_cache
from wrcli.training import data, validation
from wrcli.training.options import TrainOptions
from wrcli.training.samples import CachedSamples
from wrcli.training.targets import backbone_identity


def add_arguments(parser: argparse.ArgumentParser, batches: int) -> None:
    """The split, cache and backbone arguments, and how many batches (default ``batches``) of which size and seed."""
    parser.add_argument("--images", required=True, help="the training image folder (the split is held out of it)")
    parser.add_argument("--val", type=float, default=0.1, help="held-out fraction, as given to wrc train --val")
    parser.add_argument("--cache", required=True, help="a wrc train --cache folder with train and val entries")
    parser.add_argument("--cache-variants", type=int, default=TrainOptions.cache_variants)
    parser.add_argument("--weights", help="backbone weights file")
    parser.add_argument("--batches", type=int, default=batches)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)


@dataclass
class CachedSplit:
    backbone: Backbone
    device: torch.device
    samples: CachedSamples  # the training samples, items (index, seed) as wrc train draws them
    train: int  # training images
    held: int  # held-out images
    val_sample: Callable[[int], tuple]  # held-out sample by index (wrcli.training.validation.from_cache)

    def validate(self, model: torch.nn.Module) -> dict:
        """``model`` judged as `wrc train` judges it (wrcli.training.validation.validate)."""
        return validation.validate(model, self.backbone.normalize, self.val_sample, self.held, self.device, batch=4)


def open_split(args: argparse.Namespace) -> CachedSplit:
    """The backbone on the CPU and the split's cache entries; SystemExit naming a missing entry."""
    opts = TrainOptions()  # the size and crop count the cache was built with
    session = open_session(None, weights=args.weights, device="cpu")
    identity = backbone_identity(session.backbone)
    images = data.list_images(args.images)

    def entries(role: str, crops: int, variants: int) -> list[feature_cache.Entry]:
        found = [feature_cache.entry(args.cache, i.path, file_sha256(i.path), role, identity=identity,
                                     size=opts.size, crops=crops, variants=variants)
                 for i in images if data.held_out(i.name, args.val) == (role == "val")]
        missing = [e.image_path for e in found if not feature_cache.ready(e)]
        if missing:
            raise SystemExit(f"{len(missing)} {role} entries missing from {args.cache}, e.g. {missing[0]}")
        return found

    held, train = entries("val", 0, 0), entries("train", opts.crops, args.cache_variants)
    return CachedSplit(session.backbone, session.device, CachedSamples([e.path for e in train], args.cache_variants),
                       len(train), len(held), validation.from_cache([e.path for e in held]))
