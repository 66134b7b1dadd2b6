"""`specmemo-plan export`: a plan as another engine's settings, and what that engine cannot express."""

from __future__ import annotations

import click

from ..render import planner as render
from .options import emit, json_option, user_errors


@click.command("export")
@click.argument("plan_path", type=click.Path(dir_okay=False))
@click.option("--to", "engine", required=True, help="vllm, sglang, llama.cpp, trtllm or hf.")
@click.option("--enforce-eager", is_flag=True,
              help="vLLM --enforce-eager / SGLang --disable-cuda-graph: no CUDA graphs, more of the budget for KV.")
@json_option
@user_errors
def export_cmd(plan_path, engine, enforce_eager, as_json):
    """Print the settings that reproduce a plan in another engine, and what that engine cannot express.

    vLLM's --gpu-memory-utilization and SGLang's --mem-fraction-static are the largest shares at which the
    engine's predicted peak stays within the plan's budget; settings that would pass it are refused."""
    from ..export import export_plan
    from ..plan import read_plan

    result = export_plan(read_plan(plan_path), engine, enforce_eager=enforce_eager)
    emit(result.as_dict(), as_json, lambda: render.export(result))
