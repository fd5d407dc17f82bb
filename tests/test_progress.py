"""Progress on stderr: periodic plain lines when not a terminal, a rich bar on one."""

from __future__ import annotations

import io

from wrcli.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_are_periodic_and_end_with_the_total():
    stream = io.StringIO()
    bar = Progress(5, "extract", stream=stream, interval=3600)
    for _ in range(5):
        bar.advance()
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("extract: 5/5 img,") and "img/s" in lines[0]


def test_a_terminal_gets_a_rich_bar_and_disabled_prints_nothing():
    tty = Terminal()
    bar = Progress(3, "train", unit="step", stream=tty)
    bar.advance(3)
    bar.close()
    assert "3/3" in tty.getvalue() and "step/s" in tty.getvalue()
    quiet = io.StringIO()
    off = Progress(3, "x", stream=quiet, enabled=False)
    off.advance(3)
    off.close()
    assert quiet.getvalue() == ""
