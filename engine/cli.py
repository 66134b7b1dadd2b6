"""`python -m engine`: run a plan.

    python -m engine --plan plan.json --prompt "..." [--max-new-tokens N] [--json]
    python -m engine --plan plan.json --prompts-file prompts.txt      # a batch: one prompt per line (or a JSON list)
    python -m engine chat --plan plan.json [--system "..."] [--on-overflow refuse|drop-oldest]

User errors print one line, `Error: <message> (<hint>)`, to stderr and exit with status 1, as the
planner's CLI does (specmemo_plan.cli.options.user_errors); click's own usage errors (an unknown
option, a value of the wrong type) exit with 2, as in the planner. Ctrl-C exits with 130 (128 +
SIGINT, the shell's convention) and no traceback; in chat, Ctrl-C during a reply cancels only the
reply. What can be refused before the weights load is (engine/prompts.py): the plan, --device, the
prompts' encoding, count and length. Tables render in specmemo_plan.render.workflow.
"""

from __future__ import annotations

import json
import os
import sys

import click

from specmemo_plan.cli.options import user_errors
from specmemo_plan.errors import SpecMemoError
from specmemo_plan.render.workflow import render_memory, render_stats

from .chat import OVERFLOW_POLICIES, ChatSession

EXIT_INTERRUPTED = 130  # 128 + SIGINT
ENGINE_DEVICE_TYPES = ("cpu", "cuda")  # ROCm builds of torch name their devices cuda too
# Options of the group that `chat` takes too: given on both sides of `chat`, they must agree.
SHARED = {"plan_path": "--plan", "max_new_tokens": "--max-new-tokens", "device": "--device", "threads": "--threads",
          "as_json": "--json"}
RUN_ONLY = {"prompts": "--prompt", "prompts_file": "--prompts-file", "chat_template": "--chat-template",
            "ignore_eos": "--ignore-eos"}


def check_device(value: str | None) -> None:
    """`--device` is a torch device the engine runs on, checked before anything loads."""
    if value is None:
        return
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        raise SpecMemoError(f"--device {value!r} is not a torch device", "use cpu, cuda or cuda:N") from None
    if device.type not in ENGINE_DEVICE_TYPES:
        raise SpecMemoError(f"--device {value}: the engine runs on cpu or cuda (ROCm included), not {device.type}",
                            "use cpu, cuda or cuda:N")
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and device.index is not None and device.index >= count:
        raise SpecMemoError(f"--device {value}: this machine has {count} CUDA/ROCm device(s) visible to torch",
                            f"use cuda:0 .. cuda:{count - 1}" if count else "run on a machine with a GPU, or use cpu")


def _engine(plan, device: str | None, threads: int | None = None, tokenizer="auto"):
    import torch

    from .runtime import Engine

    if threads:
        cpus = os.cpu_count() or 1
        if threads > cpus:  # libgomp allocates per thread: a huge count aborts the process
            raise SpecMemoError(f"--threads {threads} is more than this machine's {cpus} CPUs",
                                f"use --threads {cpus} or fewer")
        torch.set_num_threads(threads)
    engine = Engine(plan, device=device, tokenizer=tokenizer)
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


def _prepare(plan_path: str, prompts, prompts_file, max_new_tokens, chat_template, device):
    """Everything checked before the weights load: (plan, token ids, tokenizer or None, max_new)."""
    from specmemo_plan.models import load_shape
    from specmemo_plan.plan import read_plan

    from .prompts import check_count, check_new_tokens, encode_prompts, read_prompts
    from .tokens import engine_tokenizer

    plan = read_plan(plan_path)
    check_device(device)
    max_new = max_new_tokens or plan.generation.max_new_tokens
    texts = read_prompts(prompts, prompts_file)
    check_count(len(texts), plan.knobs)  # 10,000 prompts: refused before a tokenizer loads
    check_new_tokens(plan.knobs, max_new)
    vocab = load_shape(plan.target.ref).vocab_size
    tokenizer, real = engine_tokenizer(plan.target.ref, vocab)  # the tokenizer only, no weights
    ids = encode_prompts(texts, tokenizer, plan.knobs, max_new, vocab, chat_template)
    return plan, ids, (tokenizer if real else None), max_new


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False),
              help="Plan file from `specmemo-plan plan` or `tune` (required; for chat, before or after `chat`).")
@click.option("--prompt", "prompts", multiple=True, help="A prompt (repeat for a batch, at most the plan's batch).")
@click.option("--prompts-file", type=click.Path(dir_okay=False),
              help="UTF-8 prompts, one per non-blank line (or a .json list of strings): one batch.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), help="New tokens per prompt (default: the plan's "
              "generation.max_new_tokens; prompt + new must fit the plan's context).")
@click.option("--chat-template/--no-chat-template", default=None,
              help="Wrap each prompt in the tokenizer's chat template (default: when it has one).")
@click.option("--ignore-eos", is_flag=True, help="Always generate --max-new-tokens (benchmarks).")
@click.option("--device", help="torch device: cpu, cuda, cuda:N (default: from the plan's device kind).")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for torch (default: torch's choice).")
@click.option("--json", "as_json", is_flag=True, help="Print {outputs, stats, memory} as JSON.")
@click.pass_context
@user_errors
def main(ctx, plan_path, prompts, prompts_file, max_new_tokens, chat_template, ignore_eos, device, threads, as_json):
    """Speculative decoding inside a plan's memory: generate for a batch of prompts, or `chat`
    (see `python -m engine chat --help`). Errors exit 1, Ctrl-C 130."""
    if ctx.invoked_subcommand is not None:
        return
    if not plan_path:
        raise click.UsageError("--plan is required (or use the `chat` command)")
    try:
        plan, ids, tokenizer, max_new = _prepare(plan_path, prompts, prompts_file, max_new_tokens, chat_template, device)
        engine = _engine(plan, device, threads, tokenizer)
        result = engine.generate(ids, max_new_tokens=max_new, ignore_eos=ignore_eos)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        ctx.exit(EXIT_INTERRUPTED)
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


def _merged(ctx, values: dict) -> dict:
    """Chat's options with the group's: an option given before `chat` counts as given to it; given
    on both sides with different values, or a run-only option given at all, is refused."""
    from click.core import ParameterSource

    parent = ctx.parent
    given = lambda c, name: c.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)  # noqa: E731
    for name, flag in RUN_ONLY.items():
        if given(parent, name):
            raise SpecMemoError(f"{flag} is an option of a single run, not of `chat`",
                                "type chat's messages on its input; drop " + flag)
    out = dict(values)
    for name, flag in SHARED.items():
        before, after = parent.params[name], values[name]
        if given(parent, name) and given(ctx, name):
            same = (os.path.realpath(before) == os.path.realpath(after)) if name == "plan_path" else before == after
            if not same:
                raise SpecMemoError(f"{flag} is given before `chat` as {before!r} and after it as {after!r}",
                                    f"give {flag} once")
        elif given(parent, name):
            out[name] = before
    return out


def _read_line(stream) -> str | None:
    """One typed line (None at end of input); bytes that are not UTF-8 are a SpecMemoError."""
    raw = stream.readline()
    if not raw:
        return None
    if isinstance(raw, str):
        return raw.rstrip("\n")
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise SpecMemoError(f"that line is not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start}; "
                            "it was ignored", "type UTF-8 text (check the terminal's encoding)") from None


def _show(reply, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({
            "text": reply.text, "token_ids": reply.token_ids, "stop_reason": reply.stop_reason,
            "prompt_tokens": reply.prompt_tokens, "reused_tokens": reply.reused_tokens,
            "dropped_turns": reply.dropped_turns, "stats": reply.stats.as_dict(),
        }))
        return
    note = f" [dropped {reply.dropped_turns} oldest turn(s) to fit the context]" if reply.dropped_turns else ""
    click.echo(f"assistant> {reply.text}{note}")
    st = reply.stats.as_dict()
    rate = f"{st['acceptance_rate']:.2f}" if st["acceptance_rate"] is not None else "n/a"
    click.echo(f"  ({len(reply.token_ids)} tokens, {st['tokens_per_s'] or 0:.1f} tok/s, acceptance {rate}, "
               f"reused {reply.reused_tokens}/{reply.prompt_tokens} prompt tokens)", err=True)


@main.command()
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False),
              help="Plan file (required here or before `chat`; not both with different values).")
@click.option("--system", help="System message kept at the head of the conversation (never dropped).")
@click.option("--on-overflow", type=click.Choice(OVERFLOW_POLICIES), default="refuse", show_default=True,
              help="When a turn would outgrow the plan's context: refuse it, or drop the oldest turns down to half "
                   "the context (the next turn then re-prefills what is left).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), help="Most new tokens per reply (default: the plan's).")
@click.option("--device", help="torch device: cpu, cuda, cuda:N (default: from the plan's device kind).")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for torch (default: torch's choice).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per reply on stdout.")
@click.pass_context
@user_errors
def chat(ctx, **options):
    """Interactive multi-turn chat; the KV of earlier turns is reused.

    Reads one UTF-8 message per line on stdin. Commands: /reset (forget the conversation), /stats,
    /exit (or end of input: exit 0). Ctrl-C during a reply cancels it and drops that turn (the
    conversation stays as before it); Ctrl-C at the prompt ends the session with exit 130. A
    refused or undecodable line prints one `Error:` line and the session goes on.
    """
    o = _merged(ctx, options)
    if not o["plan_path"]:
        raise click.UsageError("--plan is required")
    try:
        from specmemo_plan.plan import read_plan

        from .prompts import check_new_tokens, check_text

        if o["system"] is not None:
            check_text(o["system"], "--system")
        plan = read_plan(o["plan_path"])
        check_device(o["device"])
        check_new_tokens(plan.knobs, o["max_new_tokens"] or plan.generation.max_new_tokens)
        engine = _engine(plan, o["device"], o["threads"])
        # without a tokenizer the conversation is UTF-8 bytes, the system message too
        system_ids = engine.encode(o["system"], chat_template=False) if o["system"] and not engine.real_tokenizer else None
        session = ChatSession(engine, system=o["system"], on_overflow=o["on_overflow"],
                              max_new_tokens=o["max_new_tokens"], system_ids=system_ids)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        ctx.exit(EXIT_INTERRUPTED)
    _loop(ctx, engine, session, o["as_json"])


def _loop(ctx, engine, session, as_json: bool) -> None:
    try:
        while _turn(engine, session, as_json):
            pass
    except KeyboardInterrupt:  # at the prompt (no reply running): the end of the session
        click.echo("", err=True)
        ctx.exit(EXIT_INTERRUPTED)


def _turn(engine, session, as_json: bool) -> bool:
    """Read and answer one line; False at the end of the session."""
    stdin = getattr(sys.stdin, "buffer", sys.stdin)  # bytes: a line that is not UTF-8 cannot end the session
    if sys.stdin.isatty():
        click.echo("you> ", nl=False)
    try:
        line = _read_line(stdin)
    except SpecMemoError as exc:
        click.echo(f"Error: {exc}", err=True)
        return True
    command = line.strip() if line is not None else "/exit"
    if command in ("/exit", "/quit"):
        return False
    if command == "/reset":
        session.reset()
        click.echo("(conversation cleared)")
    elif command == "/stats":
        click.echo(render_stats(session.stats.as_dict()))
        click.echo(render_memory(engine.memory_report()))
    elif command:
        before = session.snapshot()
        try:
            if engine.real_tokenizer:
                reply = session.say(line)
            else:
                session.check_message(line)
                reply = session.say_ids(engine.encode(line, chat_template=False))
            _show(reply, as_json)
        except SpecMemoError as exc:
            click.echo(f"Error: {exc}", err=True)
        except KeyboardInterrupt:  # during the reply: cancel it, keep the session as before this turn
            session.restore(before)
            click.echo("(reply interrupted: that turn is dropped, the conversation is as before it)", err=True)
    return True


def run() -> None:
    from specmemo_plan.cli import printable_streams

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    printable_streams()
    main(prog_name="python -m engine")
