"""What to extract: turn SRC (a folder, a glob, a list file, one image, tar shards, a table, or ``-`` for stdin) into
an ordered list.

Rules, in the order SRC is tried:

- ``-``: one path per line on stdin.
- an existing folder: every image below it, recursively. Symlinked folders are followed, each real folder is
  visited once (so symlink loops end), hidden files and folders (name starting with ``.``: ``.git``, macOS
  ``._x.jpg`` resource forks, ...) are skipped, unreadable subfolders are skipped with a warning. Names are
  POSIX paths relative to the folder, sorted as strings. Broken symlinks with an image extension are kept: they
  fail at decode with a reason, so the store says what happened to them.
- an existing file with an image extension: that one image. An existing ``.parquet``, ``.pq``, ``.csv`` or ``.tsv``
  file is a table, one image per row (:mod:`wrcli.data.tables`).
- tar shards (:mod:`wrcli.data.tars`): ``pipe:CMD``, ``file:``, http(s), or a path, brace pattern or glob ending in
  ``.tar`` (``.tar.gz``, ...): every image member of every shard, shard by shard, members in tar order.
- any other existing file (or a pipe, as in ``<(find ...)``) is a list file: one path per line, relative paths
  opened relative to the list's folder; a list whose entries all name tar shards is a shard list.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

import numpy as np

from wrcli.data.names import name_bytes, name_text, printable
from wrcli.errors import WrcError

if TYPE_CHECKING:
    from wrcli.data.tables import TableOptions

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)
_LOOKED_FOR = ", ".join(sorted(IMAGE_EXTENSIONS))
_HINT = "give a folder, an image, a list file (one path per line), a glob pattern in quotes, or - to read paths from stdin"


@dataclass(frozen=True)
class Source:
    """An ordered image list. ``items`` holds ``(name, fs_path)``: the name the store records (valid text, see
    :mod:`wrcli.data.names`), the path to open (for images inside a container, a tar member's path or "").

    Images that are not files (tar members, a table's bytes) come with ``read``, which yields their
    :class:`Encoded` bytes for ascending indices, and ``stats``, their ``file_stat`` as known without reading.
    ``columns`` are per-image values the store keeps beside ``path`` (a tar's ``key``, a table's kept columns);
    ``units`` says which input shard each image is read from, so that ranks split the shards between them."""

    kind: str  # "folder" | "glob" | "list" | "stdin" | "tar" | "table" (a single image is a one-item "list")
    root: str | None
    items: tuple[tuple[str, str], ...]
    columns: Mapping[str, np.ndarray] = field(default_factory=dict)
    stats: tuple[tuple[int, int], ...] | None = None
    read: Callable[[Sequence[int]], Iterator[Encoded]] | None = None
    units: tuple[int, ...] | None = None

    def sha256(self) -> str:
        """Hash of the names' bytes in order (not of the paths opened): identifies the image list when resuming."""
        digest = hashlib.sha256()
        for name, _ in self.items:
            digest.update(name_bytes(name) + b"\0")
        return digest.hexdigest()

    def columns_sha256(self) -> str:
        """Hash of the kept columns (names, types, values in order): a resumed store must hold the same."""
        digest = hashlib.sha256()
        for name, values in self.columns.items():
            digest.update(f"{name}\0{values.dtype}\0".encode())
            if values.dtype == object:
                for v in values:
                    digest.update(str(v).encode("utf-8", "surrogateescape") + b"\0")
            else:
                digest.update(np.ascontiguousarray(values).tobytes())
        return digest.hexdigest()

    def head(self, limit: int | None) -> Source:
        """The first ``limit`` images (all with None)."""
        if limit is None:
            return self
        cut = {name: values[:limit] for name, values in self.columns.items()}
        return Source(self.kind, self.root, self.items[:limit], cut, None if self.stats is None else self.stats[:limit],
                      self.read, None if self.units is None else self.units[:limit])


@dataclass(frozen=True)
class Encoded:
    """One image's bytes as read from its container (a tar, a table), or why they could not be read (``error``, and
    ``data`` empty); ``stat`` is what the store records as its ``file_stat``."""

    index: int
    data: bytes
    error: str
    stat: tuple[int, int]


def is_image_name(name: str) -> bool:
    """Whether ``name`` ends in one of ``IMAGE_EXTENSIONS``, in any case."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def discover(src: str, *, stdin: TextIO | None = None, limit: int | None = None,
             table: TableOptions | None = None, containers: bool = False) -> Source:
    """Resolve SRC into a Source (see the module docstring); ``limit`` keeps the first N images; ``table`` says which
    columns of a table SRC to read (WrcError for another SRC); ``containers``: whether images that are not files
    (tar members, a table's bytes) are accepted, which only extraction reads (WrcError otherwise)."""
    source = _discover(src, stdin, limit, table)
    if source.read is not None and not containers:
        what = "tar shards" if source.kind == "tar" else "a table's bytes column"
        raise WrcError(f"'{printable(src)}' holds images in {what}, which only wrc extract reads; "
                       "give image files here (a folder, a glob, a list file)")
    return source


def _discover(src: str, stdin: TextIO | None, limit: int | None, table: TableOptions | None) -> Source:
    from wrcli.data import tables, tars

    if limit is not None and limit < 1:
        raise WrcError(f"the image limit must be at least 1 (got {limit}); leave it out to take every image")
    src = os.fspath(src)
    if table is not None and table.given() and not tables.is_table(src):
        raise WrcError(f"--path-column, --bytes-column and --keep-columns apply to a table SRC "
                       f"({', '.join(tables.TABLE_SUFFIXES)}); '{printable(src)}' is not one")
    if src == "-":
        source = Source("stdin", None, _from_lines(_lines(_read_stdin(stdin)), base=None))
        where = "on stdin (one path per line; empty lines and # comments are skipped)"
    elif os.path.isdir(src):
        source = Source("folder", name_text(src), _walk(src))
        where = f"in '{printable(src)}' (looked recursively for {_LOOKED_FOR}; hidden files and folders are skipped)"
    elif os.path.isfile(src) and is_image_name(src):
        return Source("list", None, ((name_text(src), src),))
    elif tables.is_table(src):
        return _table(src, tables.resolve(src, table or tables.TableOptions()), limit)
    elif tars.is_shard_source(src):
        return _tars(src, tars.shard_urls(src), limit)
    elif os.path.exists(src):
        lines = _lines(_read_list(src))
        if (urls := tars.shard_list(lines, os.path.dirname(src))) is not None:
            return _tars(src, urls, limit)
        source = Source("list", None, _from_lines(lines, base=os.path.dirname(src)))
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
    return source.head(limit)


def _table(src: str, opts: TableOptions, limit: int | None) -> Source:
    from wrcli.data.tables import read_table

    table = read_table(src, opts, limit)
    if not table.names:
        raise WrcError(f"no rows in table '{printable(src)}'")
    items = tuple(zip(table.names, table.paths))
    if opts.bytes_column is None:
        return Source("table", name_text(src), items, table.columns)
    return Source("table", name_text(src), items, table.columns, (table.stat,) * len(items), table.read)


def _tars(src: str, urls: list[str], limit: int | None) -> Source:
    from wrcli.data.tars import list_shards

    if not urls:
        raise WrcError(f"no tar shards match '{printable(src)}'")
    shards = list_shards(urls, limit)
    rows = shards.rows
    if all(row.ordinal < 0 for row in rows):
        first = next((row for row in rows), None)
        why = f" (e.g. {first.name}: {first.error})" if first else ""
        raise WrcError(f"no images in the {len(urls)} tar shard{'s' if len(urls) > 1 else ''} of '{printable(src)}'{why}")
    return Source("tar", name_text(src), tuple((row.name, row.member) for row in rows),
                  {"key": np.array([row.key for row in rows], dtype=object)}, tuple(row.stat for row in rows),
                  shards.read, shards.shard_of)


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


def _lines(text: str) -> list[str]:
    """One entry per line: strip the line ending only; skip empty lines and ``#`` comments."""
    names = (line.removesuffix("\r") for line in text.split("\n"))
    return [name for name in names if name and not name.startswith("#")]


def _from_lines(lines: list[str], base: str | None) -> tuple[tuple[str, str], ...]:
    return tuple((name_text(name), name if base is None else os.path.join(base, name)) for name in lines)


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
