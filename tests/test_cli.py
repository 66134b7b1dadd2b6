import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from specmemo_plan.cli import cli
from specmemo_plan.plan import read_plan

PAIR = ["--target", "llama-2-7b-chat", "--draft", "llama-68m"]


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_estimate_json_has_integer_components():
    result = run("estimate", *PAIR, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data["components"]) == {
        "target_weights", "draft_weights", "target_kv", "draft_kv", "candidate_buffers", "activations", "runtime_overhead",
    }
    assert all(isinstance(v, int) for v in data["components"].values())
    assert data["total_bytes"] == sum(data["components"].values())
    assert data["components"]["target_kv"] == 524_288 * (4096 + 4)
    assert data["generation_bytes"] == data["total_bytes"] - 6_738_415_616 * 2 - 68_030_208 * 2


def test_estimate_table_and_presets():
    assert "target_weights" in run("estimate", *PAIR).output
    presets = json.loads(run("presets", "--json").stdout)["presets"]
    assert len(presets) >= 12


def test_calculator_does_not_import_torch():
    code = (
        "import sys\n"
        "from specmemo_plan.cli import cli\n"
        "try:\n"
        "    cli(['estimate', '--target', 'llama-2-7b-chat', '--draft', 'llama-68m', '--json'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('HEAVY', [m for m in ('torch', 'transformers') if m in sys.modules], file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stderr


def test_min_budget_and_fit():
    data = json.loads(run("min-budget", *PAIR, "--profile", "titan-rtx", "--json").stdout)
    assert data["draft_length"] >= 1 and data["predicted_speedup"] > 1
    assert data["min_budget_bytes"] == data["memory"]["total_bytes"]
    fit = json.loads(run("fit", *PAIR, "--budget", "24GiB", "--json").stdout)
    assert fit["budget_bytes"] == 24 * 2**30 and fit["fits"] and fit["largest_batch"] >= 1


def test_plan_writes_a_readable_file(tmp_path):
    out = tmp_path / "plan.json"
    result = run("plan", *PAIR, "--profile", "titan-rtx", "--budget", "24GB", "-k", "3", "-o", str(out))
    assert result.exit_code == 0, result.output
    plan = read_plan(out)
    assert plan.knobs.draft_length == 3 and plan.budget_bytes == 24 * 10**9
    assert plan.device.profile == "titan-rtx"
    assert plan.prediction.speedup > 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["estimate", "--target", "lama-2-7b"], "close names"),
        (["estimate", "--target", "llama-2-7b-chat", "--batch", "0"], "must be positive"),
        (["estimate", "--target", "llama-2-7b-chat", "--context", "-3"], "must be positive"),
        (["estimate", *PAIR, "-k", "0"], "draft_length is 0"),
        (["estimate", "--target", "llama-3.1-8b-instruct", "--draft", "llama-68m"], "tokenizer"),
        (["estimate", "--target", "llama-2-7b-chat", "--context", "9000"], "exceeds the target's 4096"),
        (["fit", *PAIR, "--budget", "10GiB"], "below the weights alone"),
        (["fit", *PAIR, "--budget", "lots"], "cannot read budget"),
        (["fit", *PAIR, "--budget", "-5GB"], "budget"),
        (["min-budget", "--target", "llama-2-7b-chat"], "needs --draft"),
        (["plan", *PAIR, "--profile", "titan-rtx", "--budget", "14GiB", "-o", "x.json"], "over the budget"),
        (["estimate", *PAIR, "--profile", "titan-rtxx"], "close names"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_bad_config_file_and_gguf(tmp_path):
    (tmp_path / "cfg.json").write_text("{oops")
    (tmp_path / "m.gguf").write_bytes(b"\x00" * 64)
    for path in ("cfg.json", "m.gguf"):
        result = run("estimate", "--target", str(tmp_path / path))
        assert result.exit_code != 0 and "Traceback" not in result.output
        assert str(tmp_path / path) in result.output


def test_plan_never_half_written(tmp_path):
    out = tmp_path / "plan.json"
    result = run("plan", *PAIR, "--profile", "titan-rtx", "--budget", "14GiB", "-o", str(out))
    assert result.exit_code != 0
    assert not out.exists() and list(tmp_path.iterdir()) == []
