"""bench/gpu_validate.py must not rot: its --dry-run runs the whole path on CPU with small shapes."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))

import gpu_validate  # noqa: E402


def test_dry_run(tmp_path, capsys):
    out = tmp_path / "dry.json"
    assert gpu_validate.main(["--dry-run", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["dry_run"] and len(data["rows"]) == 4 and not data["skipped"]
    for row in data["rows"]:
        assert "error" not in row, row
        assert row["static_error_percent"] == 0  # the engine allocates what the plan predicts, to the byte
        assert row["stats"]["steps"] >= 1 and row["measured_tokens_per_s"] > 0
        assert set(row["latency_ms"]) == {"target_decode", "target_verify", "draft_decode"}
    assert "configuration" in capsys.readouterr().out
