"""Glue every `specmemo-plan` command shares: errors, output, option groups, model loading.

Exit statuses, one convention for `specmemo-plan` and `python -m engine` (docs/conventions.md):
- 0: done;
- 1: a user error found after the command line was read (a budget below the weights, a bad file,
  an output that cannot be written): one line on stderr, `Error: <what is wrong> (<what to do>)`,
  no traceback (EXIT_USER_ERROR);
- 2: click's own usage errors: an unknown option, a missing one, a value that does not parse or is
  out of range (`--bandwidth nan`), with the usage line.
`--json` prints the gathered data.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path

import click

from ..errors import SpecMemoError
from ..units import parse_bytes

EXIT_USER_ERROR = 1  # click.ClickException's status; click.UsageError exits 2


def user_errors(func):
    """SpecMemoError, and an OS error on a named file, -> one line, exit 1, no traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except SpecMemoError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            if exc.errno is None or exc.filename is None:
                raise
            raise click.ClickException(f"cannot access {exc.filename}: {os.strerror(exc.errno)}") from None

    return wrapper


class FiniteFloat(click.FloatRange):
    """A float option that refuses NaN and infinity before its range: `--bandwidth inf` divided by
    zero, `--bandwidth nan` printed "speedup nanx", `--temperature nan` wrote NaN into a plan.
    Every float option of both CLIs uses it (FloatRange alone lets NaN through: NaN compares false)."""

    name = "float"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)

    def _describe_range(self) -> str:
        return "finite" if self.min is None and self.max is None else super()._describe_range()


POSITIVE_FLOAT = FiniteFloat(min=0, min_open=True)
SHARE = FiniteFloat(0, 1)  # acceptance rates
# GB/s: above zero and below 1e6 (1 PB/s, ~200x an H200's HBM3e): past that a forward rounds to 0 ms
BANDWIDTH = FiniteFloat(min=0, max=1e6, min_open=True)
SHARE_ABOVE_ZERO = FiniteFloat(0, 1, min_open=True)  # --retain


# files a model folder holds that a command reads: writing over one destroys the model
_MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def model_files(*refs: str | None) -> list[Path]:
    """The files behind model references (a config.json, a .gguf, a folder's config, tokenizer and
    weights) for files.check_output_path's `inputs`; presets and `bundled:` names are not the user's files."""
    out: list[Path] = []
    for ref in refs:
        if not ref or ref.startswith("bundled:"):
            continue
        path = Path(os.path.expanduser(ref))
        if path.is_file():
            out.append(path)
        elif path.is_dir():
            out += [p for p in path.iterdir() if p.name in _MODEL_FILES or p.suffix in _WEIGHT_SUFFIXES]
    return out


def emit(data: dict, as_json: bool, render) -> None:
    """Print `data` as JSON, or `render()` for people: numbers are gathered before anything renders."""
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(render())


KV_DTYPE_HELP = ("KV cache type, K or K:V (e.g. fp8, q8_0, q8_0:f16; llama.cpp's q8_0 is 8.5 bits a value); "
                 "default: the compute dtype.")


def kv_dtype(ctx, param, value):
    """--kv-dtype K[:V]: one spelling (kvtypes.canonical_kv), or click's usage error naming the known types."""
    if value is None:
        return None
    from ..kvtypes import canonical_kv

    try:
        return canonical_kv(value)
    except SpecMemoError as exc:
        raise click.BadParameter(str(exc)) from None


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
        metavar="SIZE",
    )


def json_option(func):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


def apply(options, func):
    """Decorate `func` with a list of click options, first option first in --help."""
    for option in reversed(options):
        func = option(func)
    return func
