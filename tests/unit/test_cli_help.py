"""What `--help` tells a user, and how the job commands read their flags."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from dreamforge.cli.jobs import parse_since
from dreamforge.cli.main import app
from dreamforge.client.events import reconnect_delay

# Typer 0.29 carries its own copy of click, so commands and options are matched by shape.
ROOT: Any = get_command(app)


def _commands(group: Any = ROOT, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    found: list[tuple[tuple[str, ...], Any]] = []
    for name, command in group.commands.items():
        found.append(((*path, name), command))
        if hasattr(command, "commands"):
            found += _commands(command, (*path, name))
    return found


@pytest.mark.parametrize(
    ("path", "command"), _commands(), ids=lambda v: " ".join(v) if isinstance(v, tuple) else ""
)
def test_every_flag_has_a_one_line_description(path: tuple[str, ...], command: Any) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    assert (command.help or "").strip(), f"{' '.join(path)} has no description"
    for param in command.params:
        if param.param_type_name == "option":
            assert param.help, f"{' '.join(path)} {param.opts} has no help text"
            assert param.opts[0] in result.output  # shown whole, not cut at 80 columns


@pytest.mark.parametrize("args", [[], ["job"]])
def test_help_documents_the_exit_codes(args: list[str]) -> None:
    output = CliRunner().invoke(app, [*args, "--help"], terminal_width=80).output
    for line in (
        "0    success",
        "1    error",
        "2    usage error",
        "3    cannot reach the API",
        "4    the job failed",
    ):
        assert line in output


def test_job_commands_take_the_global_flags() -> None:
    for path, command in _commands():
        if path[0] != "job" or hasattr(command, "commands"):
            continue
        opts = {o for p in command.params for o in getattr(p, "opts", [])}
        assert {"--api-base", "--output", "-o", "--quiet", "-q", "--verbose", "-v"} <= opts, path
        api_base = next(p for p in command.params if "--api-base" in getattr(p, "opts", []))
        assert api_base.envvar == "DF_API_BASE"
        assert api_base.default == "http://localhost:8001/v1"


def test_since_takes_an_iso_time_or_a_duration() -> None:
    assert parse_since("2025-09-12T21:00:00Z") == datetime(2025, 9, 12, 21, tzinfo=UTC)
    assert parse_since("2025-09-12T23:00:00+02:00") == datetime(2025, 9, 12, 21, tzinfo=UTC)
    assert parse_since("2025-09-12T21:00:00") == datetime(2025, 9, 12, 21, tzinfo=UTC)  # no zone: UTC
    since = parse_since("10m")
    ago = datetime.now(UTC) - since
    assert timedelta(minutes=10) <= ago < timedelta(minutes=10, seconds=5)
    since = parse_since("2h")
    assert datetime.now(UTC) - since >= timedelta(hours=2)
    for bad in ("yesterday", "10x", "", "-5m"):
        with pytest.raises(typer.BadParameter):
            parse_since(bad)


def test_stream_reconnects_back_off_up_to_five_seconds() -> None:
    assert [reconnect_delay(n) for n in range(1, 8)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
