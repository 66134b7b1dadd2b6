"""`--engine` on estimate and fit: the engines' own accounting (specmemo_plan/engines) through the CLI."""

import json

from click.testing import CliRunner

from specmemo_plan.cli import cli
from specmemo_plan.engines import EngineOptions, engine_memory
from specmemo_plan.hardware import load_profile
from specmemo_plan.memory import Knobs
from specmemo_plan.models import load_shape


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_estimate_engine_vllm_is_the_engine_model():
    result = run("estimate", "-t", "qwen2.5-7b-instruct", "-c", "16384", "-b", "4", "--engine", "vllm",
                 "-p", "a100-80gb", "--gpu-memory-utilization", "0.5", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    profile = load_profile("a100-80gb")
    expected = engine_memory("vllm", load_shape("qwen2.5-7b-instruct"), None, Knobs(batch_size=4, max_context=16384),
                             EngineOptions(gpu_memory_utilization=0.5, cuda_context_bytes=profile.runtime_overhead_bytes,
                                           device_name=profile.name), profile.memory_bytes)
    assert data["engine"]["kv_cache_tokens"] == expected.kv_cache_tokens > 0
    assert data["engine"]["weights_bytes"] == expected.weights_bytes
    assert any("GPU KV cache size" in line for line in data["engine_startup_log"])
    assert data["engine_refusal"] is None
    # the default engine is this project's: no engine object, the breakdown is its memory
    plain = json.loads(run("estimate", "-t", "qwen2.5-7b-instruct", "-c", "1024", "--json").stdout)
    assert "engine" not in plain


def test_fit_is_refused_when_the_pool_cannot_hold_the_batch():
    result = run("fit", "-t", "qwen2.5-7b-instruct", "-c", "32768", "-b", "64", "--engine", "vllm", "-p", "a100-80gb",
                 "--gpu-memory-utilization", "0.3", "--budget", "80GiB", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["fits"] is False and "fewer than the batch of 64" in data["engine_refusal"]


def test_engine_errors_are_one_line():
    for args, message in ((("--engine", "vllm"), "name the GPU with --profile"),
                          (("--engine", "vlm"), "unknown engine 'vlm' (close names: vllm)")):
        result = run("estimate", "-t", "llama-2-7b-chat", "-c", "1024", *args)
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    result = run("estimate", "-t", "llama-2-7b-chat", "--engine", "vllm", "-p", "a100-80gb",
                 "--gpu-memory-utilization", "nan")
    assert result.exit_code == 2


def test_export_prints_the_engines_predicted_startup(tmp_path):
    from specmemo_plan.export import export_plan
    from specmemo_plan.plan import read_plan

    out = tmp_path / "p.json"
    made = run("plan", "-t", "llama-2-7b-chat", "-d", "llama-68m", "-p", "rtx-4090", "--budget", "22GiB", "-c", "4096",
               "-b", "2", "-o", str(out))
    assert made.exit_code == 0, made.output
    result = export_plan(read_plan(out), "vllm")
    lines = result.predicted_startup
    assert any(line.endswith("GPU KV cache size: 16,208 tokens") for line in lines)
    assert not any(u.startswith("WARNING") for u in result.unsupported)  # 3.96x concurrency >= batch 2
    llama = export_plan(read_plan(out), "llama.cpp")
    assert any("KV self size = 4096.00 MiB" in line for line in llama.predicted_startup)
