"""Progress on stderr: a rich bar with rate and ETA on a terminal, periodic plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """Counts work items; ``advance`` is cheap enough to call per item."""

    def __init__(self, total: int, label: str, *, unit: str = "img", stream: TextIO | None = None,
                 interval: float = 10.0, enabled: bool = True):
        self.total, self.label, self.unit, self.interval = total, label, unit, interval
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = self._last = time.monotonic()
        self._bar = None
        if enabled and self.stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                console=Console(file=self.stream), transient=False,
            )
            self._task = self._bar.add_task(label, total=total, rate="")
            self._bar.start()
        self.enabled = enabled

    @property
    def rate(self) -> float:
        return self.done / max(time.monotonic() - self.start, 1e-9)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, advance=n, rate=f"{self.rate:.2f} {self.unit}/s")
            return
        now = time.monotonic()
        if self.enabled and (now - self._last >= self.interval or self.done >= self.total):
            self._last = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def line(self) -> str:
        rate = self.rate
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_s = _duration(eta) if eta != float("inf") else "?"
        return f"{self.label}: {self.done}/{self.total} {self.unit}, {rate:.2f} {self.unit}/s, ETA {eta_s}"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
