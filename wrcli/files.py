"""File helpers every module shares: atomic replacement, durable flushes, content hashes.

One temporary-name scheme for everything wrcli builds before renaming into place: ``.<name>.wrc-tmp-<pid>``
beside the target, so that :func:`remove_stale_tmps` can find what a killed process left behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

TMP_TAG = ".wrc-tmp-"


def tmp_sibling(path: Path) -> Path:
    """A hidden name next to ``path`` for building it before an atomic rename (unique per process)."""
    return path.with_name(f".{path.name}{TMP_TAG}{os.getpid()}")


def remove_stale_tmps(path: Path) -> None:
    """Remove the files :func:`tmp_sibling` names for ``path`` (left by killed processes)."""
    for stale in path.parent.glob(f".{path.name}{TMP_TAG}*"):
        _remove(stale)


def _remove(path: Path) -> None:
    """Delete a file or a folder tree (nothing when it is missing)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_write(path: str | os.PathLike, *, durable: bool = False) -> Iterator[Path]:
    """``with atomic_write(p) as tmp: write tmp`` — then ``tmp`` replaces ``p`` in one rename.

    ``tmp`` may be made a file or a folder (``p`` then must be missing or an empty folder). Readers see the old
    ``p`` or the whole new one, never a part. On an exception (a full disk, Ctrl-C) ``tmp`` is removed and ``p``
    is untouched. ``durable`` flushes ``tmp`` and its folder to stable storage before and after the rename (for
    the done markers of resumable work). The parent folder is made.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path)
    try:
        yield tmp
        if durable:
            fsync([tmp])
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    if durable:
        fsync([path])


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` whole, through :func:`atomic_write`."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def fsync(paths: Sequence[Path]) -> None:
    """Flush files (and then their folders) to stable storage; missing files are skipped."""
    dirs = []
    for p in paths:
        if p.exists():
            _fsync_one(p)
            dirs.append(p.parent)
    for d in dict.fromkeys(dirs):
        _fsync_one(d)


def _fsync_one(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
