"""User-facing errors: the CLI prints them as one line, without a traceback (``--debug`` shows it)."""


class WrcError(Exception):
    """A problem the user can fix (bad path, mismatched checkpoint, missing weights...).

    The message is one line that says what went wrong and how to fix it.
    """
