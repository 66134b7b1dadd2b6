"""`python -m engine`: run a plan.

    python -m engine --plan plan.json --prompt "..." [--max-new-tokens N] [--json]
    python -m engine --plan plan.json --prompts-file prompts.txt      # a batch: one prompt per line (or a JSON list)
    python -m engine chat --plan plan.json [--system "..."] [--on-overflow refuse|drop-oldest]

User errors print one line, `error: <message> (<hint>)`, to stderr and exit with status 2.
Tables render in specmemo_plan.render.workflow, beside the planner's.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from specmemo_plan.errors import SpecMemoError
from specmemo_plan.render.workflow import render_memory, render_stats

from .chat import ChatSession

EXIT_USER_ERROR = 2


def _fail(exc: SpecMemoError):
    click.echo(f"error: {exc}", err=True)
    sys.exit(EXIT_USER_ERROR)


def _read_prompts(prompts: tuple[str, ...], prompts_file: str | None) -> list[str]:
    out = list(prompts)
    if prompts_file:
        path = Path(prompts_file)
        try:
            text = path.read_text()
        except OSError as exc:
            raise SpecMemoError(f"cannot read {path}: {exc.strerror}", "give a text file, one prompt per line") from None
        if path.suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise SpecMemoError(f"{path} is not valid JSON: {exc.msg}", "give a JSON list of strings") from None
            if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
                raise SpecMemoError(f"{path} must hold a JSON list of strings")
            out += data
        else:
            out += [line for line in text.splitlines() if line.strip()]
    if not out:
        raise SpecMemoError("no prompt given", "use --prompt TEXT or --prompts-file FILE")
    return out


def _engine(plan_path: str, device: str | None, threads: int | None = None):
    import torch

    from .runtime import Engine

    if threads:
        torch.set_num_threads(threads)
    engine = Engine(plan_path, device=device)
    for role, random in engine.random_weights.items():
        if random:
            click.echo(f"note: the {role} ({getattr(engine.plan, role).ref}) has RANDOM weights: its text means "
                       "nothing; use the run for memory and speed only", err=True)
    if not engine.real_tokenizer:
        click.echo("note: no tokenizer for this model: prompts are encoded as UTF-8 bytes", err=True)
    return engine


def _stats_dict(engine, result) -> dict:
    stats = result.stats.as_dict()
    stats["random_weights"] = dict(engine.random_weights)
    stats["sampling"] = engine.plan.generation.sampling
    stats["batch_size"] = len(result.outputs)
    return stats


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False), help="plan file from `specmemo-plan plan` or `tune`")
@click.option("--prompt", "prompts", multiple=True, help="a prompt (repeat for a batch)")
@click.option("--prompts-file", type=click.Path(dir_okay=False), help="prompts, one per line (or a .json list): one batch")
@click.option("--max-new-tokens", type=click.IntRange(min=1), help="default: the plan's generation.max_new_tokens")
@click.option("--chat-template/--no-chat-template", default=None, help="wrap each prompt in the tokenizer's chat template (default: when it has one)")
@click.option("--ignore-eos", is_flag=True, help="always generate max-new-tokens (benchmarks)")
@click.option("--device", help="torch device (default: from the plan's device kind)")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for torch (default: torch's choice)")
@click.option("--json", "as_json", is_flag=True, help="print {outputs, stats, memory} as JSON")
@click.pass_context
def main(ctx, plan_path, prompts, prompts_file, max_new_tokens, chat_template, ignore_eos, device, threads, as_json):
    """Speculative decoding inside a plan's memory."""
    if ctx.invoked_subcommand is not None:
        return
    if not plan_path:
        raise click.UsageError("--plan is required (or use the `chat` command)")
    try:
        texts = _read_prompts(prompts, prompts_file)
        engine = _engine(plan_path, device, threads)
        result = engine.generate(texts, max_new_tokens=max_new_tokens, ignore_eos=ignore_eos, chat_template=chat_template)
    except SpecMemoError as exc:
        _fail(exc)
    stats, memory = _stats_dict(engine, result), engine.memory_report()
    if as_json:
        outputs = [{"text": o.text, "token_ids": o.token_ids, "stop_reason": o.stop_reason} for o in result.outputs]
        click.echo(json.dumps({"outputs": outputs, "stats": stats, "memory": memory}, indent=2))
        return
    for i, out in enumerate(result.outputs):
        if len(result.outputs) > 1:
            click.echo(f"--- output {i + 1} ({len(out.token_ids)} tokens, {out.stop_reason}) ---")
        click.echo(out.text if engine.real_tokenizer else f"{out.text!r}\ntoken ids: {out.token_ids}")
    click.echo("")
    click.echo(render_stats(stats))
    click.echo("")
    click.echo(render_memory(memory))


@main.command()
@click.option("--plan", "plan_path", required=True, type=click.Path(dir_okay=False))
@click.option("--system", help="system message kept at the head of the conversation")
@click.option("--on-overflow", type=click.Choice(["refuse", "drop-oldest"]), default="refuse", show_default=True,
              help="when a turn would outgrow the plan's context: refuse it, or drop the oldest turns")
@click.option("--max-new-tokens", type=click.IntRange(min=1))
@click.option("--device")
@click.option("--threads", type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="one JSON object per reply")
def chat(plan_path, system, on_overflow, max_new_tokens, device, threads, as_json):
    """Interactive multi-turn chat; the KV of earlier turns is reused. Commands: /reset, /stats, /exit."""
    try:
        engine = _engine(plan_path, device, threads)
        session = ChatSession(engine, system=system, on_overflow=on_overflow, max_new_tokens=max_new_tokens)
    except SpecMemoError as exc:
        _fail(exc)
    tty = sys.stdin.isatty()
    while True:
        if tty:
            click.echo("you> ", nl=False)
        line = sys.stdin.readline()
        if not line:
            break
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            session.reset()
            click.echo("(conversation cleared)")
            continue
        if line.strip() == "/stats":
            click.echo(render_stats(session.stats.as_dict()))
            click.echo(render_memory(engine.memory_report()))
            continue
        try:
            reply = session.say(line) if engine.real_tokenizer else session.say_ids(engine.encode(line, chat_template=False))
        except SpecMemoError as exc:
            click.echo(f"error: {exc}", err=True)
            continue
        if as_json:
            click.echo(json.dumps({
                "text": reply.text, "token_ids": reply.token_ids, "stop_reason": reply.stop_reason,
                "prompt_tokens": reply.prompt_tokens, "reused_tokens": reply.reused_tokens,
                "dropped_turns": reply.dropped_turns, "stats": reply.stats.as_dict(),
            }))
        else:
            note = f" [dropped {reply.dropped_turns} oldest turn(s) to fit the context]" if reply.dropped_turns else ""
            click.echo(f"assistant> {reply.text}{note}")
            st = reply.stats.as_dict()
            rate = f"{st['acceptance_rate']:.2f}" if st["acceptance_rate"] is not None else "n/a"
            click.echo(f"  ({len(reply.token_ids)} tokens, {st['tokens_per_s'] or 0:.1f} tok/s, acceptance {rate}, "
                       f"reused {reply.reused_tokens}/{reply.prompt_tokens} prompt tokens)", err=True)


def run() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(prog_name="python -m engine")
