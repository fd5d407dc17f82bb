"""Pack what `benchmarks/gpu_train.sh` needs on a lent GPU machine into the 64 MiB that travel with the working tree.

    python benchmarks/gpu_pack.py pack --weights ../shared/weights/dinov2_vits14.safetensors \
        --photos ../shared/data/photos --val 0.1 --out gpu-pack          # here (writes gpu-pack/, git-ignored)
    python benchmarks/gpu_pack.py unpack gpu-pack WEIGHTS.safetensors     # there (gpu_train.sh does it)

The working tree itself (tracked files, ~17 MiB with the two shipped checkpoints) and the pack share the budget.
- Backbone weights: cast to bfloat16 (what bf16 autocast multiplies with on the GPU anyway; LayerNorm and biases
  lose their low bits too), the safetensors data's low and high bytes stored apart and the whole xz-compressed:
  42 MiB of bf16 become ~29 MiB. ``unpack`` rebuilds the bf16 safetensors file bit for bit (its sha256 is in the
  manifest); ``load_backbone`` casts it to the model's float32.
- Photos: the training split only (not ``held_out(name, val)``, so the held-out photos never travel), each as the
  exact size×size image that ``wrc train`` decodes from it (short side resized, centre crop), JPEG-encoded at the
  highest of ``--quality`` that fits the budget (for the 418 photos: 85, 15.3 MiB, mean absolute pixel error
  ~1.3/255 against the decoded original; 90 would take 19.0 MiB). The manifest records the quality, the sources' and the packed files' sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save

from wrcli.files import file_sha256
from wrcli.training.data import ImageRef, decode, held_out, list_images

MIB = 2**20
WEIGHTS_FILE = "backbone.bf16.xz"
MANIFEST = "manifest.json"


def shuffled(blob: bytes) -> bytes:
    """A bf16 safetensors file as 8-byte header length + header + the data's low bytes + its high bytes."""
    n = int.from_bytes(blob[:8], "little")
    data = np.frombuffer(blob, dtype=np.uint8, offset=8 + n)
    if data.size % 2:
        raise ValueError("the data section of a bf16 safetensors file has an even length")
    return blob[: 8 + n] + data[0::2].tobytes() + data[1::2].tobytes()


def unshuffled(blob: bytes) -> bytes:
    """The inverse of :func:`shuffled`."""
    n = int.from_bytes(blob[:8], "little")
    halves = np.frombuffer(blob, dtype=np.uint8, offset=8 + n).reshape(2, -1)
    data = np.empty(halves.size, dtype=np.uint8)
    data[0::2], data[1::2] = halves
    return blob[: 8 + n] + data.tobytes()


def bf16_file(weights: Path) -> bytes:
    """The weights as a safetensors file of bfloat16 tensors (bytes)."""
    return save({k: v.to(torch.bfloat16).contiguous() for k, v in load_file(weights).items()})


def training_images(photos: str, val: float) -> list[ImageRef]:
    """The images ``wrc train PHOTOS --val VAL`` trains on (its own listing and split)."""
    return [image for image in list_images(photos) if not held_out(image.name, val)]


def encoded(image: ImageRef, size: int, patch: int, quality: int) -> bytes:
    """The size×size training image of ``image`` as a JPEG of ``quality``."""
    pixels = decode(image, size, patch).permute(1, 2, 0).numpy()
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def tree_bytes(repo: Path) -> int:
    """Bytes of the files git tracks in ``repo`` (what travels besides the pack)."""
    names = subprocess.run(["git", "-C", str(repo), "ls-files", "-z"], check=True, capture_output=True).stdout
    return sum((repo / n).stat().st_size for n in names.decode().split("\0") if n and (repo / n).is_file())


def pack(args: argparse.Namespace) -> dict:
    """Build the pack in memory, then write it to ``args.out`` (an absent or empty folder) only if it fits."""
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"gpu_pack: {out} is not empty; remove it first")
    weights = bf16_file(Path(args.weights))
    packed_weights = lzma.compress(shuffled(weights), preset=9)
    images = training_images(args.photos, args.val)
    if not images:
        raise SystemExit(f"gpu_pack: no training images in {args.photos}")
    tree = tree_bytes(Path(args.repo))
    room = args.budget * MIB - tree - len(packed_weights) - args.margin * MIB
    for quality in sorted(args.quality, reverse=True):
        files = {str(Path(i.name).with_suffix(".jpg")): encoded(i, args.size, args.patch, quality) for i in images}
        total = sum(map(len, files.values()))
        if total <= room:
            break
        print(f"gpu_pack: JPEG quality {quality}: {total / MIB:.1f} MiB of photos, {room / MIB:.1f} MiB left; lower",
              file=sys.stderr)
    else:
        raise SystemExit(f"gpu_pack: the photos do not fit in {room / MIB:.1f} MiB at any of qualities {args.quality}")
    if len(files) != len(images):
        raise SystemExit("gpu_pack: two photos share a name once re-encoded as .jpg")
    (out / "photos").mkdir(parents=True, exist_ok=True)
    (out / WEIGHTS_FILE).write_bytes(packed_weights)
    for name, blob in files.items():
        (out / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
        (out / "photos" / name).write_bytes(blob)
    manifest = {
        "weights": {"source": str(args.weights), "source_sha256": file_sha256(args.weights),
                    "bf16_sha256": hashlib.sha256(weights).hexdigest(), "bf16_bytes": len(weights),
                    "packed_bytes": len(packed_weights)},
        "photos": {"source": str(args.photos), "val": args.val, "size": args.size, "patch": args.patch,
                   "quality": quality, "count": len(files), "bytes": total,
                   "files": {n: {"from": i.name, "source_sha256": file_sha256(i.path), "sha256": hashlib.sha256(files[n]).hexdigest()}
                             for n, i in zip(files, images)}},
        "tree_bytes": tree,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def unpack(args: argparse.Namespace) -> None:
    pack_dir = Path(args.pack)
    manifest = json.loads((pack_dir / MANIFEST).read_text())
    weights = unshuffled(lzma.decompress((pack_dir / WEIGHTS_FILE).read_bytes()))
    if hashlib.sha256(weights).hexdigest() != manifest["weights"]["bf16_sha256"]:
        raise SystemExit("gpu_pack: the unpacked weights do not match the manifest's sha256")
    Path(args.weights).write_bytes(weights)
    photos = manifest["photos"]
    print(f"unpacked {args.weights} (bf16, {len(weights) / MIB:.1f} MiB); {photos['count']} photos at {photos['size']}², "
          f"JPEG quality {photos['quality']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("pack", help="build the pack here")
    p.add_argument("--weights", required=True, help="the backbone's float32 safetensors (timm layout)")
    p.add_argument("--photos", required=True, help="the training image folder, as given to wrc train")
    p.add_argument("--val", type=float, default=0.1, help="the held-out fraction, as given to wrc train --val")
    p.add_argument("--size", type=int, default=448, help="wrc train --size")
    p.add_argument("--patch", type=int, default=14, help="the backbone's patch size")
    p.add_argument("--quality", type=int, nargs="+", default=[95, 90, 85, 80], help="JPEG qualities to try, best first")
    p.add_argument("--out", default="gpu-pack", help="the pack's folder (ignored by git; name it in the device call's carry)")
    p.add_argument("--repo", default=".", help="the checkout whose tracked files travel too")
    p.add_argument("--budget", type=int, default=64, help="MiB that may travel in all")
    p.add_argument("--margin", type=int, default=1, help="MiB kept free for files added later")
    u = verbs.add_parser("unpack", help="rebuild the bf16 weights on the GPU machine")
    u.add_argument("pack", help="the pack's folder")
    u.add_argument("weights", help="the bf16 safetensors file to write")
    args = parser.parse_args()
    if args.verb == "pack":
        m = pack(args)
        print(f"packed: weights {m['weights']['packed_bytes'] / MIB:.1f} MiB, {m['photos']['count']} photos "
              f"{m['photos']['bytes'] / MIB:.1f} MiB (JPEG {m['photos']['quality']}), tree {m['tree_bytes'] / MIB:.1f} MiB")
    else:
        unpack(args)


if __name__ == "__main__":
    main()
