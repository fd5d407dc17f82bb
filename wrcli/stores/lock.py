"""One writer per store: a lease file beside the store, taken by rank 0 of a job before it creates or replaces it.

The lease ``.<OUT name>.wrc-lock`` (beside ``OUT``, so that ``--overwrite`` never removes it) is a small JSON
object ``{"host", "pid", "job", "since"}``, created whole (a temporary file hard-linked to the lease name, which
fails when the lease exists). The holder refreshes its modification time every :data:`HEARTBEAT_S` seconds.
A lease is stale when its holder is gone: on the same host, when no process has its pid; on another host, when it
has not been refreshed for :data:`LEASE_S` seconds (a killed holder refreshes nothing). A stale lease is taken
over: renamed away (atomic, so of two processes breaking it only one gets it), checked to be the lease that was
judged stale, then replaced.

The ranks of one torchrun or SLURM job share the store: rank 0 holds the lease naming the job
(:func:`current_job`); the other ranks only check that it names theirs (:func:`check_job`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from wrcli.errors import WrcError
from wrcli.files import tmp_sibling

log = logging.getLogger(__name__)

LEASE_S = 300.0
HEARTBEAT_S = 20.0


def lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.wrc-lock")


def current_job() -> str:
    """What names this process's job: torchrun's run id and rendezvous address, SLURM's job and step, else the
    process itself (one process is one job)."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env:
        return f"torchrun {env['TORCHELASTIC_RUN_ID']}@{env.get('MASTER_ADDR')}:{env.get('MASTER_PORT')}"
    if "SLURM_JOB_ID" in env and "SLURM_NTASKS" in env:
        return f"slurm {env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', '')}"
    if "WORLD_SIZE" in env and "MASTER_PORT" in env:
        return f"dist {env.get('MASTER_ADDR')}:{env['MASTER_PORT']}"
    return f"process {socket.gethostname()}:{os.getpid()}"


class StoreLock:
    """The lease on the store at ``path`` for ``job``, held from :meth:`acquire` to :meth:`release` (a context
    manager); :class:`WrcError` naming the other writer when it is held."""

    def __init__(self, path: Path, job: str) -> None:
        self.path, self.job, self.file = path, job, lock_path(path)
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._mine = ""

    def acquire(self) -> StoreLock:
        self._mine = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "job": self.job,
                                 "since": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        while not self._create():
            held = _read(self.file)
            if held is None:  # released or being replaced meanwhile
                continue
            if not _is_stale(self.file, held):
                raise held_error(self.path, held)
            _break(self.file, held)
        self._heartbeat = threading.Thread(target=self._refresh, daemon=True, name="wrc-lease")
        self._heartbeat.start()
        return self

    def _create(self) -> bool:
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            return _create(self.file, self._mine)
        except OSError as e:
            raise WrcError(f"cannot lock {self.path} for writing: {e.strerror or e}; choose a writable OUT") from e

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if _read(self.file) == json.loads(self._mine):
            self.file.unlink(missing_ok=True)

    def _refresh(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.file)
            except OSError as exc:
                log.warning("cannot refresh the lease %s: %s", self.file, exc)

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_job(path: Path, job: str) -> bool:
    """Whether the lease on ``path`` names ``job`` (False while it is missing or stale: rank 0 has yet to take
    it); WrcError when another live writer holds it."""
    held = _read(lock_path(path))
    if held is None or held.get("job") == job:
        return held is not None
    if _is_stale(lock_path(path), held):
        return False
    raise held_error(path, held)


def held_error(path: Path, held: dict) -> WrcError:
    return WrcError(f"{path} is being written by another wrc extract (host {held.get('host')}, pid {held.get('pid')}, "
                    f"since {held.get('since')}); wait for it to finish or stop it, or choose another OUT")


def _create(file: Path, text: str) -> bool:
    """Create ``file`` holding ``text`` unless it exists (atomically, content included)."""
    tmp = tmp_sibling(file)
    tmp.write_text(text, encoding="utf-8")
    try:
        os.link(tmp, file)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _read(file: Path) -> dict | None:
    """The lease in ``file``; None when there is none, {} when it cannot be read (judged by its age alone)."""
    try:
        held = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return held if isinstance(held, dict) else {}


def _is_stale(file: Path, held: dict) -> bool:
    if held.get("host") == socket.gethostname() and isinstance(held.get("pid"), int):
        try:
            os.kill(held["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return False
    try:
        return time.time() - file.stat().st_mtime > LEASE_S
    except FileNotFoundError:
        return False


def _break(file: Path, stale: dict) -> None:
    """Remove the stale lease ``stale``; a lease another process took meanwhile is put back."""
    away = file.with_name(f"{file.name}.stale-{os.getpid()}")
    try:
        os.replace(file, away)
    except FileNotFoundError:
        return
    if _read(away) == stale:
        log.warning("%s: took over the lease of a writer that is gone (host %s, pid %s)", file, stale.get("host"),
                    stale.get("pid"))
    else:
        try:
            os.link(away, file)
        except FileExistsError:
            pass
    away.unlink(missing_ok=True)
