"""Give an existing WRC checkpoint a skip map set in closed form, as `wrc train --skip-map` does at the end of a
run (:mod:`wrcli.training.skipfit`), and validate it before and after as `wrc train` validates. A checkpoint
without a map gets a zero one first (the same outputs). The batches are training samples from a `wrc train
--cache` folder (its train entries: the 224 view, its features, the down-term targets and the crop sets),
drawn as the training step draws them; several ridges are fitted from the same normal equations.

    python benchmarks/fit_skip.py CKPT --images ../shared/data/photos --val 0.1 --cache CACHE \
        --weights ../shared/weights/dinov2_vits14.safetensors [--batches 200] [--ridge 0.3 1 3] \
        [--out NEW.safetensors] [--json out.json]

``--out`` writes the model fitted with the first ``--ridge``.
"""

from __future__ import annotations

import argparse
import time

import torch

from wrcli.models import load_upsampler
from wrcli.models.checkpoint import save_upsampler
from wrcli.reports import write_report
from wrcli.training import batchnorm, skipfit, validation
from wrcli.training.options import TrainOptions

from cached_split import add_arguments, open_split  # benchmarks/: the script's own folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    add_arguments(parser, batches=TrainOptions.fit_batches)
    parser.add_argument("--ridge", type=float, nargs="+", default=[TrainOptions.fit_ridge])
    parser.add_argument("--out", help="write the model fitted with the first ridge here (provenance kept, the fit noted)")
    parser.add_argument("--json", help="write the validations here")
    args = parser.parse_args()

    split = open_split(args)
    backbone = split.backbone
    model = skipfit.with_skip_map(load_upsampler(args.checkpoint, backbone))
    report: dict = {"checkpoint": args.checkpoint, "batches": args.batches, "batch": args.batch}
    report["before"] = split.validate(model)
    print("before:", validation.describe(report["before"]))

    def batches():
        for drawn in batchnorm.sample_batches(split.samples, split.train, args.batches, args.batch, args.seed):
            feats, lr, down, crops, offsets = (torch.stack([s[k] for s in drawn])
                                               for k in ("lr_feats", "lr", "down_feats", "crop_feats", "offsets"))
            yield feats, backbone.normalize(lr), down, crops.flatten(0, 1), offsets

    start = time.monotonic()
    normal = skipfit.normal_equations(model, batches(), patch=backbone.patch_size,
                                      down_weight=TrainOptions.down_weight)
    report["seconds"] = time.monotonic() - start
    print(f"normal equations over {normal.samples} samples ({report['seconds']:.0f} s)")
    start_theta, fitted = skipfit.theta_of(model), {}
    for ridge in args.ridge:
        theta = skipfit.solve(normal, ridge)
        skipfit.set_theta(model, theta)
        record = skipfit.summary(normal, ridge, TrainOptions.down_weight, (start_theta, theta))
        fitted[ridge] = (theta, {**record, "validation": split.validate(model)})
        print(f"ridge {ridge:g} (objective {record['objective_after']:.4f}, before {record['objective_before']:.4f}):",
              validation.describe(fitted[ridge][1]["validation"]))
    report["fitted"] = {f"{r:g}": record for r, (_, record) in fitted.items()}
    if args.out:
        theta, record = fitted[args.ridge[0]]
        skipfit.set_theta(model, theta)
        provenance = dict(model.provenance or {})
        provenance["skip_fit"] = {**{k: v for k, v in record.items() if k != "validation"}, "batches": args.batches,
                                  "batch": args.batch, "seed": args.seed, "inputs": "clean training samples (cache)",
                                  "from": args.checkpoint}
        save_upsampler(model, args.out, provenance=provenance)
    if args.json:
        write_report(args.json, report)


if __name__ == "__main__":
    main()
