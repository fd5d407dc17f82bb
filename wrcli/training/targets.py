"""What the frozen backbone contributes: the low-res features and the targets of every loss term."""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from wrcli.backbones import Backbone

from . import recipe


@torch.no_grad()
def train_targets(backbone: Backbone, lr: Tensor, crops: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """uint8 low-res views (B,3,h,w) and crops (N,3,h,w) on the backbone's device → float32
    (lr features (B,C,h/p,w/p), crop features (N,C,h/p,w/p), down-term targets (B,C,2h/p,2w/p)); the backbone
    runs under the caller's autocast (the run's ``--precision``, :func:`wrcli.precision.autocast`)."""
    batch = lr.shape[0]
    views = backbone.normalize(torch.cat([lr, crops]))
    feats = backbone(views)
    down = backbone(recipe.down_view(views[:batch]))
    return feats[:batch].float(), feats[batch:].float(), down.float()


@torch.no_grad()
def val_targets(backbone: Backbone, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """uint8 training-size images (B,3,S,S) → (uint8 low-res views, their features, and two 2× targets:
    the features of the images themselves, and the tiled features of their four S/2 quadrants, each seen
    by the backbone at the low-res view's size like the recipe's local crops), under the caller's autocast."""
    lr = recipe.half_view(images)
    lr_feats = backbone(backbone.normalize(lr))
    hr_feats = backbone(backbone.normalize(images))
    tile_feats = recipe.untile(backbone(backbone.normalize(recipe.tile(images))), images.shape[0])
    return lr, lr_feats.float(), hr_feats.float(), tile_feats.float()


def backbone_identity(backbone: Backbone) -> dict:
    """The backbone's config with ``weights_sha256`` always set: the weights file's hash, or else a hash of
    its state dict (random-init or hub weights), so features from other weights never pass for these."""
    config = backbone.config()
    if not config.get("weights_sha256"):
        digest = hashlib.sha256()
        for name, tensor in backbone.state_dict().items():
            digest.update(name.encode() + str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        config["weights_sha256"] = "state:" + digest.hexdigest()
    return config
