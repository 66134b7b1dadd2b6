"""`specmemo-plan`: a thin click group. Each command gathers numbers, then renders a table or --json.

The calculator commands (presets, estimate, min-budget, fit, plan, compare, export) import neither
torch nor transformers, so they answer in a fraction of a second; `devices` asks torch too when NVML
and amdsmi find no GPU. The on-device commands (profile, tune, demo) drive the engine; they live on
the engine's side (`engine/commands.py`), named here by a string and imported when called or listed
by --help (that module imports torch only inside its commands), so the planner never imports the engine.
"""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute" of a click command, imported when the command is looked up
COMMANDS = {
    "presets": "specmemo_plan.cli.presets:presets",
    "estimate": "specmemo_plan.cli.calculator:estimate",
    "min-budget": "specmemo_plan.cli.calculator:min_budget_cmd",
    "fit": "specmemo_plan.cli.calculator:fit",
    "plan": "specmemo_plan.cli.calculator:plan",
    "devices": "specmemo_plan.cli.devices:devices",
    "compare": "specmemo_plan.cli.compare:compare",
    "export": "specmemo_plan.cli.export:export_cmd",
    "profile": "engine.commands:profile",
    "tune": "engine.commands:tune",
    "demo": "engine.commands:demo",
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use: `--help` and one command load only what they need."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attribute = target.split(":")
        return getattr(importlib.import_module(module), attribute)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="specmemo-plan")
def cli():
    """Memory planner, autotuner and runtime for speculative decoding on small GPUs."""


def printable_streams() -> None:
    """Names from argv that are not UTF-8 (surrogate escapes) print as backslash escapes instead of raising
    UnicodeEncodeError on a strict UTF-8 stdout/stderr."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main():
    printable_streams()
    cli(prog_name="specmemo-plan")
