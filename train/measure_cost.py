"""Cost of one draft decode step relative to the target's (batch 1, KV cache, fp32 both).

    .venv/bin/python train/measure_cost.py --threads 2 --rounds 5

Each round times `--repeats` decode steps of each model after a 64-token prefill and takes the
median; rounds alternate between the models so that a slowdown from other processes hits both.
Prints the median per-round times and the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from distill_draft import decode_step_ms  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=60)
    ap.add_argument("--draft", default="bundled:smollm2-135m-draft")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from engine.loading import load_model

    target = load_model("bundled:smollm2-135m-instruct", dtype="fp32").model
    draft = load_model(args.draft, dtype="fp32").model
    t_ms, d_ms = [], []
    for _ in range(args.rounds):
        t_ms.append(decode_step_ms(target, args.repeats))
        d_ms.append(decode_step_ms(draft, args.repeats))
    ratios = [d / t for d, t in zip(d_ms, t_ms)]
    print(f"threads {args.threads}: target {statistics.median(t_ms):.2f} ms, draft {statistics.median(d_ms):.2f} ms, "
          f"ratio {statistics.median(ratios):.3f} (per round: {', '.join(f'{r:.3f}' for r in ratios)})")


if __name__ == "__main__":
    main()
