"""Re-estimate an existing checkpoint's BatchNorm statistics on clean training inputs, as `wrc train` now does
at the end of every run (`--bn-batches`, :mod:`wrcli.training.batchnorm`), and validate it before and after as
`wrc train` validates: for checkpoints trained before that step existed. The batches are training samples from
a `wrc train --cache` folder (its train entries: the 224 view and its features).

    python benchmarks/precise_bn.py CKPT --images ../shared/data/photos --val 0.1 --cache CACHE \
        --weights ../shared/weights/dinov2_vits14.safetensors [--batches 200] [--out NEW.safetensors] [--json out.json]
"""

from __future__ import annotations

import argparse
import time

import torch

from wrcli.files import file_sha256
from wrcli.models import load_upsampler
from wrcli.models.checkpoint import save_upsampler
from wrcli.reports import write_report
from wrcli.session import open_session
from wrcli.training import cache as feature_cache
from wrcli.training import batchnorm, data, validation
from wrcli.training.options import TrainOptions
from wrcli.training.samples import CachedSamples
from wrcli.training.targets import backbone_identity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--images", required=True, help="the training image folder (the split is held out of it)")
    parser.add_argument("--val", type=float, default=0.1, help="held-out fraction, as given to wrc train --val")
    parser.add_argument("--cache", required=True, help="a wrc train --cache folder with train and val entries")
    parser.add_argument("--cache-variants", type=int, default=TrainOptions.cache_variants)
    parser.add_argument("--weights", help="backbone weights file")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the re-estimated checkpoint here (provenance kept, the step noted)")
    parser.add_argument("--json", help="write both validations here")
    args = parser.parse_args()

    opts = TrainOptions()  # the size and crop count the cache was built with
    session = open_session(None, weights=args.weights, device="cpu")
    backbone, device = session.backbone, session.device
    identity = backbone_identity(backbone)
    images = data.list_images(args.images)
    held = [i for i in images if data.held_out(i.name, args.val)]
    train = [i for i in images if not data.held_out(i.name, args.val)]

    def entries(group, role, crops, variants):
        found = [feature_cache.entry(args.cache, i.path, file_sha256(i.path), role, identity=identity,
                                     size=opts.size, crops=crops, variants=variants) for i in group]
        missing = [e.image_path for e in found if not feature_cache.ready(e)]
        if missing:
            raise SystemExit(f"{len(missing)} {role} entries missing from {args.cache}, e.g. {missing[0]}")
        return found

    val_sample = validation.from_cache([e.path for e in entries(held, "val", 0, 0)])
    train_entries = entries(train, "train", opts.crops, args.cache_variants)
    model = load_upsampler(args.checkpoint, backbone)
    before = validation.validate(model, backbone.normalize, val_sample, len(held), device, batch=4)
    print("before:", validation.describe(before))

    samples = CachedSamples([e.path for e in train_entries], args.cache_variants)
    batches = [(torch.stack([s["lr_feats"] for s in drawn]), backbone.normalize(torch.stack([s["lr"] for s in drawn])))
               for drawn in batchnorm.sample_batches(samples, len(train_entries), args.batches, args.batch, args.seed)]
    start = time.monotonic()
    batchnorm.reestimate(model, batches)
    seconds = time.monotonic() - start
    after = validation.validate(model, backbone.normalize, val_sample, len(held), device, batch=4)
    print(f"after re-estimating on {args.batches} batches of {args.batch} ({seconds:.0f} s):", validation.describe(after))
    if args.out:
        provenance = dict(model.provenance or {})
        provenance["batchnorm"] = {"reestimated_over_batches": args.batches, "batch": args.batch,
                                   "inputs": "clean training samples", "seed": args.seed, "from": args.checkpoint}
        save_upsampler(model, args.out, provenance=provenance)
    if args.json:
        write_report(args.json, {"checkpoint": args.checkpoint, "batches": args.batches, "batch": args.batch,
                                 "before": before, "after": after, "seconds": seconds})


if __name__ == "__main__":
    main()
