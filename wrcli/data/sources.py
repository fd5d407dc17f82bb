"""What to extract: turn SRC (a folder, a glob, a list file, one image, or ``-`` for stdin) into an ordered list.

Rules, in the order SRC is tried:

- ``-``: one path per line on stdin.
- an existing folder: every image below it, recursively. Symlinked folders are followed, each real folder is
  visited once (so symlink loops end), hidden files and folders (name starting with ``.``: ``.git``, macOS
  ``._x.jpg`` resource forks, ...) are skipped, unreadable subfolders are skipped with a warning. Names are
  POSIX paths relative to the folder, sorted as strings. Broken symlinks with an image extension are kept: they
  fail at decode with a reason, so the store says what happened to them.
- an existing file with an image extension: that one image. Any other existing file (or a pipe, as in
  ``<(find ...)``) is a list file: one path per line, relative paths opened relative to the list's folder.
- a pattern containing ``*``, ``?`` or ``[`` (and not an existing path): ``glob`` with ``**`` support;
  non-folders with an image extension, sorted (like the shell, ``*`` does not match hidden names). A folder
  reached twice through symlinks counts once, as in folder mode.

List files and stdin are taken literally: only the line ending is stripped (spaces are kept), empty lines and
lines starting with ``#`` are skipped, and entries are not filtered by extension (a bad entry fails at decode).
Names are recorded as written; stdin paths open relative to the current folder.
They are read as UTF-8; bytes that are not UTF-8 round-trip to the file system unchanged (``surrogateescape``).
Recorded names (and the folder root) are :func:`wrcli.data.names.name_text` of the file names: valid UTF-8 text,
with a backslash doubled and a byte that is not UTF-8 written ``\\xNN``; ``name_bytes`` gives back the bytes.
"""

from __future__ import annotations

import glob
import hashlib
import os
import stat
import sys
import warnings
from dataclasses import dataclass
from typing import TextIO

from wrcli.data.names import name_bytes, name_text, printable
from wrcli.errors import WrcError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)
_LOOKED_FOR = ", ".join(sorted(IMAGE_EXTENSIONS))
_HINT = "give a folder, an image, a list file (one path per line), a glob pattern in quotes, or - to read paths from stdin"


@dataclass(frozen=True)
class Source:
    """An ordered image list. ``items`` holds ``(name, fs_path)``: the name the store records (valid text, see
    :mod:`wrcli.data.names`), the path to open."""

    kind: str  # "folder" | "glob" | "list" | "stdin" (a single image is a one-item "list")
    root: str | None
    items: tuple[tuple[str, str], ...]

    def sha256(self) -> str:
        """Hash of the names' bytes in order (not of the paths opened): identifies the image list when resuming."""
        digest = hashlib.sha256()
        for name, _ in self.items:
            digest.update(name_bytes(name) + b"\0")
        return digest.hexdigest()


def is_image_name(name: str) -> bool:
    """Whether ``name`` ends in one of ``IMAGE_EXTENSIONS``, in any case."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def discover(src: str, *, stdin: TextIO | None = None, limit: int | None = None) -> Source:
    """Resolve SRC into a Source (see the module docstring); ``limit`` keeps the first N images."""
    if limit is not None and limit < 1:
        raise WrcError(f"the image limit must be at least 1 (got {limit}); leave it out to take every image")
    src = os.fspath(src)
    if src == "-":
        source = Source("stdin", None, _from_lines(_read_stdin(stdin), base=None))
        where = "on stdin (one path per line; empty lines and # comments are skipped)"
    elif os.path.isdir(src):
        source = Source("folder", name_text(src), _walk(src))
        where = f"in '{printable(src)}' (looked recursively for {_LOOKED_FOR}; hidden files and folders are skipped)"
    elif os.path.isfile(src) and is_image_name(src):
        return Source("list", None, ((name_text(src), src),))
    elif os.path.exists(src):
        source = Source("list", None, _from_lines(_read_list(src), base=os.path.dirname(src)))
        where = f"in list file '{printable(src)}' (one path per line; empty lines and # comments are skipped)"
    elif any(c in src for c in "*?["):
        source = Source("glob", None, tuple((name_text(p), p) for p in _glob(src)))
        where = f"matching '{printable(src)}' (looked for {_LOOKED_FOR})"
    elif os.path.lexists(src):
        raise WrcError(f"'{printable(src)}' is a broken symlink; point it at an existing folder or file, or {_HINT}")
    else:
        raise WrcError(f"'{printable(src)}' does not exist; {_HINT}")
    if not source.items:
        raise WrcError(f"no images found {where}")
    return source if limit is None else Source(source.kind, source.root, source.items[:limit])


def _glob(pattern: str) -> list[str]:
    """Sorted non-folder matches with an image extension; a folder reached twice through symlinks (``**`` runs
    around a symlink loop until the OS stops it) counts once, under its shortest path."""
    matches = [p for p in glob.glob(pattern, recursive=True) if is_image_name(p) and not os.path.isdir(p)]
    real_dirs: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    kept = []
    for path in sorted(matches, key=lambda p: (p.count(os.sep), p)):
        folder, name = os.path.split(path)
        if folder not in real_dirs:
            real_dirs[folder] = os.path.realpath(folder)
        if (real_dirs[folder], name) not in seen:
            seen.add((real_dirs[folder], name))
            kept.append(path)
    return sorted(kept)


def _read_stdin(stdin: TextIO | None) -> str:
    if stdin is not None:
        return stdin.read()
    if sys.stdin is None or sys.stdin.isatty():
        raise WrcError("SRC is '-' but stdin is not a pipe; pipe paths in, e.g. find photos -name '*.jpg' | wrc extract - out.zarr")
    return _decode(sys.stdin.buffer.read())


def _read_list(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise WrcError(f"cannot read '{printable(path)}': {exc.strerror}; check its permissions") from exc
    if b"\0" in data:
        raise WrcError(
            f"'{printable(path)}' is neither an image with a known extension ({_LOOKED_FOR}) nor a text list of paths; "
            "convert it, or rename it if it is one of these formats"
        )
    return _decode(data)


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape").removeprefix("\ufeff")


def _from_lines(text: str, base: str | None) -> tuple[tuple[str, str], ...]:
    """One path per line: strip the line ending only; skip empty lines and ``#`` comments."""
    names = (line.removesuffix("\r") for line in text.split("\n"))
    return tuple(
        (name_text(name), name if base is None else os.path.join(base, name))
        for name in names if name and not name.startswith("#")
    )


def _walk(root: str) -> tuple[tuple[str, str], ...]:
    """Every non-hidden file with an image extension below ``root``, following symlinked folders once each."""
    try:
        top = os.stat(root)
        visited = {(top.st_dev, top.st_ino)}
        entries = _scan(root)
    except OSError as exc:
        raise WrcError(f"cannot read folder '{printable(root)}': {exc.strerror}; check its permissions") from exc
    names: list[str] = []
    stack = [("", entries)]
    while stack:
        prefix, entries = stack.pop()
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = prefix + entry.name
            real = _dir_id(entry)
            if real is None:
                if is_image_name(entry.name):
                    names.append(rel)
            elif real not in visited:
                visited.add(real)
                try:
                    stack.append((rel + "/", _scan(entry.path)))
                except OSError as exc:
                    warnings.warn(f"skipping unreadable folder '{printable(entry.path)}': {exc.strerror}", stacklevel=3)
    names.sort()
    return tuple((name_text(name), os.path.join(root, name)) for name in names)


def _scan(path: str) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        return sorted(it, key=lambda e: e.name)


def _dir_id(entry: os.DirEntry) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the folder ``entry`` points to (following symlinks), or None if it is not a folder."""
    try:
        st = entry.stat()
    except OSError:  # broken symlink or vanished entry: not a folder
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None
