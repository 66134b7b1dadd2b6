"""Issue 16: a plan exported to vLLM or SGLang fits inside its budget by the engine's own accounting, and no export
emits settings whose predicted startup passes the budget (specmemo_plan/export/engine_share.py).

Fixed plans on bundled GPU profiles; every number the engine model gives is checked against engines.engine_memory
called here with options built by hand (not through the export's own mapping)."""

import json
import math

import pytest
from click.testing import CliRunner

from specmemo_plan.cli import cli
from specmemo_plan.engines import EngineOptions, engine_fits, engine_memory, startup_log
from specmemo_plan.engines import sglang as sglang_model
from specmemo_plan.engines import vllm as vllm_model
from specmemo_plan.errors import SpecMemoError
from specmemo_plan.export import SGLANG_VERSION, VLLM_DOCS, VLLM_VERSION, export_plan
from specmemo_plan.export.engine_share import peak_parts
from specmemo_plan.hardware import load_profile
from specmemo_plan.memory import Knobs
from specmemo_plan.models import load_shape
from specmemo_plan.plan import DeviceSpec, Generation, make_plan

GiB = 2**30
CHUNK = 512  # the plans' prefill chunk (min(context, 512)): --max-num-batched-tokens / --chunked-prefill-size = b x 512


def _plan(profile, target, draft, knobs, budget):
    p = load_profile(profile)
    device = DeviceSpec(kind="cuda", name=p.name, total_memory_bytes=p.memory_bytes, profile=profile)
    return make_plan(target, load_shape(target), draft, load_shape(draft) if draft else None, knobs, device, budget,
                     Generation(max_new_tokens=256), device_overhead_bytes=p.runtime_overhead_bytes)


# (profile, target, draft, knobs, budget, vLLM's --gpu-memory-utilization, SGLang's --mem-fraction-static)
PLANS = {
    "8b+1b-4090": ("rtx-4090", "llama-3.1-8b-instruct", "llama-3.2-1b-instruct",
                   Knobs(batch_size=2, max_context=4096, draft_length=4), 22 * GiB, 0.8603, 0.7798),
    "7b+68m-4090": ("rtx-4090", "llama-2-7b-chat", "llama-68m", Knobs(batch_size=2, max_context=2048, draft_length=3),
                    22 * GiB, 0.8704, 0.8997),
    "8b-plain-4090": ("rtx-4090", "llama-3.1-8b-instruct", None, Knobs(batch_size=4, max_context=8192), 22 * GiB,
                      0.8726, 0.9063),
    "qwen7b+0.5b-a100": ("a100-80gb", "qwen2.5-7b-instruct", "qwen2.5-0.5b-instruct",
                         Knobs(batch_size=16, max_context=8192, draft_length=4, weight_dtype="bf16"), 70 * GiB,
                         0.8571, 0.7269),
}


def _options(engine, plan, share, **extra):
    """What the exported command sets, as EngineOptions written out by hand."""
    k, context = plan.knobs, load_profile(plan.device.profile).runtime_overhead_bytes
    if engine == "vllm":
        return EngineOptions(gpu_memory_utilization=share, max_num_seqs=k.batch_size, max_model_len=k.max_context,
                             max_num_batched_tokens=k.batch_size * CHUNK, cuda_context_bytes=context,
                             device_name=plan.device.name, **extra)
    spec = dict(speculative_algorithm="STANDALONE", speculative_num_steps=k.draft_length, speculative_eagle_topk=1,
                speculative_num_draft_tokens=k.draft_length + 1) if plan.draft else {}
    return EngineOptions(mem_fraction_static=share, max_running_requests=k.batch_size,
                         chunked_prefill_size=k.batch_size * CHUNK, cuda_context_bytes=context,
                         device_name=plan.device.name, **spec, **extra)


def _memory(engine, plan, share, **extra):
    return engine_memory(engine, load_shape(plan.target.ref), load_shape(plan.draft.ref) if plan.draft else None,
                         plan.knobs, _options(engine, plan, share, **extra), plan.device.total_memory_bytes)


SETTING = {"vllm": "gpu_memory_utilization", "sglang": "mem_fraction_static"}


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
@pytest.mark.parametrize("name", list(PLANS))
def test_the_share_is_the_largest_within_the_budget(name, engine):
    profile, target, draft, knobs, budget, vllm_share, sglang_share = PLANS[name]
    plan = _plan(profile, target, draft, knobs, budget)
    r = export_plan(plan, engine)
    share = r.settings[SETTING[engine]]
    assert share == {"vllm": vllm_share, "sglang": sglang_share}[engine]
    m = _memory(engine, plan, share)
    assert m.total_bytes <= plan.budget_bytes == budget  # (a) the whole process, not only the engine's share
    assert m.max_concurrency >= knobs.batch_size and engine_fits(m, knobs) is None  # (b) the batch at its context
    assert sum(b for _, b in peak_parts(m)) == m.total_bytes
    above = _memory(engine, plan, round(share + 0.0001, 4))  # one step more passes the budget: the largest
    assert above.total_bytes > budget
    assert f"{share:.4f}" in r.command and r.predicted_startup == tuple(
        f"predicted {m.version} startup: {line}" for line in startup_log(m))


def test_budget_over_device_memory_passed_the_budget():
    """The share the exports wrote before (budget / device memory rounded down to 0.001: 0.917) peaks 1.36 GiB
    over the budget: the CUDA context and CUDA graphs live outside vLLM's share."""
    budget = PLANS["8b+1b-4090"][4]
    plan = _plan(*PLANS["8b+1b-4090"][:5])
    old = math.floor(budget / plan.device.total_memory_bytes * 1000) / 1000
    assert old == 0.917
    over = _memory("vllm", plan, old)
    assert over.total_bytes - budget == 1_459_447_398
    assert over.cuda_context_bytes + over.cuda_graph_bytes == 536_870_912 + 926_208_000  # outside the share


def test_the_vllm_pool_by_hand():
    """vLLM 0.10.1.1 at 0.8603 on the RTX 4090 (engines/vllm.py, steps 1-3): KV = share x total - weights - torch
    peak - non-torch, in blocks of 16 tokens over every layer of target and draft."""
    plan = _plan(*PLANS["8b+1b-4090"][:5])
    m = _memory("vllm", plan, 0.8603)
    token = 32 * 8 * 128 * 2 * 2 + 16 * 8 * 64 * 2 * 2  # K and V, fp16: Llama-3.1-8B's 32 layers, Llama-3.2-1B's 16
    available = int(25_757_220_864 * 0.8603) - m.weights_bytes - m.activation_peak_bytes - m.non_torch_bytes
    assert available == 3_355_833_775  # "Available KV cache memory: 3.13 GiB"
    blocks = available // (16 * token)
    assert (blocks, m.kv_cache_tokens, m.max_concurrency) == (1280, 1280 * 16, 1280 / 256) == (1280, 20_480, 5.0)
    assert m.kv_cache_bytes == blocks * 16 * token == 3_355_443_200


def test_the_sglang_pool_by_hand():
    """SGLang at 0.7798: the pool is what the share leaves after the CUDA context and the target's weights, then
    grows by 2 requests x (4 draft + 5 verify tokens) + 100 to match the draft's pool (engines/sglang.py)."""
    plan = _plan(*PLANS["8b+1b-4090"][:5])
    m = _memory("sglang", plan, 0.7798)
    total, context = 25_757_220_864, 512 * 2**20
    tokens = int((total - context - m.target_weights_bytes - total * (1 - 0.7798)) // (32 * 8 * 128 * 2 * 2))
    assert tokens + 2 * (4 * 1 + 5) + 100 == m.kv_cache_tokens == 26_473
    assert m.max_concurrency == 26_473 / 4096 >= 2


def _cli_plan(tmp_path, budget):
    made = CliRunner().invoke(cli, ["plan", "-t", "llama-3.1-8b-instruct", "-d", "llama-3.2-1b-instruct", "-p",
                                    "rtx-4090", "--budget", budget, "-b", "2", "-c", "4096", "-o",
                                    str(tmp_path / "p.json")])
    assert made.exit_code == 0, made.output
    return tmp_path / "p.json"


TIGHT = ("Error: vLLM: no --gpu-memory-utilization fits the plan in its budget by vLLM 0.10.1.1 (V1 engine)'s "
         "accounting: the smallest that holds the batch of 2 sequences of 4096 tokens, 0.7822, peaks at CUDA context "
         "536,870,912 + weights 18,582,482,944 + KV cache 1,342,177,280 + activations 113,246,208 + non-torch "
         "107,374,182 + CUDA graphs 926,208,000 = 21,608,359,526 bytes, 670,393,958 bytes (639.34 MiB) more than the "
         "budget of 20,937,965,568 (raise --budget by 639.34 MiB, lower --batch or --context, plan a smaller "
         "--prefill-chunk (--max-num-batched-tokens = batch x chunk = 1024), or export with --enforce-eager (no CUDA "
         "graphs: 883.30 MiB))\n")


def test_a_budget_too_tight_for_vllm_is_refused(tmp_path):
    """19.5 GiB holds the plan (19.43 GiB) but not vLLM: one Error line, exit 1, nothing written."""
    path = _cli_plan(tmp_path, "19.5GiB")
    before = sorted(p.name for p in tmp_path.iterdir())
    for extra in ([], ["--json"]):
        result = CliRunner().invoke(cli, ["export", str(path), "--to", "vllm", *extra])
        assert result.exit_code == 1 and result.output == TIGHT
    llama = CliRunner().invoke(cli, ["export", str(path), "--to", "llama.cpp"])
    assert llama.exit_code == 1 and llama.output == (
        "Error: llama.cpp: by llama.cpp b5600-b6500 (llama-server, mid-2025: llama_kv_cache_unified)'s accounting these "
        "settings peak at 21,037,199,360 bytes on the GPU, 99,233,792 bytes (94.64 MiB) more than the budget of "
        "20,937,965,568 (raise --budget by 94.64 MiB, lower --batch or --context, or plan a smaller --prefill-chunk "
        "(-ub = batch x chunk = 1024: the compute buffer))\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    # what the hint offers: without CUDA graphs vLLM fits; SGLang's graphs and headroom are smaller and it fits as is
    eager = CliRunner().invoke(cli, ["export", str(path), "--to", "vllm", "--enforce-eager", "--json"])
    assert eager.exit_code == 0, eager.output
    data = json.loads(eager.stdout)
    assert data["settings"]["gpu_memory_utilization"] == 0.7920 and data["settings"]["enforce_eager"] is True
    assert "--enforce-eager \\" in data["command"]
    from specmemo_plan.plan import read_plan

    plan = read_plan(path)
    m = _memory("vllm", plan, 0.7920, enforce_eager=True)
    assert m.cuda_graph_bytes == 0 and m.total_bytes <= plan.budget_bytes < _memory(
        "vllm", plan, 0.7921, enforce_eager=True).total_bytes
    sglang = export_plan(plan, "sglang")
    assert sglang.settings["mem_fraction_static"] == 0.6964
    assert _memory("sglang", plan, 0.6964).max_concurrency >= 2


def test_the_engine_share_is_kept_with_room_to_spare(tmp_path):
    """The 22 GiB plan through the CLI: the JSON carries the share, the command spells it once, and the environment
    keeps vLLM's CUDA graphs outside the share as the model counts them."""
    path = _cli_plan(tmp_path, "22GiB")
    result = CliRunner().invoke(cli, ["export", str(path), "--to", "vllm", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["settings"]["gpu_memory_utilization"] == 0.8603
    assert data["settings"]["env"] == {"VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS": "0"}
    assert data["command"].count("0.8603") == 1
    assert data["command"].startswith("VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=0 vllm serve ")
    assert "predicted vLLM 0.10.1.1 (V1 engine) startup: GPU KV cache size: 20,480 tokens" in data["predicted_startup"]


def test_enforce_eager_is_only_for_vllm_and_sglang(tmp_path):
    path = _cli_plan(tmp_path, "22GiB")
    for engine in ("llama.cpp", "trtllm", "hf"):
        result = CliRunner().invoke(cli, ["export", str(path), "--to", engine, "--enforce-eager"])
        assert result.exit_code == 1
        assert result.output == f"Error: --enforce-eager applies to the vllm and sglang exports, not {engine} " \
                                "(drop --enforce-eager)\n"
    sglang = CliRunner().invoke(cli, ["export", str(path), "--to", "sglang", "--enforce-eager", "--json"])
    data = json.loads(sglang.stdout)
    assert data["settings"]["disable_cuda_graph"] is True and "--disable-cuda-graph \\" in data["command"]


def test_the_versions_come_from_the_engine_models(tmp_path):
    """One place holds both versions of each engine (the options' and the memory model's), and the export's version
    line says both, and why."""
    assert VLLM_VERSION == vllm_model.EXPORT_VERSION and VLLM_DOCS == vllm_model.SERVE_DOCS
    assert SGLANG_VERSION == sglang_model.EXPORT_VERSION
    assert VLLM_VERSION.startswith(f"{vllm_model.SERVE_VERSION} options; memory by the {vllm_model.VERSION} model: ")
    assert all("/v0.25.0/" in url for url in VLLM_DOCS) and vllm_model.SERVE_VERSION == "vLLM 0.25.0"
    path = _cli_plan(tmp_path, "22GiB")
    first = CliRunner().invoke(cli, ["export", str(path), "--to", "vllm"]).output.splitlines()[0]
    assert first.startswith("# vLLM 0.25.0 options; memory by the vLLM 0.10.1.1 (V1 engine) model: 0.10.1.1 has no "
                            "draft_model method")


def test_a_share_no_budget_holds_is_one_line():
    """A budget exactly the plan's own total (Llama-3.2-3B + 1B, batch 1, 4096 tokens): neither engine holds the
    batch inside it. The missing bytes are the peak at the smallest share that holds it, less the budget."""
    plan = _plan("rtx-4090", "llama-3.2-3b-instruct", "llama-3.2-1b-instruct",
                 Knobs(batch_size=1, max_context=4096, draft_length=4), 10_220_374_592)
    assert plan.prediction.memory["total_bytes"] == plan.budget_bytes
    for engine, name, option in (("vllm", "vLLM", "--gpu-memory-utilization"),
                                 ("sglang", "SGLang", "--mem-fraction-static")):
        with pytest.raises(SpecMemoError) as info:
            export_plan(plan, engine)
        message = info.value.message
        assert message.startswith(f"{name}: no {option} fits the plan in its budget by ") and "\n" not in str(info.value)
        need = float(message.split("4096 tokens, ")[1].split(",")[0])
        m = _memory(engine, plan, need)
        assert m.max_concurrency >= 1 > _memory(engine, plan, round(need - 0.0001, 4)).max_concurrency
        missing = m.total_bytes - plan.budget_bytes
        assert missing > 0 and f"= {m.total_bytes:,} bytes, {missing:,} bytes (" in message
        assert message.endswith(f"more than the budget of {plan.budget_bytes:,}")
        assert info.value.hint.startswith("raise --budget by ")
