"""The interface every evaluation protocol implements, and the one runner that does what they all share.

A protocol is one module whose task object has four parts, which :func:`run_task` calls in this order:

1. **data reader** — ``read()``: parse and check the dataset and the settings, before any model is loaded, so
   that bad input fails at once;
2. **per-image features** — ``features(session, bars)``: a context manager that gives the backbone's features of
   every image, computed once (cached on disk or streamed) and shared by every upsampler, for as long as the
   metric runs;
3. **metric** — ``measure(session, features, bars)``: each upsampler's results, ``label → {metric: value}``,
   and any sections of the report that only this protocol has (e.g. per-category numbers);
4. **report** — ``protocol(session)``: every setting that determines the numbers; ``dataset()``: what was
   evaluated (called last, so it may count what the metric saw). ``kind`` names the task, ``metrics`` the
   table's columns.

The runner opens the :class:`~wrcli.session.Session` (device, precision, backbone, upsamplers), times the run, hands
out progress bars and assembles the report (:mod:`wrcli.reports`; the resolved precision is
``environment.precision``). ``--precision bf16`` covers the backbone and upsampler passes only (each protocol runs
them at ``session.precision``, :func:`wrcli.precision.autocast`; the WRC solves stay float32); probes, similarities
and metrics compute in float32::

    {"task", "protocol", "dataset", "environment", "backbone", "upsamplers", "metrics", "results",
     ...the protocol's own sections..., "seconds", "command"}
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from wrcli.defaults import DEFAULT_BACKBONE, DEFAULT_UPSAMPLER
from wrcli.progress import Progress
from wrcli.reports import environment
from wrcli.session import Session, open_session

REPORT_KEYS = ("task", "protocol", "dataset", "environment", "backbone", "upsamplers", "metrics", "results",
               "seconds", "command")


@dataclass(frozen=True)
class RunOptions:
    """What every evaluation is told: the upsamplers compared side by side, the backbone, where, whether to
    show progress, and the compute precision (auto, fp32 or bf16: :mod:`wrcli.precision`)."""

    upsamplers: str | Sequence[str] = f"bilinear,{DEFAULT_UPSAMPLER}"  # "default": wrc with its shipped checkpoint, else bilinear
    backbone: str = DEFAULT_BACKBONE
    backbone_weights: str | None = None
    device: str = "auto"
    progress: bool = True
    precision: str = "auto"


@dataclass(frozen=True)
class Bars:
    """Progress bars on stderr (:class:`~wrcli.progress.Progress`), or silent ones when ``enabled`` is off."""

    enabled: bool = True

    def __call__(self, total: int, label: str, unit: str = "img") -> Progress:
        return Progress(total, label, unit=unit, enabled=self.enabled)


@dataclass
class Measurement:
    """What a protocol's metric gives the report."""

    results: dict[str, dict[str, Any]]  # upsampler label → {metric: value}
    sections: dict[str, Any] = field(default_factory=dict)  # report sections of this protocol only


@runtime_checkable
class Task(Protocol):
    """One evaluation protocol (see the module docstring for the order of the calls)."""

    kind: str
    metrics: Sequence[str]

    def read(self) -> None: ...

    def features(self, session: Session, bars: Bars) -> AbstractContextManager[Any]: ...

    def measure(self, session: Session, features: Any, bars: Bars) -> Measurement: ...

    def protocol(self, session: Session) -> dict[str, Any]: ...

    def dataset(self) -> dict[str, Any]: ...


def run_task(task: Task, options: RunOptions, command: str | None = None) -> dict[str, Any]:
    """Read the data, open the session, compute the features once and measure every upsampler; the report."""
    start = time.monotonic()
    task.read()
    session = open_session(options.upsamplers, backbone=options.backbone, weights=options.backbone_weights,
                           device=options.device, precision=options.precision)
    bars = Bars(options.progress)
    with task.features(session, bars) as features:
        measured = task.measure(session, features, bars)
    return assemble(task, session, measured, time.monotonic() - start, command)


def assemble(task: Task, session: Session, measured: Measurement, seconds: float,
             command: str | None) -> dict[str, Any]:
    """The report of ``task`` (keys in :data:`REPORT_KEYS` order, the protocol's sections before "seconds")."""
    return {
        "task": task.kind,
        "protocol": task.protocol(session),
        "dataset": task.dataset(),
        "environment": {**environment(session.device), "precision": session.precision},
        "backbone": session.backbone.config(),
        "upsamplers": session.describe_upsamplers(),
        "metrics": list(task.metrics),
        "results": measured.results,
        **measured.sections,
        "seconds": round(seconds, 2),
        "command": command,
    }
