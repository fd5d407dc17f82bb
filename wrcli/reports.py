"""Reports of every command that measures something (eval, bench): their environment, their JSON file, their
table. A report is one JSON object::

    {"task", "protocol": {...every setting that determines the numbers...}, "dataset": {...},
     "environment": {"wrcli", "torch", "timm", "python", "platform", "cpu_threads", "device"[, "gpu"]},
     "backbone": Backbone.config(), "upsamplers": {label: {"name", "checkpoint", "checkpoint_sha256", "config"}},
     "results": {label: {metric: value}}, "seconds", "command"}

Metric values are floats, or {"mean", "std", "runs"} over seeds. Tables are built here and printed by the CLI.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from wrcli.errors import WrcError
from wrcli.files import write_text_atomic


def command_line(argv: Sequence[str]) -> str:
    """The ``wrc`` command as typed (shell-quoted), from the arguments after the program name."""
    return shlex.join(["wrc", *argv])


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


def results_table(title: str, results: Mapping[str, Mapping[str, Any]], metrics: Sequence[str]) -> Any:
    """A rich ``Table``: upsamplers as rows, ``metrics`` as columns (the CLI prints it)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("upsampler")
    for metric in metrics:
        table.add_column(metric, justify="right")
    for label, row in results.items():
        table.add_row(label, *(format_value(row.get(metric, "")) for metric in metrics))
    return table


def write_report(path: str | os.PathLike, report: Mapping[str, Any]) -> None:
    """Write the report as indented JSON, whole (temporary file, then rename)."""
    try:
        write_text_atomic(path, json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
    except OSError as e:
        raise WrcError(f"cannot write the report {path}: {e.strerror or e}") from None
