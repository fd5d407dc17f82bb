"""Validation numbers of an upsampler checkpoint on held-out images, against bilinear — what `wrc train`
reports at its end, for any checkpoint file (e.g. the float16 copy that ships in wrcli/checkpoints/).

    python benchmarks/validate_checkpoint.py CKPT --images ../shared/data/photos --val 0.1 \
        --weights ../shared/weights/dinov2_vits14.safetensors [--cache DIR] [--json out.json]

The held-out split, the targets (full-size and tiled-quadrant features) and the metrics (cosine, MSE, and per image
the contrast: the mean pairwise cosine of the output's pixels against the targets') are those of
`wrcli.training.validation`; with ``--cache`` the validation entries of a training cache are reused.
"""

from __future__ import annotations

import argparse
import time

import torch

from wrcli.defaults import DEFAULT_BACKBONE
from wrcli.files import file_sha256
from wrcli.models import load_upsampler
from wrcli.reports import write_report
from wrcli.session import open_session
from wrcli.training import cache as feature_cache
from wrcli.training import data, validation
from wrcli.training.targets import backbone_identity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--images", required=True, help="the training image folder (the split is held out of it)")
    parser.add_argument("--val", type=float, default=0.1, help="held-out fraction, as given to wrc train --val")
    parser.add_argument("--weights", help="backbone weights file")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--cache", help="a wrc train --cache folder: reuse its validation entries")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()

    torch.manual_seed(0)
    session = open_session(None, backbone=args.backbone, weights=args.weights, device="cpu")
    backbone, device = session.backbone, session.device
    model = load_upsampler(args.checkpoint, backbone)
    held = [i for i in data.list_images(args.images) if data.held_out(i.name, args.val)]
    start = time.monotonic()
    if args.cache:
        identity = backbone_identity(backbone)
        entries = [feature_cache.entry(args.cache, image.path, file_sha256(image.path), "val", identity=identity,
                                       size=args.size, crops=0, variants=0) for image in held]
        feature_cache.build([e for e in entries if not feature_cache.is_valid(e)], backbone, device,
                            size=args.size, crops=0, variants=0, workers=0, progress=True)
        sample = validation.from_cache([e.path for e in entries])
    else:
        samples = validation.in_memory(held, backbone, device, size=args.size, batch=4, workers=0)
        sample = samples.__getitem__
    result = validation.validate(model, backbone.normalize, sample, len(held), device, batch=4)
    result["seconds"] = time.monotonic() - start
    result["checkpoint"] = args.checkpoint
    print(validation.describe(result))
    per_image = result["contrast"]["per_image"]
    gaps = [m - t for m, t in zip(per_image["model"], per_image["full"])]
    worst = max(range(len(gaps)), key=lambda i: abs(gaps[i]))
    print(f"contrast gap (model − full target) per image: mean {sum(gaps) / len(gaps):+.4f}, worst {gaps[worst]:+.4f} "
          f"({held[worst].name}), within ±0.02 on {sum(abs(g) <= 0.02 for g in gaps)} of {len(gaps)} images")
    result["images_held_out"] = [i.name for i in held]
    if args.json:
        write_report(args.json, result)


if __name__ == "__main__":
    main()
