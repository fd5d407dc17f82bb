"""The ``wrc`` command line: parse, call the library, print. Heavy imports (torch, timm) happen inside
commands so that ``wrc --help`` answers at once.

Exit codes: 0 success, 1 failure, 2 usage error, 3 finished but some inputs failed (see ``EXIT_PARTIAL``),
130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Optional

import typer

from wrcli import __version__
from wrcli.allocator import keep_freed_memory
from wrcli.defaults import (
    DEFAULT_BACKBONE, DEFAULT_TRAIN_RECIPE, DEFAULT_UPSAMPLER, STORE_DTYPES, TRAIN_MSE, TRAIN_RECIPES, WRC_SOLVERS,
)
from wrcli.errors import WrcError
from wrcli.eval import choices

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as the shell reports a process it ended

app = typer.Typer(
    name="wrc",
    help="Dense, sharp features from frozen vision foundation models with Weighted Reverse Convolution.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_debug = bool(os.environ.get("WRC_DEBUG"))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wrc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", envvar="WRC_DEBUG", help="Show tracebacks on errors."),
) -> None:
    global _debug
    _debug = debug
    if ctx.invoked_subcommand != "extract":  # extract trims its heap after every batch: kept blocks only raised its peak
        keep_freed_memory()


def _one_of(*choices: str) -> Callable[[Optional[str]], Optional[str]]:
    """An option callback that admits only ``choices`` (None passes: the option was not given): a usage error,
    exit 2, before anything heavy is loaded."""

    def check(value: Optional[str]) -> Optional[str]:
        if value is not None and value not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}")
        return value

    return check


def _device_spec(value: str) -> str:
    """``--device``: auto, cpu, cuda or cuda:N (whether that device exists is checked when it is used)."""
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?", value) is None:
        raise typer.BadParameter(f"{value!r} is not a device; use auto, cpu, cuda or cuda:N")
    return value


eval_app = typer.Typer(
    help="The field's probes, correspondence, video, object-discovery and open-vocabulary benchmarks, several upsamplers side by side.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(eval_app, name="eval")

# options most commands share
BackboneName = Annotated[str, typer.Option(envvar="WRC_BACKBONE", help="timm ViT name (frozen).")]
BackboneWeights = Annotated[Optional[str], typer.Option(envvar="WRC_BACKBONE_WEIGHTS", help="Backbone weights file (.safetensors or .pth) for offline use.")]
Device = Annotated[str, typer.Option(envvar="WRC_DEVICE", callback=_device_spec, help="auto, cpu, cuda or cuda:N.")]
Precision = Annotated[str, typer.Option(envvar="WRC_PRECISION", callback=_one_of("auto", "fp32", "bf16"), help=(
    "Compute precision of the backbone and upsamplers: fp32, bf16 (bfloat16 autocast; the WRC solves stay float32), "
    "or auto: bf16 on a GPU or CPU with bf16 arithmetic (AMX, AVX-512 BF16), else fp32."))]

# options that the `eval` commands share
EvalUpsamplers = Annotated[str, typer.Option(envvar="WRC_UPSAMPLER", help=(
    "Upsamplers to compare on the same data, comma-separated: registry names or checkpoint files "
    "('default': wrc with its shipped checkpoint, else bilinear)."))]
EvalOut = Annotated[Optional[str], typer.Option("--out", "-o", help=(
    "Write the full report (protocol, dataset, versions, per-class or per-category results) as JSON."))]
EvalJson = Annotated[bool, typer.Option("--json", help="Print the report as one JSON line on stdout instead of the table.")]
# options that `eval seg` and `eval depth` share
ProbeScale = Annotated[Optional[int], typer.Option(min=1, help=(
    "Upsample the token grid ×N instead of to the target size (label or depth map; 1 = the raw low-resolution "
    "features)."))]
ProbeSeeds = Annotated[int, typer.Option(min=1, help="Probe runs per upsampler (seeds 0..N-1); several give mean ± std.")]
ProbeEpochs = Annotated[Optional[int], typer.Option(min=1, help="Override the protocol's epochs.")]
ProbeBatch = Annotated[Optional[int], typer.Option(min=1, help="Override the protocol's batch size.")]
ProbeLr = Annotated[Optional[float], typer.Option(min=0.0, help="Override the protocol's learning rate.")]
ProbeSize = Annotated[Optional[int], typer.Option(min=1, help="Override the protocol's image side (a patch multiple), for quick runs.")]
ProbeLimit = Annotated[Optional[int], typer.Option(min=1, help="Only the first N images of each split, for quick runs.")]
ProbeCache = Annotated[Optional[str], typer.Option(help="Folder for the backbone features (reused by later runs with the same data and backbone; default: a temporary folder).")]
ProbeWorkers = Annotated[int, typer.Option(min=0, help="DataLoader decoding processes.")]


def _command() -> str:
    """This invocation as a shell command line (recorded in reports and stores)."""
    from wrcli.reports import command_line

    return command_line(sys.argv[1:])


def _emit(report: dict, out: str | None, json_out: bool, table: Callable[[], Any], width: int = 80) -> None:
    """The end of every measuring command: the report to ``--out`` (JSON, whole), then on stdout either the
    report as one JSON line (``--json``) or ``table()`` (a rich renderable; plain text when not a terminal)."""
    if out:
        from wrcli.reports import write_report

        write_report(out, report)
    if json_out:
        _print_json(report)
        return
    from rich.console import Console

    Console(file=sys.stdout, width=max(80, width)).print(table())


def _eval_output(report: dict, title: str, out: str | None, json_out: bool) -> None:
    """An eval report through :func:`_emit`; the table has the upsamplers as rows, the report's metrics as columns."""
    from wrcli.reports import results_table

    metrics = report["metrics"]
    _emit(report, out, json_out, lambda: results_table(title, report["results"], metrics), 14 * (len(metrics) + 1))


def _run_eval(task: Any, upsampler: str, backbone: str, backbone_weights: str | None, device: str,
              precision: str) -> dict:
    """The report of an eval ``task`` with the options every eval command shares."""
    from wrcli.eval.task import RunOptions, run_task

    return run_task(task, RunOptions(upsampler, backbone, backbone_weights, device, precision=precision), _command())


def _probe_title(report: dict) -> str:
    data, proto = report["dataset"], report["protocol"]
    seeds = len(proto["seeds"])
    return (f"{data['name']}/{data['val']['split']} · {proto['name']} · {proto['feature_size'][0]} px · "
            f"{seeds} seed{'s' if seeds > 1 else ''}")


@eval_app.command("seg")
def eval_seg_cmd(
    root: str = typer.Argument(..., help="Dataset folder: VOC2012, ADEChallengeData2016, Cityscapes, cocostuff (curated lists) or generic (classes.txt, images/{train,val}/, masks/{train,val}/)."),
    dataset: str = typer.Option("auto", callback=_one_of(*choices.SEG_DATASETS), help="voc, ade20k, cityscapes, coco27, generic, or auto (by layout)."),
    protocol: str = typer.Option("jafar", callback=_one_of(*choices.SEG_PROTOCOLS), help="jafar: 448, features upsampled to 448, AdamW 5e-4, 20 epochs, batch 4, flip; featup: 224, labels downsampled to the features, AdamW 1e-4, 10 epochs, batch 8."),
    upsampler: EvalUpsamplers = f"bilinear,{DEFAULT_UPSAMPLER}",
    scale: ProbeScale = None,
    seeds: ProbeSeeds = 1,
    epochs: ProbeEpochs = None,
    batch_size: ProbeBatch = None,
    lr: ProbeLr = None,
    size: ProbeSize = None,
    limit: ProbeLimit = None,
    cache: ProbeCache = None,
    workers: ProbeWorkers = 2,
    out: EvalOut = None,
    backbone: BackboneName = DEFAULT_BACKBONE,
    backbone_weights: BackboneWeights = None,
    device: Device = "auto",
    precision: Precision = "auto",
    json_out: EvalJson = False,
) -> None:
    """Linear-probe semantic segmentation (mIoU, pixel accuracy), every upsampler on the same cached backbone
    features, data and seeds."""
    from wrcli.eval.probes import ProbeOptions
    from wrcli.eval.seg import SegProbe
    from wrcli.eval.task import run_task

    opts = ProbeOptions(upsamplers=upsampler, backbone=backbone, backbone_weights=backbone_weights, device=device,
                        precision=precision, seeds=seeds, limit=limit, cache=cache, workers=workers, epochs=epochs,
                        batch_size=batch_size, lr=lr, size=size, scale=scale)
    report = run_task(SegProbe(root, dataset, protocol, opts), opts, _command())
    _eval_output(report, _probe_title(report), out, json_out)


@eval_app.command("depth")
def eval_depth_cmd(
    root: str = typer.Argument(..., help="NYUv2 folder (nyu_depth_v2_labeled.mat with splits.mat or train.txt/test.txt) or generic (images/{train,val}/, depth/{train,val}/)."),
    dataset: str = typer.Option("auto", callback=_one_of(*choices.DEPTH_DATASETS), help="nyu, generic, or auto (by layout)."),
    protocol: str = typer.Option("probe3d", callback=_one_of(*choices.DEPTH_PROTOCOLS), help="probe3d: 224, AdamW 5e-4, 10 epochs, batch 8, warm-up + cosine per step; jafar: 448, AdamW 5e-4, 20 epochs, batch 4, cosine per epoch."),
    upsampler: EvalUpsamplers = f"bilinear,{DEFAULT_UPSAMPLER}",
    depth_scale: float = typer.Option(1000.0, help="Generic 16-bit PNG depth: units per metre (1000 = millimetres); .npy is read as metres."),
    max_depth: float = typer.Option(10.0, help="Deepest valid depth in metres (the top of the depth bins); deeper pixels are ignored."),
    scale: ProbeScale = None,
    seeds: ProbeSeeds = 1,
    epochs: ProbeEpochs = None,
    batch_size: ProbeBatch = None,
    lr: ProbeLr = None,
    size: ProbeSize = None,
    limit: ProbeLimit = None,
    cache: ProbeCache = None,
    workers: ProbeWorkers = 2,
    out: EvalOut = None,
    backbone: BackboneName = DEFAULT_BACKBONE,
    backbone_weights: BackboneWeights = None,
    device: Device = "auto",
    precision: Precision = "auto",
    json_out: EvalJson = False,
) -> None:
    """Linear depth probe (RMSE, AbsRel, δ1), every upsampler on the same cached backbone features, data and
    seeds."""
    from wrcli.eval.depth import DepthProbe
    from wrcli.eval.probes import ProbeOptions
    from wrcli.eval.task import run_task

    opts = ProbeOptions(upsamplers=upsampler, backbone=backbone, backbone_weights=backbone_weights, device=device,
                        precision=precision, seeds=seeds, limit=limit, cache=cache, workers=workers, epochs=epochs,
                        batch_size=batch_size, lr=lr, size=size, scale=scale)
    report = run_task(DepthProbe(root, dataset, protocol, opts, depth_scale, max_depth), opts, _command())
    _eval_output(report, _probe_title(report), out, json_out)


@eval_app.command("corr")
def eval_corr_cmd(
    path: str = typer.Argument(..., help="SPair-71k root, a pairs file (.jsonl), or a stereo folder (see --dataset)."),
    dataset: str = typer.Option(..., "--dataset", callback=_one_of(*choices.CORR_DATASETS), help="spair (SPair-71k root), pairs (JSON-lines keypoint pairs) or stereo (im0/im1/disp0 folders)."),
    upsampler: EvalUpsamplers = f"bilinear,{DEFAULT_UPSAMPLER}",
    imsize: Optional[int] = typer.Option(None, min=1, help="Image side in pixels, a patch multiple: the letterbox square for keypoints (default 224), the long side for stereo (default 448)."),
    scale: int = typer.Option(2, min=1, help="Upsampling factor of the token grid before the bilinear resize to the image (published protocol: 2; 1 = raw backbone; the patch size = image resolution)."),
    split: str = typer.Option("test", help="SPair-71k split folder under PairAnnotation/."),
    pairs_per_category: int = typer.Option(100, min=0, help="SPair-71k pairs drawn per category (0 = all)."),
    seed: int = typer.Option(0, help="Seed of the per-category draw."),
    stride: int = typer.Option(1, min=1, help="Stereo: evaluate every N-th row and column of the left image."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N pairs."),
    out: EvalOut = None,
    backbone: BackboneName = DEFAULT_BACKBONE,
    backbone_weights: BackboneWeights = None,
    device: Device = "auto",
    precision: Precision = "auto",
    json_out: EvalJson = False,
) -> None:
    """Keypoint correspondence (PCK@0.1/0.05/0.01 on SPair-71k or a pairs file) and dense stereo correspondence
    (PCK at 1/2/4/8 px and EPE), every upsampler on the same backbone features."""
    from wrcli.eval.correspondence import corr_task
    task = corr_task(dataset, path, imsize=imsize, scale=scale, split=split, pairs_per_category=pairs_per_category,
                     seed=seed, stride=stride, limit=limit)
    report = _run_eval(task, upsampler, backbone, backbone_weights, device, precision)
    data, proto = report["dataset"], report["protocol"]
    title = f"{dataset}: {data['pairs']} pairs, {data['points']} points, imsize {proto['imsize']}, scale {proto['scale']}"
    _eval_output(report, title, out, json_out)


@eval_app.command("vos")
def eval_vos_cmd(
    root: str = typer.Argument(..., help="DAVIS root (JPEGImages/480p, Annotations/480p, ImageSets/2017/val.txt) or a folder of <seq>/frames/*.jpg + <seq>/masks/*.png."),
    upsampler: EvalUpsamplers = f"bilinear,{DEFAULT_UPSAMPLER}",
    protocol: str = typer.Option("square", callback=_one_of(*choices.VOS_PROTOCOLS), help="square: frames warped to imsize² (WRC/LiFT); native: the frames' own aspect, sides rounded to the patch size (NAF/RaysUp)."),
    imsize: int = typer.Option(448, min=1, help="Frame side for --protocol square (bicubic), a patch multiple."),
    scale: int = typer.Option(2, min=1, help="Upsampling factor of the token grid the labels propagate on."),
    context: int = typer.Option(7, min=0, help="Preceding frames (with their predicted labels) used besides the first."),
    topk: int = typer.Option(5, min=1, help="Neighbours per query cell, taken jointly over all context frames."),
    radius: int = typer.Option(12, min=0, help="Window half-size in cells of the feature grid (Chebyshev); 0 = no window."),
    temperature: float = typer.Option(0.1, min=1e-6, help="Softmax temperature over the top-k similarities."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N sequences."),
    masks_out: Optional[str] = typer.Option(None, help="Write the predicted masks as DAVIS palette PNGs to DIR/<upsampler>/<seq>/<frame>.png (for the official evaluator)."),
    cache: ProbeCache = None,
    out: EvalOut = None,
    backbone: BackboneName = DEFAULT_BACKBONE,
    backbone_weights: BackboneWeights = None,
    device: Device = "auto",
    precision: Precision = "auto",
    json_out: EvalJson = False,
) -> None:
    """Semi-supervised video object segmentation by label propagation (DAVIS J, F, J&F), every upsampler on the
    same backbone features. Sequences that cannot be scored are listed on stderr and in the report."""
    from wrcli.eval.vos import vos_task

    task = vos_task(root, imsize=imsize, scale=scale, context=context, topk=topk, radius=radius,
                    temperature=temperature, protocol=protocol, limit=limit, masks_out=masks_out, cache=cache)
    report = _run_eval(task, upsampler, backbone, backbone_weights, device, precision)
    for name, reason in report["errors"].items():
        typer.echo(f"wrc: warning: {name} left out: {reason}", err=True)
    data, proto = report["dataset"], report["protocol"]
    size = f"{proto['imsize']}²" if proto["imsize"] else "native size"
    title = f"vos: {data['sequences']} sequences, {data['scored_frames']} scored frames, {size}, scale {proto['scale']}"
    _eval_output(report, title, out, json_out)


@eval_app.command("discovery")
def eval_discovery_cmd(
    root: str = typer.Argument(..., help="Dataset root: VOCdevkit (or VOC2007/VOC2012), the COCO folder holding train2014/ and annotations/, or a boxes.jsonl folder (see --dataset)."),
    dataset: str = typer.Option(..., "--dataset", callback=_one_of(*choices.DISCOVERY_DATASETS), help="voc07 or voc12 (trainval), coco20k, or generic (ROOT/boxes.jsonl)."),
    method: str = typer.Option("tokencut", callback=_one_of(*choices.DISCOVERY_METHODS), help="tokencut (normalised cut) or lost (seed expansion)."),
    upsampler: EvalUpsamplers = f"bilinear,{DEFAULT_UPSAMPLER}",
    imsize: int = typer.Option(448, min=1, help="Images are warped to imsize × imsize (a patch multiple)."),
    scale: int = typer.Option(2, min=1, help="Upsampling factor of the token grid (1 = raw backbone features)."),
    tau: Optional[float] = typer.Option(None, help="TokenCut: cosine threshold of the graph (default 0.2 VOC and generic, 0.3 COCO20k)."),
    k: int = typer.Option(100, "--k", min=1, help="LOST: lowest-degree patches in the seed expansion."),
    filenames: Optional[str] = typer.Option(None, help="COCO20k: the list of its 19,817 train2014 names (default ROOT/coco_20k_filenames.txt)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N listed images."),
    cache: ProbeCache = None,
    out: EvalOut = None,
    backbone: BackboneName = DEFAULT_BACKBONE,
    backbone_weights: BackboneWeights = None,
    device: Device = "auto",
    precision: Precision = "auto",
    json_out: EvalJson = False,
) -> None:
    """Unsupervised object discovery: one box per image from TokenCut or LOST on the upsampled features, scored
    by CorLoc (IoU ≥ 0.5 with any ground-truth box), every upsampler on the same backbone features."""
    from wrcli.eval.discovery import discovery_task
    task = discovery_task(dataset, root, imsize=imsize, scale=scale, method=method, tau=tau, k=k,
                          filenames=filenames, limit=limit, cache=cache)
    report = _run_eval(task, upsampler, backbone, backbone_weights, device, precision)
    data, proto = report["dataset"], report["protocol"]
    title = (f"{dataset} · {method}: {data['images']} images ({data['skipped']} skipped), imsize {proto['imsize']}, "
             f"scale {proto['scale']}")
    _eval_output(report, title, out, json_out)


@eval_app.command("ovseg")
def eval_ovseg_cmd(
    root: str = typer.Argument(..., help="Segmentation dataset root (VOC, ADE20K, Cityscapes, COCO-Stuff-164k or a generic images/labels folder)."),
    dataset: str = typer.Option("auto", "--dataset", callback=_one_of(*choices.OVSEG_DATASETS), help="Layout of ROOT (auto: detected)."),
    method: str = typer.Option("proxyclip", callback=_one_of(*choices.OVSEG_METHODS), help="proxyclip (the backbone's affinity as CLIP's last attention) or maskclip (CLIP's value features; interpolating upsamplers only)."),
    classes: Optional[str] = typer.Option(None, help="voc21, voc20, context59, context60, cocostuff171, cocoobject, ade150, cityscapes, or a class-list file (default: the dataset's)."),
    clip_model: str = typer.Option("ViT-B-16", help="open_clip model name (or its .json config)."),
    clip_weights: Optional[str] = typer.Option(None, envvar="WRC_CLIP_WEIGHTS", help="CLIP weights file (open_clip checkpoint or .safetensors) for offline use (default: OpenAI's through the hub)."),
    upsampler: EvalUpsamplers = f"bilinear,{DEFAULT_UPSAMPLER}",
    scale: int = typer.Option(8, min=1, help="Upsampling factor of the backbone's token grid (1 = ProxyCLIP as published)."),
    imsize: Optional[int] = typer.Option(None, min=1, help="Short side of the resized image (default: the class list's preset, 336 or 448)."),
    crop: Optional[int] = typer.Option(None, min=1, help="Sliding-window side (default: the preset's)."),
    stride: Optional[int] = typer.Option(None, min=1, help="Sliding-window stride (default: the preset's, 112)."),
    prob_thd: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Pixels whose best class probability is below this are background (default: the preset's)."),
    limit: ProbeLimit = None,
    cache: ProbeCache = None,
    out: EvalOut = None,
    backbone: BackboneName = DEFAULT_BACKBONE,
    backbone_weights: BackboneWeights = None,
    device: Device = "auto",
    precision: Precision = "auto",
    json_out: EvalJson = False,
) -> None:
    """Training-free open-vocabulary segmentation (mIoU, aAcc): CLIP names the classes, the upsampled backbone
    features decide the grouping (ProxyCLIP), every upsampler on the same features."""
    from wrcli.eval.ovseg import ovseg_task

    presets = {k: v for k, v in (("crop", crop), ("stride", stride), ("prob_thd", prob_thd)) if v is not None}
    task = ovseg_task(root, dataset=dataset, classes=classes, method=method, clip_model=clip_model,
                      clip_weights=clip_weights, imsize=imsize, scale=scale, limit=limit, cache=cache, **presets)
    report = _run_eval(task, upsampler, backbone, backbone_weights, device, precision)
    data, proto = report["dataset"], report["protocol"]
    title = f"ovseg {method}, {proto['classes']}: {data['evaluated']}/{data['images']} images, scale {proto['scale']}"
    _eval_output(report, title, out, json_out)


@app.command("upsamplers")
def upsamplers_cmd(
    backbone: BackboneName = DEFAULT_BACKBONE,
    json_out: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
) -> None:
    """List the upsamplers that --upsampler accepts (a checkpoint file is accepted too), and which of them have a
    trained checkpoint shipped for the backbone."""
    from timm.models import split_model_name_tag

    from wrcli.checkpoints import shipped_checkpoint
    from wrcli.models import list_upsamplers
    from wrcli.models.registry import registry_entry

    arch = split_model_name_tag(backbone)[0]
    table = {}
    for name, description in list_upsamplers().items():
        shipped = shipped_checkpoint(name, arch)
        table[name] = {"description": description, "learned": registry_entry(name).learned,
                       "checkpoint": shipped.name if shipped else None}
    if json_out:
        _print_json({"backbone": backbone, "upsamplers": table})
        return
    width = max(map(len, table))
    for name, row in table.items():
        status = (f"  [trained: {row['checkpoint']} (shipped)]" if row["checkpoint"] else
                  "  [untrained here: pass a checkpoint file]" if row["learned"] else "")
        typer.echo(f"{name:<{width}}  {row['description']}{status}")
    typer.echo(f"(for {arch}; --upsampler {DEFAULT_UPSAMPLER}, the default: wrc with the checkpoint shipped for the "
               "backbone, else bilinear)")


def _hw(text: str | None, flag: str) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h < 1 or w < 1:
            raise ValueError
    except ValueError:
        raise typer.BadParameter(f"expected HxW with positive integers, e.g. 448x448, got {text!r}", param_hint=flag) from None
    return h, w


def _layers(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"expected block indices separated by commas, e.g. -1 or 5,11, got {text!r}", param_hint="--layers") from None


def _print_json(data: object) -> None:
    import json

    typer.echo(json.dumps(data, ensure_ascii=False, default=str))


@app.command("extract")
def extract_cmd(
    src: str = typer.Argument(..., help="Image folder (recursive), glob, text file with one path per line, - for paths on stdin, WebDataset tar shards ('shards/{00000..00099}.tar', pipe:CMD, a list of shards), or a table (.parquet, .csv, .tsv)."),
    out: str = typer.Argument(..., help="Output store: *.zarr (Zarr v3) or *.h5 / *.hdf5 (HDF5)."),
    backbone: BackboneName = DEFAULT_BACKBONE,
    backbone_weights: BackboneWeights = None,
    upsampler: str = typer.Option(DEFAULT_UPSAMPLER, envvar="WRC_UPSAMPLER", help="Registry name (see `wrc upsamplers`) or checkpoint file; 'default': wrc with the checkpoint shipped for the backbone, else bilinear."),
    scale: int = typer.Option(2, min=1, help="Upsampling factor of the token grid (1 = the backbone's own grid)."),
    out_size: Optional[str] = typer.Option(None, help="Explicit feature size HxW for every image instead of --scale."),
    size: int = typer.Option(448, min=1, help="Resize the short side to this many pixels (rounded to the patch multiple)."),
    crop: bool = typer.Option(False, help="Centre-crop a square after resizing."),
    max_side: Optional[int] = typer.Option(None, min=1, help="Cap on the long side in pixels (default 2 × --size); aspect is kept."),
    layers: Optional[str] = typer.Option(None, help="Backbone blocks to store, e.g. -1 (default) or 5,11."),
    dtype: str = typer.Option("float16", callback=_one_of(*STORE_DTYPES), help="Stored dtype: float16 or float32."),
    batch_size: int = typer.Option(8, min=1, help="Images per forward pass."),
    workers: int = typer.Option(2, min=0, help="DataLoader decoding processes (0 = decode in the main process)."),
    device: Device = "auto",
    precision: Precision = "auto",
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N images."),
    overwrite: bool = typer.Option(False, help="Replace an existing store made with other settings or images."),
    fmt: Optional[str] = typer.Option(None, "--format", callback=_one_of("zarr", "hdf5"), help="zarr or hdf5 (default: from OUT's suffix)."),
    shard_size: Optional[int] = typer.Option(None, min=1, help="Images per shard, the unit of work and of resume (default: ~64 MiB of padded features)."),
    path_column: Optional[str] = typer.Option(None, help="Table SRC: the column of image paths (relative ones are read relative to the table's folder)."),
    bytes_column: Optional[str] = typer.Option(None, help="Parquet SRC: the column of encoded images (binary, or a struct with a 'bytes' field)."),
    keep_columns: Optional[str] = typer.Option(None, help="Table SRC: columns copied into the store per image, comma-separated, e.g. id,caption."),
    json_out: bool = typer.Option(False, "--json", help="Print a one-line JSON summary on stdout."),
    jsonl: bool = typer.Option(False, "--jsonl", help="Print one JSON record per image on stdout."),
) -> None:
    """Extract upsampled features of every image into a Zarr or HDF5 store (resumable: rerun to finish).

    Exit status 3 means the store is complete but some inputs failed (their reasons are in the store)."""
    from wrcli.data.tables import TableOptions, is_table, resolve
    from wrcli.stores import store_format

    try:  # before torch and the backbone load: a wrong OUT is a usage error, reported at once
        store_format(out, fmt)
    except WrcError as exc:
        raise typer.BadParameter(str(exc), param_hint="OUT") from None
    kept = tuple(name.strip() for name in (keep_columns or "").split(",") if name.strip())
    table = TableOptions(path_column, bytes_column, kept)
    if table.given():  # so are the table's columns: only its schema is read
        if not is_table(src):
            raise typer.BadParameter("--path-column, --bytes-column and --keep-columns apply to a table SRC "
                                     "(an existing .parquet, .pq, .csv or .tsv file)", param_hint="SRC")
        try:
            resolve(src, table)
        except WrcError as exc:
            raise typer.BadParameter(str(exc), param_hint="SRC") from None
    from wrcli.extract import ExtractOptions, extract

    opts = ExtractOptions(
        backbone=backbone, backbone_weights=backbone_weights, layers=_layers(layers), upsampler=upsampler,
        scale=scale, out_size=_hw(out_size, "--out-size"), size=size, crop=crop, max_side=max_side, dtype=dtype,
        batch_size=batch_size, workers=workers, device=device, precision=precision, limit=limit, overwrite=overwrite,
        format=fmt, shard_size=shard_size, table=table,
    )
    summary = extract(
        src, out, opts, stdin=sys.stdin if src == "-" else None, on_record=_print_json if jsonl else None,
        progress=True, command_line=_command(),
    )
    if summary["rank"] != 0:  # rank 0 reports the whole store
        return
    if json_out:
        _print_json(summary)
    else:
        counts = f"{summary['ok']} ok, {summary['failed']} failed of {summary['n_images']} images"
        if summary["processed"]:
            typer.echo(f"wrc: {out}: {counts} ({summary['images_per_s']:.2f} img/s)", err=True)
        else:
            typer.echo(f"wrc: {out} is already complete ({counts}); nothing to do", err=True)
    if summary["failed"]:
        raise typer.Exit(EXIT_PARTIAL)


@app.command("train")
def train_cmd(
    images: str = typer.Argument(..., help="Training images: folder, glob, or a text file with one path per line."),
    out: str = typer.Option(..., "--out", "-o", help="Checkpoint to write (.safetensors); the training state goes to OUT.state.pt."),
    recipe: str = typer.Option(DEFAULT_TRAIN_RECIPE, callback=_one_of(*TRAIN_RECIPES), help="wrcli: the shipped checkpoint's recipe (lr 1e-3, --skip, --mse raw); published: the authors' (lr 2e-4, --no-skip, --mse range). --lr, --skip/--no-skip and --mse override it."),
    steps: int = typer.Option(100_000, min=1, help="Optimiser steps (the learning-rate schedule spans them)."),
    batch_size: int = typer.Option(4, min=1, help="Images per step and process."),
    lr: Optional[float] = typer.Option(None, help="AdamW peak learning rate (default: the recipe's)."),
    weight_decay: float = typer.Option(1e-5, help="AdamW weight decay."),
    warmup: int = typer.Option(1000, min=0, help="Linear warm-up steps before the cosine decay (at most steps/10)."),
    solver: str = typer.Option("official", callback=_one_of(*WRC_SOLVERS), help="WRC solve: official, exact or converse."),
    skip: Optional[bool] = typer.Option(None, "--skip/--no-skip", help="Add a bilinear skip to the published network, so that it starts as bilinear (default: the recipe's)."),
    skip_map: bool = typer.Option(False, "--skip-map", help="Pass the bilinear skip through a learned per-pixel channel map (a 1×1 convolution starting at zero; needs the skip), set in closed form at the end (--fit-batches)."),
    mse: Optional[str] = typer.Option(None, callback=_one_of(*TRAIN_MSE), help="MSE term: raw, or range (the authors', scaled by the target's per-pixel range) (default: the recipe's)."),
    backbone: BackboneName = DEFAULT_BACKBONE,
    backbone_weights: BackboneWeights = None,
    size: int = typer.Option(448, min=28, help="Training image side (the low-resolution view and the crops are half of it)."),
    val: str = typer.Option("0.05", help="Validation images: a fraction held out of IMAGES, or a folder / list file / glob."),
    val_every: int = typer.Option(1000, min=0, help="Validate every N steps (0: only at the end)."),
    log_every: int = typer.Option(50, min=1, help="Log loss, lr and images/s every N steps."),
    log_file: Optional[str] = typer.Option(None, help="JSON-lines log (default OUT.log.jsonl)."),
    checkpoint_every: int = typer.Option(1000, min=1, help="Save the training state every N steps (and at exit)."),
    resume: bool = typer.Option(False, help="Continue exactly from OUT.state.pt."),
    overwrite: bool = typer.Option(False, help="Without --resume: delete an earlier run's OUT, state and log and start over (else refused)."),
    cache: Optional[str] = typer.Option(None, help="Folder for precomputed backbone targets: no backbone passes while training."),
    cache_variants: int = typer.Option(8, min=1, help="Random crop sets cached per image (4 local crops each)."),
    down_weight: float = typer.Option(1.0, min=0.0, help="Weight of the term against the 2×-resolution features."),
    aug_weight: float = typer.Option(1.0, min=0.0, help="Weight of the augmentation-consistency term."),
    affinity_weight: Optional[float] = typer.Option(None, min=0.0, help="Weight of the affinity term: the outputs' pairwise pixel cosines against the targets' (default: the recipe's)."),
    contrast_weight: Optional[float] = typer.Option(None, min=0.0, help="Weight of the contrast term: each output map's mean pairwise pixel cosine against its target's (default: the recipe's)."),
    init: Optional[str] = typer.Option(None, help="Start from this checkpoint's weights (a file, or wrc for the shipped one) with a fresh optimiser and schedule; with --resume only when there is no state yet."),
    bn_batches: int = typer.Option(200, min=0, help="At the end, re-estimate the BatchNorm statistics over this many clean training batches (0: keep training's running averages)."),
    fit_batches: int = typer.Option(200, min=0, help="With --skip-map: at the end, set the map by ridge least squares over this many clean training batches (0: keep the learned map)."),
    fit_ridge: float = typer.Option(1.0, min=0.0, help="Ridge of that fit per sample, towards the plain bilinear skip."),
    workers: int = typer.Option(2, min=0, help="DataLoader processes."),
    seed: int = typer.Option(0, help="Seed of initialisation, data order, crops and augmentations."),
    device: Device = "auto",
    precision: Precision = "auto",
    json_out: bool = typer.Option(False, "--json", help="Print the result as one JSON line on stdout."),
) -> None:
    """Train the WRC upsampler self-supervised against a frozen backbone, with the recipe that trained the shipped
    checkpoint (or --recipe published). Ends with one line on stderr: the file written, or where the state is."""
    from wrcli.runtime import current_rank
    from wrcli.train import TrainingStopped, TrainOptions, summary_line, train
    from wrcli.training.outputs import RunFiles, check_writable

    try:  # before the backbone loads: an OUT that cannot be written is a usage error, reported at once
        check_writable(RunFiles.of(out, log_file))
    except WrcError as exc:
        raise typer.BadParameter(str(exc), param_hint="--out") from None
    try:
        val_spec: float | str | None = float(val)
    except ValueError:
        val_spec = val
    if val_spec == 0:
        val_spec = None
    try:
        opts = TrainOptions(
            recipe=recipe, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup=warmup,
            solver=solver, skip=skip, skip_map=skip_map, mse=mse, backbone=backbone, backbone_weights=backbone_weights, size=size,
            val=val_spec, val_every=val_every, log_every=log_every, log_file=log_file, checkpoint_every=checkpoint_every,
            resume=resume, overwrite=overwrite, cache=cache, cache_variants=cache_variants, down_weight=down_weight, aug_weight=aug_weight,
            affinity_weight=affinity_weight, contrast_weight=contrast_weight, init=init, bn_batches=bn_batches,
            fit_batches=fit_batches, fit_ridge=fit_ridge,
            workers=workers, seed=seed, device=device, precision=precision,
        )
    except WrcError as exc:  # options that contradict each other: a usage error
        raise typer.BadParameter(str(exc)) from None
    main_rank, again = current_rank().is_main, _command() + ("" if resume else " --resume")
    try:
        result = train(images, out, opts)
    except TrainingStopped as stop:
        if main_rank:
            typer.echo(f"wrc: {stop}; continue with: {again}", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if json_out:
        _print_json(result)
    if main_rank:
        typer.echo(f"wrc: {summary_line(result)}" + ("" if result["completed"] else f"; continue with: {again}"), err=True)


def _query(text: str) -> tuple[float, float]:
    try:
        y, x = (float(v) for v in text.split(","))
        if y < 0 or x < 0:
            raise ValueError
    except ValueError:
        raise typer.BadParameter(f"expected y,x pixel coordinates ≥ 0, e.g. 120,200, got {text!r}", param_hint="--query") from None
    return y, x


@app.command("viz")
def viz_cmd(
    images: list[str] = typer.Argument(..., help="Images: files, folders (recursive), globs or list files."),
    out: str = typer.Option(..., "--out", "-o", help="Folder for the PNGs (one per image, named after it)."),
    upsampler: str = typer.Option(f"bilinear,{DEFAULT_UPSAMPLER}", envvar="WRC_UPSAMPLER", help="Upsamplers side by side, comma-separated: registry names or checkpoint files ('default': wrc with its shipped checkpoint, else bilinear)."),
    query: Optional[list[str]] = typer.Option(None, "--query", "-q", help="Similarity query point y,x in pixels of the original image; repeat for several (default: the centre)."),
    size: int = typer.Option(448, min=1, help="Resize the short side to this many pixels (rounded to the patch multiple)."),
    max_side: Optional[int] = typer.Option(None, min=1, help="Cap on the long side in pixels (default 2 × --size)."),
    scale: int = typer.Option(2, min=0, help="Upsample the features to this many times the token grid (1 = the backbone's own grid; 0 = the input size, slow with learned upsamplers); each tile is enlarged to the picture by nearest neighbour."),
    backbone: BackboneName = DEFAULT_BACKBONE,
    backbone_weights: BackboneWeights = None,
    device: Device = "auto",
    precision: Precision = "auto",
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout instead of the PNG paths."),
) -> None:
    """Draw PCA-RGB feature images and query-point similarity maps, upsamplers side by side with the image.

    Exit status 3 means some images could not be read (the others were drawn)."""
    from wrcli.viz import VizOptions, run_viz

    opts = VizOptions(size=size, max_side=max_side, scale=scale, queries=[_query(q) for q in query or []])
    summary = run_viz(images, out, upsamplers=upsampler, backbone=backbone, backbone_weights=backbone_weights,
                      device=device, precision=precision, opts=opts)
    if json_out:
        _print_json(summary)
    else:
        for path in summary["written"]:
            typer.echo(path)
    for failure in summary["failed"]:
        typer.echo(f"wrc: {failure['path']}: {failure['error']}", err=True)
    if summary["failed"]:
        raise typer.Exit(EXIT_PARTIAL)


@app.command("bench")
def bench_cmd(
    cases: str = typer.Option("all", help="Comma-separated: backbone, upsampler, solve (the WRC solves alone), fft (one rfft2 + irfft2 pair, the solves' reference), pipeline (backbone + upsampler), or all."),
    upsampler: str = typer.Option(f"bilinear,{DEFAULT_UPSAMPLER}", envvar="WRC_UPSAMPLER", help="Upsamplers to time, comma-separated: registry names or checkpoint files ('default': wrc with its shipped checkpoint, else bilinear)."),
    size: int = typer.Option(448, min=1, help="Square image side in pixels, a multiple of the patch size."),
    scale: int = typer.Option(2, min=2, help="Upsampling factor of the token grid."),
    batch: str = typer.Option("1,8", "--batch", help="Batch sizes, comma-separated."),
    precision: str = typer.Option("fp32,bf16", help="fp32, bf16 and/or auto (bfloat16 autocast; auto: what the other commands' --precision auto picks here; the solve computes in fp32 and takes bf16 inputs)."),
    backend: str = typer.Option("torch,compiled,cupy", help="Backends of the solves and the learned upsamplers, comma-separated: torch (eager), compiled (torch.compile of the solves' fused steps and of the upsamplers' whole passes; the first warm-up call compiles), cupy (CUDA only; skipped with a note where it cannot run)."),
    warmup: int = typer.Option(2, min=0, help="Untimed calls before the timed ones."),
    repeats: int = typer.Option(10, min=1, help="Timed calls (median, spread)."),
    solve_channels: Optional[int] = typer.Option(None, min=1, help="Channels of the solve case (default: the WRC upsampler's layer width for the backbone, (C + 32) // 2)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Write the full report (settings, versions, every run) as JSON."),
    backbone: BackboneName = DEFAULT_BACKBONE,
    backbone_weights: BackboneWeights = None,
    device: Device = "auto",
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout instead of the table."),
) -> None:
    """Time the backbone, each upsampler, the WRC solves alone and backbone + upsampler per batch size,
    precision and solve backend: median and spread over repeats, peak memory, and the solve's
    memory-bandwidth floor."""
    from wrcli.bench import BenchOptions, report_table, run_bench

    opts = BenchOptions(
        backbone=backbone, backbone_weights=backbone_weights, upsamplers=upsampler, device=device, size=size,
        scale=scale, batches=batch, precisions=precision, backends=backend, cases=cases, warmup=warmup, repeats=repeats,
        solve_channels=solve_channels,
    )
    report = run_bench(opts, command=_command(), log=lambda line: typer.echo(line, err=True))
    _emit(report, out, json_out, lambda: report_table(report), width=200)


@app.command("info")
def info_cmd(
    store: str = typer.Argument(..., help="A store written by wrc extract (*.zarr, *.h5)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
    verify: bool = typer.Option(False, "--verify", help="Read and decode every shard; exit 1 if any fails."),
) -> None:
    """Summarise a feature store: images, failures, shape, settings, completeness, consistency."""
    from wrcli.stores import summary

    info = summary(store, verify=verify)
    if json_out:
        _print_json(info)
    else:
        for key, value in _info_lines(info):
            typer.echo(f"{key:>12}  {value}")
    if info.get("verify"):
        raise typer.Exit(EXIT_FAILURE)


@app.command("export")
def export_cmd(
    store: str = typer.Argument(..., help="A finished store written by wrc extract (*.zarr, *.h5)."),
    dest: str = typer.Argument(..., help="The single HDF5 file to write (*.h5, *.hdf5)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DEST if it exists."),
) -> None:
    """Copy a finished store into one self-contained HDF5 file (an HDF5 store needs its OUT.parts/ folder)."""
    from wrcli.stores import export_store

    written = export_store(store, dest, overwrite=overwrite)
    typer.echo(f"wrc: wrote {written} ({written.stat().st_size / 2**20:.1f} MiB)", err=True)


def _info_lines(info: dict) -> list[tuple[str, str]]:
    """The summary as short human-readable lines (``--json`` has everything)."""
    backbone, upsampler, resize = info.get("backbone") or {}, info.get("upsampler") or {}, info.get("resize") or {}
    sha = backbone.get("weights_sha256")
    ckpt = upsampler.get("checkpoint")
    config = upsampler.get("config") or {}
    shape = "centre crop" if resize.get("crop") else f"long side ≤ {resize.get('max_side')}"
    lines = [
        ("store", f"{info['path']} ({info['format']}, {info['bytes_on_disk'] / 2**20:.1f} MiB on disk)"),
        ("images", f"{info['n_images']}: {info['ok']} ok, {info['failed']} failed, {info['pending']} pending"),
        ("complete", f"{'yes' if info['complete'] else 'no'} ({info['done_shards']}/{info['n_shards']} shards)"
                     f"{'' if info['finalized'] else ', not finalized: rerun the same wrc extract command'}"),
        ("features", f"{tuple(info['shape'])} {info['dtype']} (padded; each image's valid region is feat_hw), "
                     f"computed in {info.get('precision') or 'a precision not recorded'}"),
        ("backbone", f"{backbone.get('name')} layers {backbone.get('layers')}" + (f" weights {sha[:12]}…" if sha else "")),
        ("upsampler", f"{upsampler.get('name')}" + (f" solver {config['solver']}" if config.get("solver") else "")
                      + (f" checkpoint {ckpt}" if ckpt else "") + (f" ×{info['scale']}" if info.get("scale") else "")),
        ("resize", f"short side {resize.get('size')}, patch {resize.get('patch')}, " + shape),
    ]
    if info.get("inconsistent"):
        from wrcli.stores.base import shard_list

        lines.insert(3, ("inconsistent", f"{shard_list(info['inconsistent'])} missing or changed; rerun the same command"))
    lines += [("failed", f"{f['name']}: {f['error']}") for f in info.get("failures", [])]
    if "verify" in info:
        lines += [("verify", f"shard {p['shard']}: {p['error']}") for p in info["verify"]] or [
            ("verify", f"every shard reads back ({info['done_shards']} decoded)")]
    return lines


def _fail(message: str, code: int = EXIT_FAILURE) -> None:
    if _debug:
        traceback.print_exc()
    typer.echo(f"wrc: error: {message}", err=True)
    sys.exit(code)


def config_defaults(path: str | None = None) -> dict:
    """Defaults per command from a TOML file (``$WRC_CONFIG``, else ``~/.config/wrc/config.toml``), e.g.

        [extract]
        backbone-weights = "/data/weights/dinov2_vits14.safetensors"
        batch-size = 16

    Precedence: command-line flags > ``WRC_*`` environment variables > this file > built-in defaults.
    """
    import tomllib

    file = path or os.environ.get("WRC_CONFIG") or os.path.join(os.path.expanduser("~"), ".config", "wrc", "config.toml")
    if not os.path.isfile(file):
        if path or os.environ.get("WRC_CONFIG"):
            raise WrcError(f"config file {file} does not exist (set by WRC_CONFIG)")
        return {}
    try:
        with open(file, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise WrcError(f"cannot read config file {file}: {exc}") from exc
    return {cmd: {key.replace("-", "_"): value for key, value in section.items()}
            for cmd, section in data.items() if isinstance(section, dict)}


_python_showwarning = warnings.showwarning


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Warnings as one line on stderr, ``wrc: warning: <message>`` (Python's form, with the source line, under
    ``--debug``)."""
    if _debug:
        _python_showwarning(message, category, filename, lineno, file, line)
        return
    text = " ".join(str(message).split())
    (file or sys.stderr).write(f"wrc: warning: {text}\n")


@contextmanager
def _library_log() -> Iterator[None]:
    """While a command runs: the library's log records (``wrcli.*`` module loggers, INFO and up) as plain lines on
    the stderr of that moment."""
    logger, handler = logging.getLogger("wrcli"), logging.StreamHandler(sys.stderr)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def main() -> None:
    """Console entry point: usage errors exit 2 (typer's message); any other error is one line, exit 1,
    no traceback unless --debug; warnings and the library's log records are one line each on stderr."""
    with warnings.catch_warnings(), _library_log():
        warnings.showwarning = _show_warning
        _run()


def _run() -> None:
    """The app, with every error turned into its one line and exit code. Ctrl-C (exit 130) and SIGTERM (exit 143)
    too: both raise KeyboardInterrupt, which typer turns into a silent exit 130, so the handlers record which
    signal fired. A signal the caller ignores (nohup, a background job's SIGINT) stays ignored."""
    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signum)
        signal.default_int_handler(signum, frame)

    ours = [sig for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL))
            if threading.current_thread() is threading.main_thread() and signal.getsignal(sig) is default]
    previous = {sig: signal.signal(sig, on_signal) for sig in ours}
    try:
        app(default_map=config_defaults())
    except KeyboardInterrupt:
        pass  # raised outside typer's own handling (e.g. while it starts)
    except SystemExit as exc:
        if exc.code != EXIT_INTERRUPTED or not received:
            raise
    except WrcError as exc:
        _fail(str(exc))
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            _fail(f"no space left on device{f' ({exc.filename})' if exc.filename else ''}; free space and rerun the same command to resume")
        _fail(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}")
    except Exception as exc:  # noqa: BLE001 - last resort: still one line
        _fail(f"{type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
    else:
        return
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # only a signal gets here; zarr's I/O loop, stopped mid-write, would warn of its pending coroutines at exit
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
    terminated = bool(received) and received[0] == signal.SIGTERM
    typer.echo(f"wrc: {'terminated' if terminated else 'interrupted'} — rerun the same command to resume", err=True)
    sys.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)
