"""WebDataset tar shards as SRC: which shards, their images, and reading them forward in one pass.

**Shards.** SRC names tar shards (:func:`is_shard_source`) when it is ``pipe:CMD`` (CMD's standard output is the
tar: ``pipe:aws s3 cp s3://bucket/00001.tar -``), ``file:PATH``, an ``http(s)://`` URL, or a path or pattern ending
in ``.tar`` (also ``.tar.gz``/``.tgz``, ``.tar.bz2``, ``.tar.xz``: recognised by their first bytes, not their
names). Brace patterns are expanded as WebDataset expands them (``braceexpand``: ``'shards/{00000..00099}.tar'``,
``'{a,b}.tar'``), then glob characters match existing files (sorted). A text file whose entries all name shards is
a shard list (:func:`shard_list`): one per line, each may hold a brace pattern, relative paths against its folder.
A shard that is missing or cannot be read is kept: its failure is recorded, like a broken image file's.

**Images.** Members are grouped into samples by WebDataset's key convention: the key is the member path up to
the first dot of its base name, the rest is the extension (``a/0001.seg.png``: key ``a/0001``, extension
``seg.png``). The images are the regular members with an image extension (:func:`~wrcli.data.sources.is_image_name`),
hidden ones (base name starting with ``.``, as macOS's ``._x.jpg``) left out. Each is recorded as ``SHARD/KEY``,
SHARD the shard as written (after brace expansion), or ``SHARD/KEY.EXT`` when its sample holds several images;
its ``file_stat`` is the member's (size, mtime in ns) from its tar header.

**Listing, then reading.** A store needs its image list before it is written (its size, its shards of images, the
resume fingerprint), and a tar has no index: :func:`list_shard` reads each shard once forward, member headers only
where the shard is a local uncompressed file (the data are skipped with forward seeks), the whole stream for a pipe,
URL or compressed tar. :func:`read_images` then streams the members of the images asked for, forward, and stops
after the last one (a pipe's command is ended). A tar is never read backwards or at random: the reader is a
forward-only file object under :mod:`tarfile` (``braceexpand`` + the standard library's ``tarfile`` rather than the
``webdataset`` package: the listing pass, member-level failures with reasons, stopping early and skipping data with
seeks need the members themselves, which ``webdataset``'s sample pipelines hide, and the pair has no other
dependencies).

**Failures** are rows of the store, never the end of the run: a member whose data are cut off is recorded as
``truncated tar``; a tar that ends without its end-of-archive blocks, or whose next header is damaged, gets one
more row, ``SHARD`` itself, saying so; a shard that cannot be opened or is not a tar (a missing file, a failing
command, an HTTP error) is one such row with the reason. Images that decode badly fail in the decoder as files do.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import io
import itertools
import logging
import lzma
import os
import re
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import BinaryIO

from wrcli.data.names import name_text, printable
from wrcli.data.sources import Encoded, is_image_name
from wrcli.errors import WrcError

log = logging.getLogger(__name__)

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tbz2", ".tar.xz", ".txz")
_STREAMED = ("pipe:", "http://", "https://")
_SAMPLE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # WebDataset's base_plus_ext: (key, extension)
_SKIP_BLOCK = 1 << 20  # bytes read at a time when skipping forward in a stream
_NOT_SAME = "not in the tar as listed (it changed since it was listed); rerun to list it again"


def is_shard_source(src: str) -> bool:
    """Whether SRC names tar shards: a ``pipe:``, ``file:`` or http(s) source, or a non-folder ending in a tar suffix."""
    return src.startswith((*_STREAMED, "file:")) or (src.lower().endswith(TAR_SUFFIXES) and not os.path.isdir(src))


def shard_urls(src: str, base: str | None = None) -> list[str]:
    """The shards SRC names: braces expanded, then local patterns globbed (sorted); relative local paths joined to
    ``base`` (a list file's folder)."""
    from braceexpand import braceexpand

    urls: list[str] = []
    for url in braceexpand(src):
        if url.startswith(_STREAMED):
            urls.append(url)
            continue
        path = url.removeprefix("file:")
        if base is not None and not os.path.isabs(path):
            path = os.path.join(base, path)
        matches = sorted(glob.glob(path)) if any(c in path for c in "*?[") and not os.path.exists(path) else [path]
        urls.extend(matches)
    return urls


def shard_list(lines: Sequence[str], base: str) -> list[str] | None:
    """The shards of a list file's entries if every entry names shards, None if none does; WrcError if they mix."""
    shards = [is_shard_source(line) for line in lines]
    if not any(shards):
        return None
    if not all(shards):
        image = lines[shards.index(False)]
        raise WrcError(f"the list mixes tar shards and other entries (e.g. '{printable(image)}'); list one kind per file")
    return [url for line in lines for url in shard_urls(line, base)]


@dataclass(frozen=True)
class TarImage:
    """One row a shard contributes: an image member, or (``ordinal`` -1) the shard's own failure."""

    name: str  # recorded: SHARD/KEY, SHARD/KEY.EXT, or SHARD for the shard's own row
    key: str  # WebDataset's sample key ("" for the shard's own row)
    member: str  # path in the tar
    ordinal: int  # position among all the tar's members, -1 for the shard's own row
    stat: tuple[int, int]  # (size, mtime_ns) from the member's header
    error: str = ""  # known from the listing (truncated member, unreadable shard)


def list_shard(url: str) -> list[TarImage]:
    """The rows of one shard in member order (see the module docstring), from one forward pass."""
    shard = name_text(url)
    found: list[tuple[int, tarfile.TarInfo]] = []
    members, cut, problem = 0, False, ""
    try:
        with _open_tar(url) as opened:
            while True:
                try:
                    member = opened.tar.next()
                except tarfile.ReadError:  # the previous member's data end early
                    cut = True
                    break
                if member is None:
                    problem = opened.end_problem(members)
                    break
                if member.isfile() and _is_image_member(member.name):
                    found.append((members, member))
                members += 1
            problem = problem or opened.exit_problem()
    except (OSError, tarfile.TarError, EOFError, lzma.LZMAError, ValueError) as exc:
        return [TarImage(shard, "", "", -1, (-1, -1), _unreadable(url, exc))]
    rows = _rows(shard, found)
    if cut:
        if found and found[-1][0] == members - 1:
            rows[-1] = replace(rows[-1], error="truncated tar: the member's data are cut off")
        else:
            problem = f"truncated tar: member {members} is cut off and nothing after it can be read"
    if problem:
        rows.append(TarImage(shard, "", "", -1, (-1, -1), problem))
    return rows


def _is_image_member(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return is_image_name(base) and not base.startswith(".") and _SAMPLE.match(name) is not None


def _rows(shard: str, found: list[tuple[int, tarfile.TarInfo]]) -> list[TarImage]:
    samples = [_SAMPLE.match(member.name).groups() for _, member in found]
    keys = [key.removeprefix("./") for key, _ in samples]
    per_key = Counter(keys)
    return [TarImage(f"{shard}/{name_text(key)}" + (f".{name_text(ext)}" if per_key[key] > 1 else ""), name_text(key),
                     member.name, ordinal, (member.size, round(member.mtime * 1_000_000_000)))
            for (ordinal, member), key, (_, ext) in zip(found, keys, samples)]


def read_images(url: str, wanted: Sequence[tuple[int, TarImage]]) -> Iterator[Encoded]:
    """The bytes of the ``wanted`` rows (global index, row) of one shard, in their order, from one forward pass that
    stops after the last of them; a row that cannot be read is yielded with its reason."""
    ordinals = {row.ordinal for _, row in wanted if row.ordinal >= 0 and not row.error}
    members = _members(url, ordinals)
    current: tuple[int, str, bytes, str] | None = None
    for index, row in wanted:
        if row.ordinal < 0 or row.error:
            yield Encoded(index, b"", row.error, row.stat)
            continue
        while current is None or (current[0] < row.ordinal and current[0] >= 0):
            current = next(members, (-1, "", b"", _NOT_SAME))
        ordinal, member, data, error = current
        if not error and (ordinal != row.ordinal or member != row.member):
            error = _NOT_SAME
        yield Encoded(index, b"" if error else data, error, row.stat)
    members.close()


def _members(url: str, ordinals: set[int]) -> Iterator[tuple[int, str, bytes, str]]:
    """(ordinal, member name, data, "") for the members at ``ordinals``, in order, ending after the last of them; a
    failure ends it with (-1, "", b"", reason)."""
    last = max(ordinals, default=-1)
    try:
        with _open_tar(url) as opened:
            seen = 0
            for ordinal, member in enumerate(iter(opened.tar.next, None)):
                seen = ordinal + 1
                if ordinal in ordinals:
                    reader = opened.tar.extractfile(member)
                    try:
                        data = reader.read() if reader is not None else b""
                    except tarfile.ReadError:
                        yield ordinal, member.name, b"", "truncated tar: the member's data are cut off"
                        return
                    yield ordinal, member.name, data, ""
                if ordinal >= last:
                    return
            if problem := opened.end_problem(seen):  # it ended before the members asked for: cut since it was listed
                yield -1, "", b"", problem
    except (OSError, tarfile.TarError, EOFError, lzma.LZMAError, ValueError) as exc:
        yield -1, "", b"", _unreadable(url, exc)


def _unreadable(url: str, exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        why = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        why = str(exc.reason)
    elif isinstance(exc, OSError) and exc.strerror:
        why = exc.strerror
    elif isinstance(exc, tarfile.ReadError) and str(exc) == "unexpected end of data":
        return "truncated tar: it ends before this member"
    elif isinstance(exc, tarfile.ReadError):
        why = f"not a tar file ({exc})" if str(exc) != "empty file" else "empty file"
    else:
        why = str(exc).split("\n", 1)[0] or type(exc).__name__
    return f"unreadable shard: {printable(why)}"


# -- opening --------------------------------------------------------------------------------------------------------

class _Forward(io.RawIOBase):
    """A file object that only moves forward: :mod:`tarfile` in its random-access mode reads through it, its
    forward seeks become seeks on a local file or reads that are thrown away on a stream. Keeps the last header-sized
    block read, to tell a tar's end-of-archive blocks from a cut or damaged end."""

    def __init__(self, raw: BinaryIO, seekable: bool):
        super().__init__()
        self.raw, self.can_seek, self.pos = raw, seekable, 0
        self.last_block: tuple[int, bytes] = (-1, b"")

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if size == tarfile.BLOCKSIZE:
            self.last_block = (self.pos, data)
        self.pos += len(data)
        return data

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET or pos < self.pos:
            raise OSError("a tar shard is read forward only")
        if self.can_seek:
            self.raw.seek(pos)
            self.pos = pos
        while self.pos < pos and (block := self.raw.read(min(_SKIP_BLOCK, pos - self.pos))):
            self.pos += len(block)
        return self.pos


@dataclass
class _Opened:
    tar: tarfile.TarFile
    stream: _Forward
    exit_status: Callable[[], tuple[int, str]]  # (status, last stderr line) of the source's command; 0 if none

    def end_problem(self, members: int) -> str:
        """Why the tar, whose iteration just ended, did not end properly ("" if it did)."""
        start, block = self.stream.last_block
        if start != self.tar.offset or len(block) < tarfile.BLOCKSIZE:
            return f"truncated tar: ends after {members} members without its end-of-archive blocks"
        if block.count(0) != len(block):
            return f"corrupt tar: the header after member {members} is damaged; the members after it cannot be read"
        return ""

    def exit_problem(self) -> str:
        status, stderr = self.exit_status()
        return f"unreadable shard: the command exited with status {status}: {stderr}" if status else ""


@contextmanager
def _open_tar(url: str) -> Iterator[_Opened]:
    with _open_raw(url) as (raw, exit_status):
        try:
            stream, seekable = _decompressed(raw)
            forward = _Forward(stream, seekable)
            tar = tarfile.TarFile(fileobj=forward, mode="r")
        except (OSError, tarfile.TarError, EOFError, lzma.LZMAError) as exc:
            status, message = exit_status()
            if status:  # the command failed: that is the reason, not the empty stream it left
                raise OSError(f"the command exited with status {status}: {message}") from exc
            raise
        try:
            yield _Opened(tar, forward, exit_status)
        finally:
            tar.close()


def _decompressed(raw: BinaryIO) -> tuple[BinaryIO, bool]:
    """The tar stream of ``raw`` (gzip, bzip2 and xz recognised by their first bytes) and whether it can seek."""
    if not hasattr(raw, "peek"):
        raw = io.BufferedReader(raw)
    head = raw.peek(6)[:6]
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb"), False
    if head.startswith(b"BZh"):
        return bz2.BZ2File(raw), False
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw), False
    return raw, raw.seekable()


@contextmanager
def _open_raw(url: str) -> Iterator[tuple[BinaryIO, Callable[[], tuple[int, str]]]]:
    """The bytes of a shard and a function that gives (exit status, stderr line) of its command (0 if none)."""
    if url.startswith("pipe:"):
        with tempfile.TemporaryFile() as stderr:
            proc = subprocess.Popen(url[len("pipe:"):], shell=True, stdout=subprocess.PIPE, stderr=stderr)

            def exit_status() -> tuple[int, str]:
                proc.stdout.read()  # to the end: a command still writing has not failed yet
                status = proc.wait()
                stderr.seek(0)
                lines = stderr.read().decode("utf-8", "replace").strip().splitlines()
                return status, (lines[-1] if lines else "no message")

            try:
                yield proc.stdout, exit_status
            finally:
                if proc.poll() is None:  # left before its end: the rest is not needed
                    proc.kill()
                proc.stdout.close()
                proc.wait()
        return
    if url.startswith(("http://", "https://")):
        with urllib.request.urlopen(url, timeout=60) as response:
            yield response, lambda: (0, "")
        return
    with open(url.removeprefix("file:"), "rb") as f:
        yield f, lambda: (0, "")


# -- the source -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TarShards:
    """The listed shards of a SRC: ``urls``, and per row (image) the shard it is in and its :class:`TarImage`."""

    urls: tuple[str, ...]
    shard_of: tuple[int, ...]
    rows: tuple[TarImage, ...]

    def read(self, indices: Sequence[int]) -> Iterator[Encoded]:
        """The rows ``indices`` (ascending), each shard they touch read once, forward (see :func:`read_images`)."""
        for t, group in itertools.groupby(indices, key=self.shard_of.__getitem__):
            yield from read_images(self.urls[t], [(i, self.rows[i]) for i in group])


def list_shards(urls: Sequence[str], limit: int | None = None) -> TarShards:
    """List ``urls`` in order (each once, forward), stopping once ``limit`` rows are found."""
    shard_of: list[int] = []
    rows: list[TarImage] = []
    for t, url in enumerate(urls):
        if limit is not None and len(rows) >= limit:
            break
        listed = list_shard(url)
        if not listed:
            log.warning("%s holds no images", printable(url))
        for row in listed:
            if row.error:
                log.warning("%s: %s", row.name, row.error)
        rows += listed
        shard_of += [t] * len(listed)
        log.debug("listed %s: %d rows", url, len(listed))
    rows, shard_of = rows[:limit], shard_of[:limit]
    return TarShards(tuple(urls[: (shard_of[-1] + 1) if shard_of else 0]), tuple(shard_of), tuple(rows))
