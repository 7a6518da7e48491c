"""What every CLI command shares: output format flags, stdout for results, stderr for people."""

from __future__ import annotations

import json
import logging
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from dreamforge.observability.logs import LogFormat
from dreamforge.observability.logs import configure_logging as setup_logging

# Results go to stdout (so `| jq` works); progress, notes and errors go to stderr.
out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class OutputFormat(StrEnum):
    """`--output`: JSON for scripts, a table for people."""

    json = "json"
    table = "table"


OutputOpt = Annotated[
    OutputFormat, typer.Option("--output", "-o", help="Result format: json (for scripts) or table.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or notes on stderr; errors only.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging on stderr.")]


def configure_logging(verbose: bool, *, level: int = logging.WARNING, log_format: LogFormat = "text") -> None:
    """Debug logs with -v; otherwise `level` and above (warnings by default, so stderr stays readable).

    `log_format` json (`DF_LOG_FORMAT`, for the serve and worker processes): one JSON object a line.
    """
    setup_logging(logging.DEBUG if verbose else level, log_format)


def emit_json(data: Any) -> None:
    """Print a result as indented JSON on stdout."""
    typer.echo(json.dumps(data, indent=2, default=str))


def emit_table(table: Table) -> None:
    """Print a Rich table on stdout, at most 80 columns wide unless the terminal is wider."""
    Console(width=max(80, out.width) if out.is_terminal else 80).print(table)


def note(message: str) -> None:
    """Print a message for people on stderr, as is (no markup, no highlighting)."""
    err.print(message, highlight=False, markup=False)


def fail(message: str, *, code: int = 1) -> typer.Exit:
    """Print `error: message` on stderr and return the exit to raise."""
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)
