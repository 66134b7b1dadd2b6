"""`--engine` on min-budget, compare and plan: the engines' own accounting (specmemo_plan/engines) decides
whether a plan starts; numbers checked against engines.engine_memory directly."""

import json
from dataclasses import replace

from click.testing import CliRunner

from specmemo_plan.cli import cli
from specmemo_plan.engine_budget import min_device_memory, refusal
from specmemo_plan.engines import EngineOptions, engine_fits, engine_memory, startup_log
from specmemo_plan.engines.base import MIB
from specmemo_plan.hardware import load_profile
from specmemo_plan.memory import Knobs
from specmemo_plan.models import load_shape

PAIR = ("-t", "llama-2-7b-chat", "-d", "llama-68m")
TARGET, DRAFT = load_shape("llama-2-7b-chat"), load_shape("llama-68m")


def run(*args):
    return CliRunner().invoke(cli, list(args))


def min_budget_json(*args):
    result = run("min-budget", *PAIR, "-c", "4096", "-b", "2", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_min_budget_vllm_is_the_smallest_whole_mib_that_starts():
    data = min_budget_json("--engine", "vllm")
    found = data["engine_min_budget"]
    total = found["min_device_memory_bytes"]
    knobs = Knobs(batch_size=2, max_context=4096, draft_length=data["draft_length"])
    at = engine_memory("vllm", TARGET, DRAFT, knobs, EngineOptions(), device_total_bytes=total)
    below = engine_memory("vllm", TARGET, DRAFT, knobs, EngineOptions(), device_total_bytes=total - MIB)
    assert total % MIB == 0 and total == 20_281_556_992
    assert engine_fits(at, knobs) is None and at.total_bytes <= total
    assert engine_fits(below, knobs) == found["one_step_less"] != ""
    assert found["engine_budget_bytes"] == at.budget_bytes == int(total * 0.9)
    assert found["engine_memory"]["kv_cache_tokens"] == at.kv_cache_tokens == 8192
    assert found["step_bytes"] == MIB and "whole MiB" in found["bisected"]
    # the project's own answer is unchanged beside it
    assert data["min_budget_bytes"] == min_budget_json()["min_budget_bytes"]


def test_min_budget_sglang_one_mib_less_does_not_start():
    data = min_budget_json("--engine", "sglang")
    total = data["engine_min_budget"]["min_device_memory_bytes"]
    knobs = Knobs(batch_size=2, max_context=4096, draft_length=data["draft_length"])
    assert refusal("sglang", TARGET, DRAFT, knobs, EngineOptions(), total)[1] is None
    assert refusal("sglang", TARGET, DRAFT, knobs, EngineOptions(), total - MIB)[1] is not None


def test_min_budget_cuts_where_vllm_changes_its_defaults():
    from specmemo_plan.engine_budget import _pieces, size_defaults

    # 70 GiB and more (not an A100): vLLM's batch defaults grow to 8192 tokens / 1024 sequences, so starting is
    # monotone in the total only on each side: the range is cut there, and the lowest piece is searched first
    options = EngineOptions(device_name="NVIDIA H100")
    pieces = _pieces(lambda mib: size_defaults("vllm", mib * MIB, options, 1), 1000, 2**20)
    assert pieces == [(1000, 70 * 1024 - 1), (70 * 1024, 2**20)]
    assert _pieces(lambda mib: size_defaults("vllm", mib * MIB, EngineOptions(device_name="A100"), 1),
                   1000, 2**20) == [(1000, 2**20)]
    sglang = _pieces(lambda mib: size_defaults("sglang", mib * MIB, options, 1), 1000, 2**20)
    # the bucket changes at 60 GiB, the 10 GiB reserve floor only above it: exactly 60 GiB is a piece of its own
    assert [b for _, b in sglang[:-1]] == [20 * 1024 - 1, 35 * 1024 - 1, 60 * 1024 - 1, 60 * 1024, 160 * 1024 - 1]
    knobs = Knobs(batch_size=2, max_context=4096, draft_length=1)
    found = min_device_memory("vllm", TARGET, DRAFT, knobs, options)
    assert found.device_total_bytes == 20_281_556_992 and found.memory.settings["--max-num-seqs"] == 256


def test_min_budget_llamacpp_is_its_peak_to_the_byte():
    data = min_budget_json("--engine", "llama.cpp")
    found = data["engine_min_budget"]
    knobs = Knobs(batch_size=2, max_context=4096, draft_length=data["draft_length"])
    peak = engine_memory("llama.cpp", TARGET, DRAFT, knobs, EngineOptions()).total_bytes
    assert found["min_device_memory_bytes"] == peak and found["step_bytes"] == 1
    assert found["engine_budget_bytes"] is None
    assert found["one_step_less"].startswith("cudaMalloc failed: out of memory")


def test_min_budget_engine_errors_are_one_line():
    cases = [(("--engine", "transformers"), "assisted generate is only supported for batch_size = 1"),
             (("--engine", "vllm", "--devices", "2", "-p", "rtx-4090"),
              "--engine vllm models one GPU per tensor-parallel rank, not --devices 2"),
             (("--engine", "vllm", "--draft-method", "all"), "--engine vllm takes one draft method"),
             (("--engine", "vllm", "--gpu-memory-utilization", "1"), "does not start this plan on any GPU up to")]
    for args, message in cases:
        result = run("min-budget", *PAIR, "-c", "4096", "-b", "2", *args)
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output
        assert len([line for line in result.output.splitlines() if line.startswith("Error:")]) == 1


def test_compare_engine_adds_whether_it_starts():
    result = run("compare", *PAIR, "-c", "4096", "-b", "4", "--profiles", "rtx-4090,rtx-4060-laptop",
                 "--engine", "vllm", "--json")
    assert result.exit_code == 0, result.output
    rows = {d["profile"]: d for d in json.loads(result.stdout)["devices"]}
    for key, row in rows.items():
        profile = load_profile(key)
        knobs = Knobs(batch_size=row["best_batch"] or 4, max_context=4096, draft_length=row["best_draft_length"] or 1)
        options = EngineOptions(cuda_context_bytes=profile.runtime_overhead_bytes, device_name=profile.name)
        expected = engine_memory("vllm", TARGET, DRAFT, knobs, options, device_total_bytes=profile.memory_bytes)
        assert row["engine_kv_cache_tokens"] == expected.kv_cache_tokens
        assert row["engine_max_concurrency"] == expected.max_concurrency
        assert row["engine_starts"] is (engine_fits(expected, knobs) is None)
    assert rows["rtx-4090"]["engine_starts"] is True and rows["rtx-4090"]["engine_kv_cache_tokens"] == 17_472
    assert rows["rtx-4060-laptop"]["engine_starts"] is False
    assert rows["rtx-4060-laptop"]["engine_refusal"].startswith("No available memory for the cache blocks")
    plain = json.loads(run("compare", *PAIR, "-c", "4096", "--profiles", "rtx-4090", "--json").stdout)
    assert not any(k.startswith("engine") for k in plain["devices"][0])  # without --engine: as before


def test_plan_engine_records_what_export_prints(tmp_path):
    from specmemo_plan.export import export_plan
    from specmemo_plan.export.startup import engine_options_for
    from specmemo_plan.plan import read_plan

    for engine, line in (("vllm", "GPU KV cache size: 16,208 tokens"), ("llama.cpp", "KV self size = 4096.00 MiB")):
        out = tmp_path / f"{engine}.json"
        made = run("plan", *PAIR, "-p", "rtx-4090", "--budget", "22GiB", "-c", "4096", "-b", "2", "-o", str(out),
                   "--engine", engine)
        assert made.exit_code == 0, made.output
        p = read_plan(out)
        recorded = p.provenance["engine_prediction"]
        exported = export_plan(p, engine)
        expected = engine_memory(engine, TARGET, DRAFT, p.knobs, engine_options_for(exported, p),
                                 device_total_bytes=p.device.total_memory_bytes)
        assert recorded == json.loads(json.dumps(expected.as_dict()))
        # export to the same engine prints the same numbers
        assert [f"predicted {expected.version} startup: {x}" for x in startup_log(expected)] == \
            list(exported.predicted_startup)
        assert any(x.endswith(line) for x in exported.predicted_startup)
    assert "engine_prediction" not in read_plan(_plain_plan(tmp_path)).provenance


def _plain_plan(tmp_path):
    out = tmp_path / "plain.json"
    assert run("plan", *PAIR, "-p", "rtx-4090", "--budget", "22GiB", "-c", "4096", "-b", "2", "-o",
               str(out)).exit_code == 0
    return out


def test_plan_engine_refuses_what_it_would_not_start(tmp_path):
    out = tmp_path / "p.json"
    cases = [(("--budget", "15.5GiB"),
              "vLLM: no --gpu-memory-utilization fits the plan in its budget by vLLM 0.10.1.1 (V1 engine)'s accounting"),
             (("--budget", "20GiB", "--gpu-memory-utilization", "0.5"),
              "plan --engine vllm predicts with the settings `export --to vllm` writes for the plan, not "
              "--gpu-memory-utilization"),
             (("--devices", "2"), "--engine vllm models one GPU per tensor-parallel rank, not --devices 2")]
    for args, message in cases:
        result = run("plan", *PAIR, "-p", "rtx-4090", "-c", "2048", "-b", "2", "-o", str(out), "--engine", "vllm",
                     *args)
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output
        assert not out.exists()  # nothing written


def test_verdict_engine_knobs():
    from specmemo_plan.engine_budget import with_engine_knobs

    knobs = Knobs(batch_size=8, max_context=1024, draft_length=1)
    assert with_engine_knobs(knobs, 3, 5) == replace(knobs, batch_size=3, draft_length=5)
    assert with_engine_knobs(knobs, None, 0) == replace(knobs, draft_length=1)
