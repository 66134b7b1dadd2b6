"""bench/autotune_bench.py must not rot: tune, grid, tuned and side-by-side runs on the tiny pair."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))

import autotune_bench  # noqa: E402


def test_autotune_bench_runs_on_a_tiny_pair(tiny_pair, tmp_path, capsys):
    target, draft = tiny_pair
    out = tmp_path / "bench.json"
    autotune_bench.main(["--target", target, "--draft", draft, "--budget", "64MiB", "--context", "128", "--k-max", "2",
                         "--batches", "1,2", "--prompts", "2", "--new-tokens", "8", "--rounds", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    assert [(r["k"], r["batch"]) for r in result["grid"]] == [(k, b) for k in range(3) for b in (1, 2)]
    assert all(r["measured"] > 0 and r["predicted"] > 0 for r in result["grid"])
    assert len(result["side_by_side"]["tuned"]) == len(result["side_by_side"]["best"]) == 1
    assert result["tune_seconds"] > 0 and result["grid_seconds"] > 0
    assert "tuned / best, side by side" in capsys.readouterr().out
