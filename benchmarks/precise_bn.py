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

from wrcli.models import load_upsampler
from wrcli.models.checkpoint import save_upsampler
from wrcli.reports import write_report
from wrcli.training import batchnorm, validation

from cached_split import add_arguments, open_split  # benchmarks/: the script's own folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    add_arguments(parser, batches=200)
    parser.add_argument("--out", help="write the re-estimated checkpoint here (provenance kept, the step noted)")
    parser.add_argument("--json", help="write both validations here")
    args = parser.parse_args()

    split = open_split(args)
    backbone = split.backbone
    model = load_upsampler(args.checkpoint, backbone)
    before = split.validate(model)
    print("before:", validation.describe(before))

    batches = [(torch.stack([s["lr_feats"] for s in drawn]), backbone.normalize(torch.stack([s["lr"] for s in drawn])))
               for drawn in batchnorm.sample_batches(split.samples, split.train, args.batches, args.batch, args.seed)]
    start = time.monotonic()
    batchnorm.reestimate(model, batches)
    seconds = time.monotonic() - start
    after = split.validate(model)
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
