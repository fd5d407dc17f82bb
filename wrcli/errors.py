"""User-facing errors: the CLI prints them as one line, without a traceback (``--debug`` shows it)."""

from __future__ import annotations


class WrcError(Exception):
    """A problem the user can fix (bad path, mismatched checkpoint, missing weights...).

    The message is one line that says what went wrong and how to fix it.
    """


def first_line(error: BaseException | str, limit: int = 300) -> str:
    """The first non-blank line of an exception's message (its type name when the message is empty), cut to
    ``limit`` characters: what a one-line error message quotes of an underlying error."""
    text = str(error).strip()
    line = text.splitlines()[0].strip() if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
