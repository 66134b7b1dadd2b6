"""Glue every `specmemo-plan` command shares: errors, output, option groups, model loading.

Convention (docs/conventions.md): a user error is one line, `Error: <what is wrong> (<what to do>)`,
exit status 1, no traceback; click's own usage errors exit 2. `--json` prints the gathered data.
"""

from __future__ import annotations

import functools
import json

import click

from ..errors import SpecMemoError
from ..units import parse_bytes


def user_errors(func):
    """SpecMemoError -> one line, exit 1, no traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except SpecMemoError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def emit(data: dict, as_json: bool, render) -> None:
    """Print `data` as JSON, or `render()` for people: numbers are gathered before anything renders."""
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(render())


def positive(ctx, param, value):
    if value is not None and value <= 0:
        raise click.BadParameter(f"must be positive, got {value}")
    return value


def budget_option(required: bool, default: str | None = None, help_text: str | None = None):
    def convert(ctx, param, value):
        if value is None:
            return None
        try:
            return parse_bytes(value, "budget")
        except SpecMemoError as exc:
            raise click.BadParameter(str(exc)) from None

    return click.option(
        "--budget", callback=convert, required=required, default=default, show_default=default is not None,
        help=help_text or "Memory budget per device: 24GiB, 24GB, 24000MB or bytes.",
    )


def json_option(func):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


def apply(options, func):
    """Decorate `func` with a list of click options, first option first in --help."""
    for option in reversed(options):
        func = option(func)
    return func
