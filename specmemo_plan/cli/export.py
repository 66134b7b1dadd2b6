"""`specmemo-plan export`: a plan as another engine's settings, and what that engine cannot express."""

from __future__ import annotations

import click

from ..render import planner as render
from .options import emit, json_option, user_errors


@click.command("export")
@click.argument("plan_path", type=click.Path(dir_okay=False))
@click.option("--to", "engine", required=True, help="vllm, sglang, llama.cpp, trtllm or hf.")
@json_option
@user_errors
def export_cmd(plan_path, engine, as_json):
    """Print the settings that reproduce a plan in another engine, and what that engine cannot express."""
    from ..export import export_plan
    from ..plan import read_plan

    result = export_plan(read_plan(plan_path), engine)
    emit(result.as_dict(), as_json, lambda: render.export(result))
