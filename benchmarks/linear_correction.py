"""How much of the ×2 validation numbers a per-pixel linear map of bilinear's channels gives (issue 17).

    x̂ = u + Wᵀ[u; 1],   u = bilinear ×2 of the low-res view's features (align_corners=False),
    W = argmin_W Σ_pixels ‖t − u − Wᵀ[u; 1]‖² + ρ·n·‖W‖²   (ridge towards bilinear; n = training images)

fitted on the training entries of a `wrc train --cache` folder (t: the down term's target, the features of the
low-res view enlarged ×2) and judged on its validation entries as `wrcli.training.validation` judges a model:
cosine and MSE against the `full` and `tiles` targets, and the contrast (mean pairwise cosine of a map's pixels,
lower = more contrast). One (C+1)×C map for all pixels and images: no spatial detail, no guidance image.

    python benchmarks/linear_correction.py --images ../shared/data/photos --val 0.1 \
        --weights ../shared/weights/dinov2_vits14.safetensors --cache CACHE [--ridge 100 1000 10000] [--json out.json]

The cache must hold every entry (`wrc train IMAGES --cache CACHE --cache-variants V` builds them).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import Tensor

from wrcli.defaults import DEFAULT_BACKBONE
from wrcli.files import file_sha256
from wrcli.reports import write_report
from wrcli.session import open_session
from wrcli.training import cache as feature_cache
from wrcli.training import data
from wrcli.training.affinity import mean_pairwise_cosine
from wrcli.training.targets import backbone_identity
from wrcli.training.validation import TARGETS, agreement_sums


def bilinear_x2(features: Tensor) -> Tensor:
    """(C,h,w) → (1,C,2h,2w), as validation's bilinear baseline."""
    return F.interpolate(features[None], scale_factor=2, mode="bilinear", align_corners=False)


def design(up: Tensor) -> Tensor:
    """(1,C,H,W) → (H·W, C+1) float64: each pixel's channels and a 1."""
    pixels = up[0].flatten(1).T.double()
    return torch.cat([pixels, pixels.new_ones(len(pixels), 1)], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="the training image folder (the split is held out of it)")
    parser.add_argument("--val", type=float, default=0.1, help="held-out fraction, as given to wrc train --val")
    parser.add_argument("--weights", help="backbone weights file")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--crops", type=int, default=4)
    parser.add_argument("--cache", required=True, help="a wrc train --cache folder with every entry built")
    parser.add_argument("--cache-variants", type=int, default=8)
    parser.add_argument("--ridge", type=float, nargs="+", default=[1e2, 1e3, 1e4], help="ρ values to fit")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()

    backbone = open_session(None, backbone=args.backbone, weights=args.weights, device="cpu").backbone
    identity = backbone_identity(backbone)
    images = data.list_images(args.images)
    entries = {role: [feature_cache.entry(args.cache, i.path, file_sha256(i.path), role, identity=identity,
                                          size=args.size, crops=args.crops, variants=args.cache_variants)
                      for i in images if data.held_out(i.name, args.val) == (role == "val")]
               for role in ("train", "val")}
    missing = [e.image_path for es in entries.values() for e in es if not feature_cache.ready(e)]
    if missing:
        raise SystemExit(f"{len(missing)} cache entries missing or stale (e.g. {missing[0]}): build them with wrc train --cache")

    gram = torch.zeros(backbone.channels + 1, backbone.channels + 1, dtype=torch.float64)
    cross = torch.zeros(backbone.channels + 1, backbone.channels, dtype=torch.float64)
    for e in entries["train"]:
        sample = feature_cache.read_train_entry(e.path, 0)
        up = bilinear_x2(sample["lr_feats"])
        x = design(up)
        gram += x.T @ x
        cross += x.T @ (sample["down_feats"].flatten(1).T.double() - x[:, :-1])
    held = [feature_cache.read_val_entry(e.path) for e in entries["val"]]

    def judge(predict) -> dict:
        stats = {t: torch.zeros(4, dtype=torch.float64) for t in TARGETS}
        contrast = []
        for _, lr_feats, full, tiles in held:
            out = predict(bilinear_x2(lr_feats))
            for name, target in zip(TARGETS, (full, tiles)):
                stats[name] += agreement_sums(out, target[None])
            contrast.append(mean_pairwise_cosine(out).item())
        return {**{t: {"cos": s[0].item() / s[1].item(), "mse": s[2].item() / s[3].item()} for t, s in stats.items()},
                "contrast": sum(contrast) / len(contrast)}

    rows = {"bilinear": judge(lambda up: up)}
    rows["targets_contrast"] = {name: sum(mean_pairwise_cosine(s[i + 2][None]).item() for s in held) / len(held)
                                for i, name in enumerate(TARGETS)}
    for rho in args.ridge:
        eye = torch.eye(len(gram), dtype=torch.float64)
        w = torch.linalg.solve(gram + rho * len(entries["train"]) * eye, cross)

        def linear(up: Tensor, w: Tensor = w) -> Tensor:
            return up + (design(up) @ w).float().T.reshape(up.shape)

        rows[f"ridge {rho:g}"] = judge(linear)
    print(f"{len(entries['train'])} training entries, {len(held)} held-out; contrast of the targets: "
          + ", ".join(f"{k} {v:.4f}" for k, v in rows["targets_contrast"].items()))
    for name, r in rows.items():
        if name != "targets_contrast":
            print(f"{name:>14}: full cos {r['full']['cos']:.4f} MSE {r['full']['mse']:.4f} | tiles cos "
                  f"{r['tiles']['cos']:.4f} MSE {r['tiles']['mse']:.4f} | contrast {r['contrast']:.4f}")
    if args.json:
        write_report(args.json, rows)


if __name__ == "__main__":
    main()
