"""File names as text: what stores, ``--jsonl`` records and messages hold, which must be valid UTF-8.

On Linux a file name is bytes; Python decodes the bytes that are not UTF-8 to lone surrogates (``surrogateescape``:
byte ``0xNN`` becomes ``U+DCNN``), which no UTF-8 writer (zarr, HDF5, JSON) accepts. :func:`name_text` makes a name
valid text losslessly with one escape: ``\\`` becomes ``\\\\`` and each such byte ``\\xNN`` (two lowercase hex
digits), so ``b"caf\\xe9.jpg"`` is recorded as ``caf\\xe9.jpg`` (11 characters) and ``a\\b.jpg`` as ``a\\\\b.jpg``.
Names without a backslash or a non-UTF-8 byte are unchanged. :func:`name_bytes` inverts it, to the bytes on disk::

    name_bytes(name_text(n)) == os.fsencode(n)  and  os.fsdecode(name_bytes(text)) opens the file
"""

from __future__ import annotations

import re

_ESCAPE = re.compile(r"\\(\\|x[89a-f][0-9a-f])")  # name_text escapes only bytes >= 0x80


def printable(text: str) -> str:
    """``text`` with each lone surrogate (a non-UTF-8 byte ``0xNN`` from ``surrogateescape``) written ``\\xNN``;
    for messages, where no inverse is needed."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def name_text(name: str) -> str:
    """A file name as valid UTF-8 text, reversibly (see the module docstring; :func:`name_bytes` inverts it)."""
    return printable(name.replace("\\", "\\\\"))


def name_bytes(text: str) -> bytes:
    """The file-name bytes that ``text`` (from :func:`name_text`) stands for: ``\\\\`` → ``\\``, ``\\xNN`` → byte NN."""
    raw = _ESCAPE.sub(lambda m: "\\" if m[1] == "\\" else chr(0xDC00 + int(m[1][1:], 16)), text)
    return raw.encode("utf-8", "surrogateescape")
