"""Every drafting method on the same prompts, one process, interleaved, batch 1, greedy.

    .venv/bin/python bench/methods_bench.py [--target REF] [-k 3] [--num-prompts 8]
        [--max-new-tokens 64] [--dtype fp32|bf16] [--threads N] [--repeats 3] [--prompts-file F] [--json]

Rows (each a generate call per prompt; rows run interleaved prompt by prompt, order rotated; the
median over --repeats passes of each row's tokens/s):
- engine plain (k = 0), engine + draft model (bundled:smollm2-135m-draft), engine + EAGLE head chain
  (bundled:smollm2-135m-eagle), the same head's tree (--tree depth,top-k,T), engine + n-gram chain (prompt
  lookup), chains at k;
- transformers generate: plain greedy; assisted with the draft model (num_assistant_tokens = k,
  constant schedule, no confidence stop: always k drafts, as the engine); prompt lookup
  (prompt_lookup_num_tokens = k, its default max_matching_ngram_size 2).
Per row: tokens/s, speedup over the engine's plain and over transformers' plain, mean accepted tokens
per step (the engine's Stats; transformers does not report it), peak generation memory (bench/engine_bench.py
Measure: peak RSS during the call minus RSS before, plus the engine's preallocated caches and buffers),
and whether its tokens equal transformers' plain greedy output.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from engine_bench import Measure, bench_main, bench_parser, bench_prompts, constant_assistant, log, pad_token  # noqa: E402

from engine.loading import load_model, load_tokenizer  # noqa: E402
from engine.results import Stats  # noqa: E402
from engine.runtime import Engine  # noqa: E402
from specmemo_plan.drafting.heads import head_shape  # noqa: E402
from specmemo_plan.hardware import this_device  # noqa: E402
from specmemo_plan.memory import Knobs  # noqa: E402
from specmemo_plan.plan import Generation, make_plan  # noqa: E402

DEFAULT_TARGET = "bundled:smollm2-135m-instruct"
DRAFT = "bundled:smollm2-135m-draft"
HEAD = "bundled:smollm2-135m-eagle"


def engines(args, target, draft, tokenizer, spec, context: int) -> dict:
    """name -> Engine, all over the same loaded target; the whole device as the budget (measured, not capped)."""
    base = Knobs(batch_size=1, max_context=context, draft_length=0, weight_dtype=args.dtype)
    gen = Generation(max_new_tokens=args.max_new_tokens)
    budget = spec.total_memory_bytes

    def plan(draft_ref, d_shape, **knobs):
        return make_plan(args.target, target.shape, draft_ref, d_shape, replace(base, **knobs), spec, budget,
                         generation=gen)

    out = {"engine plain": Engine(plan(None, None), target=target, tokenizer=tokenizer)}
    out["engine + draft model"] = Engine(plan(DRAFT, draft.shape, draft_length=args.k), target=target, draft=draft,
                                         tokenizer=tokenizer)
    h_shape = head_shape("eagle", args.head, target.shape)
    out["engine + EAGLE head"] = Engine(plan(args.head, h_shape, draft_length=args.k, draft_method="eagle"),
                                        target=target, tokenizer=tokenizer)
    depth, topk, tokens = args.tree
    out[f"engine + EAGLE tree (d{depth} k{topk} T{tokens})"] = Engine(
        plan(args.head, h_shape, draft_length=tokens, draft_method="eagle", tree_depth=depth, tree_topk=topk),
        target=target, tokenizer=tokenizer)
    out["engine + n-gram"] = Engine(plan(None, None, draft_length=args.k, draft_method="ngram"), target=target,
                                    tokenizer=tokenizer)
    return out


def run(args) -> dict:
    device = torch.device("cpu")
    target = load_model(args.target, args.dtype, device)
    draft = load_model(DRAFT, args.dtype, device)
    tokenizer = load_tokenizer(args.target)
    prompts = bench_prompts(tokenizer, args.num_prompts, args.prompts_file)
    k, max_new = args.k, args.max_new_tokens
    pad = pad_token(target.model)
    spec = this_device(torch_device="cpu", use_torch=True).spec
    ours = engines(args, target, draft, tokenizer, spec, max(len(p) for p in prompts) + max_new)
    stats = {name: Stats(e.k) for name, e in ours.items()}
    static = {name: sum(v for c, v in e.static_bytes().items() if not c.endswith("weights")) for name, e in ours.items()}

    def engine_call(name):
        def call(ids):
            result = ours[name].generate([ids], max_new_tokens=max_new)
            stats[name].merge(result.stats)
            return result.outputs[0].token_ids
        return call

    constant_assistant(draft.model, k)

    def hf(**extra):
        def call(ids):
            with torch.inference_mode():
                out = target.model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=max_new,
                                            pad_token_id=pad, **extra)
            return out[0, len(ids):].tolist()
        return call

    methods = {name: engine_call(name) for name in ours}
    methods["transformers plain"] = hf()
    methods["transformers assisted (draft model)"] = hf(assistant_model=draft.model)
    methods["transformers prompt lookup"] = hf(prompt_lookup_num_tokens=k)
    names = list(methods)
    log("warming up")
    for fn in methods.values():
        fn(prompts[0][:16])
    for s in stats.values():
        s.__init__(s.draft_length)
    rates = {n: [] for n in names}
    peaks = dict.fromkeys(names, 0)
    outputs = {n: [] for n in names}
    for rep in range(args.repeats):
        log(f"repeat {rep + 1}/{args.repeats}")
        seconds, tokens = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0)
        for i, prompt in enumerate(prompts):
            for name in names[i % len(names):] + names[: i % len(names)]:
                with Measure(device) as m:
                    out = methods[name](prompt)
                seconds[name] += m.seconds
                tokens[name] += len(out)
                peaks[name] = max(peaks[name], m.peak + static.get(name, 0))
                if rep == 0:
                    outputs[name].append(out)
        for name in names:
            rates[name].append(tokens[name] / seconds[name])
    ref = outputs["transformers plain"]
    rows = {}
    for name in names:
        tps = statistics.median(rates[name])
        st = stats.get(name)
        rows[name] = {"tokens_per_s": tps, "runs": rates[name], "peak_generation_bytes": peaks[name],
                      "tokens_per_step": st.tokens_per_step if st is not None and st.draft_length else None,
                      "identical_to_plain_greedy": outputs[name] == ref}
    for row in rows.values():
        row["vs_engine_plain"] = row["tokens_per_s"] / rows["engine plain"]["tokens_per_s"]
        row["vs_transformers_plain"] = row["tokens_per_s"] / rows["transformers plain"]["tokens_per_s"]
        row["vs_assisted"] = row["tokens_per_s"] / rows["transformers assisted (draft model)"]["tokens_per_s"]
    return {"target": args.target, "draft": DRAFT, "head": args.head, "k": k, "dtype": args.dtype,
            "threads": torch.get_num_threads(), "prompts": len(prompts), "max_new_tokens": max_new,
            "repeats": args.repeats, "methods": rows}


def render(report: dict) -> str:
    from specmemo_plan.units import format_bytes

    head = (f"{report['target']}, k={report['k']}, {report['dtype']}, {report['threads']} threads, {report['prompts']} "
            f"prompts x {report['max_new_tokens']} new tokens, batch 1, greedy, median of {report['repeats']} passes")
    lines = [head, "", "| method | tokens/s | vs engine plain | vs transformers plain | vs assisted | tokens/step "
             "| peak generation memory | = plain greedy |", "|---|---:|---:|---:|---:|---:|---:|:---:|"]
    for name, r in report["methods"].items():
        tps = f"{r['tokens_per_step']:.2f}" if r["tokens_per_step"] else "-"
        lines.append(f"| {name} | {r['tokens_per_s']:.1f} | {r['vs_engine_plain']:.2f}x | {r['vs_transformers_plain']:.2f}x "
                     f"| {r['vs_assisted']:.2f}x | {tps} | {format_bytes(r['peak_generation_bytes'])} "
                     f"| {'yes' if r['identical_to_plain_greedy'] else 'no'} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = bench_parser(__doc__)
    ap.add_argument("--target", default=DEFAULT_TARGET)
    ap.add_argument("-k", "--draft-length", dest="k", type=int, default=3)
    ap.add_argument("--head", default=HEAD, help=f"the EAGLE head (default {HEAD})")
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--prompts-file", help="one prompt per line instead of the calibration prompts")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per method, median kept")
    ap.add_argument("--tree", type=lambda v: tuple(int(x) for x in v.split(",")), default=(3, 2, 6),
                    help="the EAGLE tree's depth,top-k,tokens (default 3,2,6)")
    return ap


def main(argv=None) -> None:
    bench_main(build_parser(), run, render, argv)


if __name__ == "__main__":
    main()
