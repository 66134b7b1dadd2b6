"""bench/engine_bench.py must not rot: its whole path on the tiny random pair, a few tokens."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))

import engine_bench  # noqa: E402


def test_engine_bench_runs_on_a_tiny_pair(tiny_pair, tmp_path):
    target, draft = tiny_pair
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello there\nwhat is speculative decoding\n")
    args = engine_bench.build_parser().parse_args(
        ["--target", target, "--draft", draft, "-k", "3", "--prompts-file", str(prompts), "--num-prompts", "2",
         "--max-new-tokens", "6", "--repeats", "1", "--threads", "1"])
    report = engine_bench.run(args)
    assert set(report["methods"]) == {"engine (speculative)", "engine (plain, k=0)", "transformers generate (plain)",
                                      "transformers generate (assisted)"}
    # greedy: every method returns the target's own tokens
    assert all(report["identical_to_plain_greedy"].values())
    for r in report["methods"].values():
        assert r["tokens"] == 12 and r["tokens_per_s"] > 0 and r["peak_generation_bytes"] > 0
    assert 0 <= report["acceptance_rate"] <= 1
    assert "engine vs assisted" in engine_bench.render(report)
