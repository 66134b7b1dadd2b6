"""How good is the tuned plan? Measured against an exhaustive grid of measured configurations.

In one process, on this machine:
1. tune: profile the pair (latency grid + acceptance on calibration prompts), fit, search; time it;
2. grid: run the engine on every (k, batch) of a grid on the same prompts; time it;
3. run the tuned plan on the same prompts (once with the context filled, for memory);
4. run the tuned plan and the best grid point again, alternating, `--rounds` times each: the best
   of a noisy grid is biased upwards (the winner's curse), so the ratio compares fresh runs.
Prints the tuned plan's measured decode tokens/s over the best grid point's (aim >= 0.95), the
tuning time over the grid's (aim <= 0.2), and predicted vs measured throughput and memory (errors
are measured relative to predicted, specmemo_plan.quantities.error_percent).

    .venv/bin/python bench/autotune_bench.py            # the bundled SmolLM2 pair
    .venv/bin/python bench/autotune_bench.py --target T --draft D --budget 2GiB --context 1024
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from engine.workflow import profile_pair, verify  # noqa: E402
from specmemo_plan.memory import Knobs  # noqa: E402
from specmemo_plan.models import load_shape  # noqa: E402
from specmemo_plan.plan import Generation, make_plan  # noqa: E402
from specmemo_plan.quantities import error_percent  # noqa: E402
from specmemo_plan.render import table  # noqa: E402
from specmemo_plan.render.workflow import measured_grid_table  # noqa: E402
from specmemo_plan.throughput import predict_speed  # noqa: E402
from specmemo_plan.tune import tune  # noqa: E402
from specmemo_plan.units import parse_bytes  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="bundled:smollm2-135m-instruct")
    ap.add_argument("--draft", default="bundled:smollm2-135m-draft")
    ap.add_argument("--budget", default="2GiB")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--k-max", type=int, default=6)
    ap.add_argument("--batches", default="1,2,4")
    ap.add_argument("--prompts", type=int, default=8, help="calibration prompts per measured run")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=4, help="side-by-side runs of the tuned plan and the best grid point")
    ap.add_argument("--json", dest="json_path", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    budget = parse_bytes(args.budget)

    from engine.loading import load_model

    t0 = time.perf_counter()
    # the latency grid spans the batches tune may pick (up to the largest measured one), no more
    measured = profile_pair(args.target, args.draft, dtype="fp32", k_max=args.k_max, num_prompts=16,
                            max_context=args.context, max_batch=max(batches))
    plan, _ = tune(measured, budget, args.context, max_new_tokens=args.new_tokens, k_max=args.k_max,
                   max_batch=max(batches))
    tune_s = time.perf_counter() - t0

    target = load_model(args.target, "fp32")
    draft = load_model(args.draft, "fp32", seed=1)
    t_shape, d_shape = load_shape(args.target), load_shape(args.draft)
    latency = measured.latency()

    def run(knobs: Knobs, worst_case: bool = False) -> dict:
        use_draft = knobs.draft_length > 0
        p = make_plan(args.target, t_shape, args.draft if use_draft else None, d_shape if use_draft else None,
                      knobs, plan.device, budget, generation=Generation(max_new_tokens=args.new_tokens))
        report = verify(p, None, num_prompts=args.prompts, max_new_tokens=args.new_tokens, compare_plain=False,
                        models=(target, draft if use_draft else None), worst_case=worst_case)
        stats = report.engine.stats
        kwargs = {"histogram": measured.acceptance_histogram} if use_draft else {}
        predicted = predict_speed(t_shape, d_shape if use_draft else None, knobs, latency,
                                  context=int(stats.mean_context), new_tokens=stats.max_new, **kwargs).tokens_per_s
        return {"k": knobs.draft_length, "batch": knobs.batch_size, "measured": stats.decode_tokens_per_s,
                "predicted": predicted, "error_percent": error_percent(stats.decode_tokens_per_s, predicted),
                "acceptance": stats.acceptance_rate, "memory": report.engine.memory,
                "worst_case": asdict(report.worst_case) if report.worst_case else None}

    base = Knobs(batch_size=1, max_context=args.context, weight_dtype="fp32", prefill_chunk=plan.knobs.prefill_chunk)
    t1 = time.perf_counter()
    grid = [run(replace(base, draft_length=k, batch_size=b)) for k in range(0, args.k_max + 1) for b in batches]
    grid_s = time.perf_counter() - t1
    tuned = run(plan.knobs, worst_case=True)
    best = max(grid, key=lambda r: r["measured"])
    best_knobs = replace(base, draft_length=best["k"], batch_size=best["batch"])
    side = {"tuned": [], "best": []}
    for _ in range(args.rounds):
        side["tuned"].append(run(plan.knobs)["measured"])
        side["best"].append(run(best_knobs)["measured"])
    tuned_tps, best_tps = (sum(v) / len(v) for v in (side["tuned"], side["best"]))

    print(measured_grid_table(grid))
    mem = tuned["memory"]
    summary = [
        ["tuned plan", f"k={plan.knobs.draft_length}, batch {plan.knobs.batch_size}, chunk {plan.knobs.chunk}"],
        ["best grid point", f"k={best['k']}, batch {best['batch']}: {best['measured']:.1f} tok/s in the grid"],
        [f"tuned / best, side by side ({args.rounds} rounds)", f"{tuned_tps:.1f} / {best_tps:.1f} = {tuned_tps / best_tps:.3f}"],
        ["tuning time / grid time", f"{tune_s:.0f} s / {grid_s:.0f} s = {tune_s / grid_s:.3f}"],
        ["tuned: predicted vs measured tok/s", f"{tuned['predicted']:.1f} vs {tuned_tps:.1f} "
         f"({error_percent(tuned_tps, tuned['predicted']):+.1f}%)"],
        ["tuned: memory error, static parts", f"{tuned['memory']['measured']['error_percent']['target_kv']:+.1f}% KV, "
         f"{mem['measured']['error_percent']['candidate_buffers'] if mem['measured']['error_percent']['candidate_buffers'] is not None else 0:+.1f}% buffers"],
        ["tuned: memory error, total", f"{mem['measured']['total_error_percent']:+.1f}% (activations measured as peak RSS growth)"],
    ]
    w = tuned["worst_case"]
    if w and w["measured_activation_bytes"] is not None:
        summary.append(["tuned: activations, context filled",
                        f"predicted {w['predicted_activation_bytes'] / 2**20:.1f} MiB, measured "
                        f"{w['measured_activation_bytes'] / 2**20:.1f} MiB ({w['error_percent']:+.1f}%)"])
    print(table(summary, ["", ""]))
    if args.json_path:
        with open(args.json_path, "w") as fh:
            json.dump({"grid": grid, "tuned": tuned, "side_by_side": side, "tune_seconds": tune_s, "grid_seconds": grid_s,
                       "plan": plan.to_dict()}, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
