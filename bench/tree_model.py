"""How well the planner's tree model predicts the engine's tokens per step (drafting/trees.py).

    .venv/bin/python bench/tree_model.py [--target REF] [--head REF] [--depth 6] [--num-prompts 8]
        [--max-new-tokens 48] [--dtype bf16] [--threads N] [--trees 2,2,4 3,2,6 ...] [--json]

For each method the engine grows trees for (the EAGLE head, n-gram lookup): one chain run at --depth gives
the acceptance histogram and the depth-1 rank histogram, as `specmemo-plan profile` measures them; then
every tree (depth, top-k, T) runs on the same prompts, batch 1, greedy, and its measured tokens per step
(the engine's Stats: accepted drafts + the bonus token, per step) stands beside two predictions from that
chain run alone (trees.expected_tokens over trees.per_depth_from_histogram): with the geometric ranks (the
r-th ranked child right with a_j (1 - a_j)^(r - 1)), and with the measured siblings (a_j * s_r,
trees.sibling_shares), which tune uses where the profile has them. Chains at each depth are the model's
own case (top-k 1) and show the histogram's fit. Tokens per step do not depend on the machine's speed.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from engine_bench import bench_main, bench_parser, bench_prompts, log  # noqa: E402

from engine.loading import load_model, load_tokenizer  # noqa: E402
from engine.results import Stats  # noqa: E402
from engine.runtime import Engine  # noqa: E402
from specmemo_plan.drafting import trees  # noqa: E402
from specmemo_plan.drafting.heads import head_shape  # noqa: E402
from specmemo_plan.hardware import this_device  # noqa: E402
from specmemo_plan.memory import Knobs  # noqa: E402
from specmemo_plan.plan import Generation, make_plan  # noqa: E402

DEFAULT_TARGET = "bundled:smollm2-135m-instruct"
HEAD = "bundled:smollm2-135m-eagle"
DEFAULT_TREES = ("2,2,3", "2,2,4", "3,2,6", "4,2,8", "3,4,8", "4,4,12", "5,2,10", "6,2,12")


def run_shape(args, target, tokenizer, prompts, method: str, tree: trees.TreeShape, ranks: bool = False) -> Stats:
    """One engine run of `method` drafting `tree` over every prompt (batch 1), its Stats merged."""
    spec = this_device(torch_device="cpu", use_torch=True).spec
    context = max(len(p) for p in prompts) + args.max_new_tokens
    base = Knobs(batch_size=1, max_context=context, draft_length=1, weight_dtype=args.dtype, draft_method=method)
    head = head_shape("eagle", args.head, target.shape) if method == "eagle" else None
    plan = make_plan(args.target, target.shape, args.head if head else None, head, base.with_tree(tree), spec,
                     spec.total_memory_bytes, generation=Generation(max_new_tokens=args.max_new_tokens))
    engine = Engine(plan, target=target, tokenizer=tokenizer)
    engine.measure_ranks = ranks
    stats = Stats(tree.tokens)
    for ids in prompts:
        result = engine.generate([ids], max_new_tokens=args.max_new_tokens)
        stats.merge(result.stats)
    return stats


def measured_tokens_per_step(stats: Stats) -> float:
    """Accepted drafts + 1 per row-step, from the engine's own histogram (index = drafts accepted)."""
    steps = sum(stats.accepted_histogram)
    return sum(i * n for i, n in enumerate(stats.accepted_histogram)) / steps + 1.0


def run(args) -> dict:
    target = load_model(args.target, args.dtype, torch.device("cpu"))
    tokenizer = load_tokenizer(args.target)
    prompts = bench_prompts(tokenizer, args.num_prompts, None)
    shapes = [trees.TreeShape(*(int(x) for x in t.split(","))) for t in args.trees]
    out = {}
    for method in ("eagle", "ngram"):
        log(f"{method}: chain at depth {args.depth}")
        chain = run_shape(args, target, tokenizer, prompts, method, trees.TreeShape(args.depth, 1, args.depth), True)
        histogram, ranks = chain.accepted_histogram, chain.rank_histogram
        siblings = trees.sibling_shares(ranks) if ranks[1] else None  # no draft accepted: no shares
        rows = []
        tries = [trees.TreeShape(d, 1, d) for d in range(1, args.depth + 1)]
        tries += [t for t in shapes if t.depth <= args.depth and trees.runtime_runs(method, t)]
        for tree in tries:
            log(f"{method}: {tree.label}")
            measured = chain if tree.depth == args.depth and tree.is_chain else \
                run_shape(args, target, tokenizer, prompts, method, tree)
            per_depth = trees.per_depth_from_histogram(histogram, tree.depth)
            geometric = trees.expected_tokens(tree, per_depth)
            ranked = trees.expected_tokens(tree, per_depth, None if tree.is_chain else siblings)
            got = measured_tokens_per_step(measured)
            rows.append({"shape": tree.as_dict(), "label": tree.label, "geometric_tokens_per_step": geometric,
                         "sibling_tokens_per_step": ranked, "measured_tokens_per_step": got,
                         "geometric_error_percent": (geometric - got) / got * 100,
                         "sibling_error_percent": (ranked - got) / got * 100, "steps": sum(measured.accepted_histogram)})
        out[method] = {"histogram": histogram, "rank_histogram": chain.rank_histogram, "rows": rows}
    return {"target": args.target, "head": args.head, "dtype": args.dtype, "prompts": len(prompts),
            "max_new_tokens": args.max_new_tokens, "depth": args.depth, "methods": out}


def render(report: dict) -> str:
    lines = [f"{report['target']} ({report['dtype']}), head {report['head']}; {report['prompts']} prompts x "
             f"{report['max_new_tokens']} new tokens, batch 1, greedy; the model reads the chain histogram at depth "
             f"{report['depth']}", ""]
    for method, data in report["methods"].items():
        lines += [f"{method}: chain histogram (steps accepting 0..{report['depth']} drafts) {data['histogram']}, "
                  f"depth-1 ranks (none, 1..{len(data['rank_histogram']) - 1}) {data['rank_histogram']}", "",
                  "| draft | measured tokens/step | geometric ranks | error | measured siblings | error | steps |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['label']} | {r['measured_tokens_per_step']:.3f} | {r['geometric_tokens_per_step']:.3f} "
                  f"| {r['geometric_error_percent']:+.1f}% | {r['sibling_tokens_per_step']:.3f} "
                  f"| {r['sibling_error_percent']:+.1f}% | {r['steps']} |" for r in data["rows"]]
        lines.append("")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = bench_parser(__doc__)
    ap.add_argument("--target", default=DEFAULT_TARGET)
    ap.add_argument("--head", default=HEAD, help=f"the EAGLE head (default {HEAD})")
    ap.add_argument("--depth", type=int, default=6, help="the chain whose histogram the model reads")
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--dtype", default="bf16", choices=("fp32", "fp16", "bf16"))
    ap.add_argument("--trees", nargs="+", default=list(DEFAULT_TREES), help="depth,top-k,T of each tree")
    return ap


def main(argv=None) -> None:
    bench_main(build_parser(), run, render, argv)


if __name__ == "__main__":
    main()
