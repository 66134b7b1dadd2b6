"""What a verify pass costs on this device: t(1 sequence, n new tokens) / t(one decode step).

Speculative decoding pays only where the accepted tokens per step exceed this ratio plus the
draft's cost. Measured with the engine's own forward (static cache, logits at every verified
position), medians of repeated runs, for each dtype.

    .venv/bin/python bench/verify_cost.py                       # SmolLM2-135M-Instruct, fp32 and bf16
    .venv/bin/python bench/verify_cost.py --model bundled:smollm2-135m-draft --dtypes fp32
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from engine.loading import load_model  # noqa: E402
from engine.profiling import time_forward, verify_cost_ratios  # noqa: E402
from specmemo_plan.render import table  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bundled:smollm2-135m-instruct")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--context", type=int, default=256, help="cached tokens before the verified ones")
    args = ap.parse_args()
    rows, header = [], ["dtype", "decode ms"] + [f"n={n}" for n in range(1, args.max_tokens + 1)]
    for dtype in args.dtypes.split(","):
        model = load_model(args.model, dtype)
        one = time_forward(model, dtype, 1, 1, args.context, repeats=9)
        ratios = verify_cost_ratios(model, dtype, args.max_tokens, args.context)
        rows.append([dtype, f"{one:.1f}"] + [f"{ratios[n]:.2f}x" for n in range(1, args.max_tokens + 1)])
    print(f"{args.model}: verify of n new tokens / one decode step (batch 1, {args.context} cached tokens)")
    print(table(rows, header))


if __name__ == "__main__":
    main()
