"""Stopping a run cleanly: the state is saved between two steps, never in the middle of an update."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

log = logging.getLogger(__name__)


class StopFlag:
    """First Ctrl-C (SIGINT) or SIGTERM: finish the current step, save, stop; a second one interrupts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested, self._previous = False, {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stopping after this step (Ctrl-C again to abort without saving)")

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def ignore_stop_signals(worker: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which stops cleanly and shuts them down."""
    for s in StopFlag.SIGNALS:
        signal.signal(s, signal.SIG_IGN)
