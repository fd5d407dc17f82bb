"""What every evaluation shares: the upsamplers compared side by side, the report, the results table.

A report is one JSON object::

    {"task", "protocol": {...every setting that determines the numbers...}, "dataset": {...},
     "environment": {"wrcli", "torch", "timm", "python", "device"}, "backbone": Backbone.config(),
     "upsamplers": {label: {"name", "checkpoint", "checkpoint_sha256", "config"}},
     "results": {label: {metric: value}}, "seconds"}

Metric values are floats, or {"mean", "std", "runs"} over seeds.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from wrcli.errors import WrcError


def parse_upsamplers(spec: str | Sequence[str]) -> list[str]:
    """``"bilinear,wrc,ckpt.safetensors"`` (or a list) → the names in order, without blanks or repeats."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for item in (s.strip() for s in items):
        if item and item not in names:
            names.append(item)
    if not names:
        raise WrcError("--upsampler needs at least one registry name or checkpoint file")
    return names


def label_of(name: str) -> str:
    """The column label of an upsampler: its registry name, or a checkpoint's file stem."""
    path = Path(name)
    return path.stem if path.suffix in (".safetensors", ".pth", ".pt") or path.exists() else name


def load_upsamplers(names: Sequence[str], backbone: Any, device: Any) -> dict[str, Any]:
    """label → an upsampler on ``device`` for inference (eval mode, BatchNorm folded; see
    :func:`wrcli.models.load_upsampler`)."""
    from wrcli.models import load_upsampler

    models: dict[str, Any] = {}
    for name in names:
        label = label_of(name)
        if label in models:
            raise WrcError(f"two upsamplers would share the label {label!r}; rename one checkpoint file")
        models[label] = load_upsampler(name, backbone).to(device).fold_batchnorm()
    return models


def resolve_default(names: Sequence[str], backbone: Any) -> list[str]:
    """``names`` with "default" replaced by what it means for ``backbone`` (wrc with its shipped checkpoint,
    else bilinear), so that the column says what ran; repeats dropped."""
    from wrcli.defaults import DEFAULT_UPSAMPLER
    from wrcli.models import default_upsampler

    return list(dict.fromkeys(default_upsampler(backbone) if n == DEFAULT_UPSAMPLER else n for n in names))


def describe_upsampler(model: Any) -> dict[str, Any]:
    """Name, checkpoint file and its sha256, and config of one upsampler (for the report)."""
    from wrcli.extract import file_sha256

    ckpt = getattr(model, "checkpoint", None)
    return {
        "name": model.name,
        "checkpoint": str(ckpt) if ckpt else None,
        "checkpoint_sha256": file_sha256(ckpt) if ckpt else None,
        "config": model.config,
    }


def environment(device: Any = None) -> dict[str, Any]:
    """Versions and machine facts that belong with any number."""
    import timm
    import torch

    from wrcli import __version__

    env = {
        "wrcli": __version__, "torch": torch.__version__, "timm": timm.__version__,
        "python": platform.python_version(), "platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
        "device": str(device) if device is not None else None,
    }
    if device is not None and str(device).startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """{"mean", "std" (sample std, 0 for one run), "runs"} of per-seed values."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "runs": list(values)}


def format_value(value: Any, digits: int = 4) -> str:
    """A metric for the table: a float, or mean ± std."""
    if isinstance(value, Mapping):
        return f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_table(title: str, results: Mapping[str, Mapping[str, Any]], metrics: Sequence[str]) -> None:
    """Upsamplers as rows, ``metrics`` as columns, on stdout (plain text when it is not a terminal)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("upsampler")
    for metric in metrics:
        table.add_column(metric, justify="right")
    for label, row in results.items():
        table.add_row(label, *(format_value(row.get(metric, "")) for metric in metrics))
    Console(file=sys.stdout, width=max(80, 14 * (len(metrics) + 1))).print(table)


def write_report(path: str | os.PathLike, report: Mapping[str, Any]) -> None:
    """Write the report as JSON, whole (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise WrcError(f"cannot write the report {path}: {e.strerror or e}") from None
