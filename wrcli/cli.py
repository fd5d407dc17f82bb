"""The ``wrc`` command line: parse, call the library, print. Heavy imports (torch, timm) happen inside
commands so that ``wrc --help`` answers at once.

Exit codes: 0 success, 1 failure, 2 usage error, 3 finished but some inputs failed (see ``EXIT_PARTIAL``),
130 interrupted.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback

import typer

from wrcli import __version__
from wrcli.errors import WrcError

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="wrc",
    help="Dense, sharp features from frozen vision foundation models with Weighted Reverse Convolution.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_debug = bool(os.environ.get("WRC_DEBUG"))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wrc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", envvar="WRC_DEBUG", help="Show tracebacks on errors."),
) -> None:
    global _debug
    _debug = debug


@app.command("upsamplers")
def upsamplers_cmd(json_out: bool = typer.Option(False, "--json", help="Print JSON on stdout.")) -> None:
    """List the upsamplers that --upsampler accepts (a checkpoint file is accepted too)."""
    from wrcli.models import list_upsamplers

    table = list_upsamplers()
    if json_out:
        import json

        typer.echo(json.dumps(table))
        return
    width = max(map(len, table))
    for name, description in table.items():
        typer.echo(f"{name:<{width}}  {description}")


def _fail(message: str, code: int = EXIT_FAILURE) -> None:
    if _debug:
        traceback.print_exc()
    typer.echo(f"wrc: error: {message}", err=True)
    sys.exit(code)


def main() -> None:
    """Console entry point: usage errors exit 2 (typer's message); any other error is one line, exit 1,
    no traceback unless --debug."""
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("wrc: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except WrcError as exc:
        _fail(str(exc))
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            _fail(f"no space left on device{f' ({exc.filename})' if exc.filename else ''}; free space and rerun the same command to resume")
        _fail(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}")
    except Exception as exc:  # noqa: BLE001 - last resort: still one line
        _fail(f"{type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
