"""vLLM's memory at startup, as its V1 engine sizes it (vLLM 0.10.1.1; the calibration logs' version).

What vLLM does (vllm/v1/worker/gpu_worker.py `Worker.determine_available_memory`, vllm/utils/__init__.py
`memory_profiling`, vllm/v1/core/kv_cache_utils.py `get_kv_cache_config`, at v0.10.1.1):
1. requested = --gpu-memory-utilization x total, total as cudaMemGetInfo reports it; startup fails when
   less than that is free (the CUDA context, created before, is not counted in the budget).
2. load the weights ("Model loading took X GiB"), then a profile run: one forward of
   --max-num-batched-tokens tokens over min(--max-num-seqs, tokens) requests, then the sampler on one
   logit row per request (gpu_model_runner.py `profile_run`, `_dummy_sampler_run`). Its torch peak above
   the weights is "torch peak memory increase"; memory outside torch that grew since the snapshot is
   "non-torch forward increase memory".
3. available KV = requested - weights - torch peak - non-torch ("Available KV cache memory"); blocks =
   available // (block_size x bytes per token over all KV layers, draft layers included: EAGLE/MTP layers
   register after the target's in the same pool); "GPU KV cache size" = blocks x block_size tokens;
   "Maximum concurrency" = blocks / ceil(max_model_len / block_size).
4. CUDA graphs are captured after the KV cache is allocated, outside the budget ("Graph capturing
   finished in N secs, took X GiB").
"""

from __future__ import annotations

from ..errors import SpecMemoError
from ..memory import Knobs, compute_dtype, dtype_bytes
from ..models import ModelShape
from .base import (GIB, MIB, EngineMemory, EngineOptions, cdiv, check_tensor_parallel, kv_token_bytes_per_gpu,
                   rotary_cache_bytes, sharded_weight_bytes, shares_rotary)

VERSION = "vLLM 0.10.1.1 (V1 engine)"
CODE = "vllm-project/vllm v0.10.1.1"
# `export --to vllm` writes the options of a newer vLLM, and its version line names both: the V1 engine of
# 0.10.x has no draft-model method ("In vllm v0.10.0, speculative decoding with a draft model is not supported",
# https://docs.vllm.ai/en/v0.14.0/features/spec_decode/; method "draft_model" came with vllm-project/vllm#24322),
# while the accounting above is the newest that public startup logs check (calibration.json P4, T2).
SERVE_VERSION = "vLLM 0.25.0"
SERVE_DOCS = (
    "https://docs.vllm.ai/en/v0.25.0/features/speculative_decoding/draft_model/",
    "https://docs.vllm.ai/en/v0.25.0/configuration/engine_args/",
)
EXPORT_VERSION = (f"{SERVE_VERSION} options; memory by the {VERSION} model: 0.10.1.1 has no draft_model method, "
                  "and no later version has public startup logs to check a model against")
# Since v0.21.0 vLLM also takes its own CUDA-graph estimate out of --gpu-memory-utilization (vllm-project/vllm#30515;
# its startup log: "CUDA graph memory profiling is enabled (default since v0.21.0) ... To disable, set
# VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=0", quoted in gpustack/runner#251). With 0 the graphs are captured
# after the KV cache, outside the share, as step 4 above: the accounting this module models.
GRAPHS_OUTSIDE_ENV = ("VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS", "0")
DEFAULT_UTILIZATION = 0.9  # vllm/config CacheConfig.gpu_memory_utilization
DEFAULT_BLOCK_SIZE = 16  # CacheConfig.block_size on CUDA
FUSED_MOE_CHUNK = 32768  # vllm/envs.py VLLM_FUSED_MOE_CHUNK_SIZE: fused_moe works on this many tokens at once
# Fitted, not derived: P4d (Qwen2-7B, TP1, 67 capture sizes x 29 piecewise graphs) took 0.50 GiB.
GRAPH_BYTES_PER_PIECE = 270 * 1024
# Assumed: vLLM V1 logs report 0.02-0.5 GiB of "non-torch forward increase memory" (more with tensor
# parallelism); the calibration set's V1 point P4 implies about 0.03 GiB. Replace it with your log's value.
DEFAULT_NON_TORCH = GIB // 10
DEFAULT_CONTEXT = 512 * MIB  # as the hardware profiles assume (profiles/titan-rtx.toml)
KV_DTYPES = {"fp16": "auto", "bf16": "auto", "fp32": "auto", "fp8": "fp8"}

SOURCES = {
    "weights_bytes": f"{CODE} gpu_model_runner.py load_model ('Model loading took'): parameters per rank "
                     "plus the rotary cos/sin cache (rotary_embedding.py)",
    "activation_peak_bytes": f"{CODE} gpu_model_runner.py profile_run: torch peak of the dummy forward at "
                             "max_num_batched_tokens or of the sampler on min(max_num_seqs, tokens) rows",
    "sampler_bytes": f"{CODE} v1/sample/sampler.py (fp32 logits), ops/topk_topp_sampler.py flashinfer_sample "
                     "(top-k mask + softmax), v1/sample/rejection_sampler.py ([num_tokens + batch, V] with drafts)",
    "non_torch_bytes": "assumption (module DEFAULT_NON_TORCH); vllm/utils memory_profiling non_torch_increase",
    "kv_cache_bytes": f"{CODE} v1/worker/gpu_worker.py determine_available_memory; v1/core/kv_cache_utils.py "
                      "get_num_blocks: available // page_size // num_layers",
    "kv_cache_tokens": f"{CODE} v1/core/kv_cache_utils.py 'GPU KV cache size: N tokens' = blocks x block_size",
    "max_concurrency": f"{CODE} kv_cache_utils.py get_max_concurrency_for_kv_cache_config",
    "cuda_graph_bytes": "fitted on https://github.com/dennislee22/vLLM-benchmarking/blob/main/log/"
                        "vllm-7B-1gpuA10080GB-0.25GRAM.log (0.50 GiB for 67 sizes x 29 pieces)",
    "settings": f"{CODE} engine/arg_utils.py _set_default_args_v1 (batch defaults by device)",
}


def batch_defaults(device_total_bytes: int, device_name: str) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) of `vllm serve` when not given (arg_utils.py
    _set_default_args_v1): 8192 and 1024 on a GPU of at least 70 GiB that is not an A100 ("Setting large
    max_num_batched_tokens for A100 reduces throughput, see PR #17885"), else 2048 and 256."""
    if device_total_bytes >= 70 * GIB and "a100" not in device_name.lower():
        return 8192, 1024
    return 2048, 256


def capture_sizes(max_num_batched_tokens: int) -> list[int]:
    """CUDA-graph batch sizes: [1, 2, 4] + 8..512 in steps of 8, at most max_num_batched_tokens
    (vllm/config VllmConfig._set_cudagraph_sizes; the P4 log lists these 67 sizes)."""
    return [s for s in [1, 2, 4] + list(range(8, 513, 8)) if s <= max_num_batched_tokens]


def forward_peak_bytes(model: ModelShape, tokens: int, tp: int, dtype: str) -> int:
    """Peak of one forward of `tokens` tokens with FlashAttention (no score matrix), per rank:
    b * max over layers of [2 T H (residual + hidden) + max(attention, mlp)], with
    attention = T (q + 2 kv + q) / tp + T H (qkv, attention output, o_proj) and
    mlp = 3 T I / tp + T H (gate_up, SiluAndMul, down) - vllm/model_executor/models/llama.py LlamaMLP;
    routed experts: min(T, 32768) top_k (3 I_e / tp + H) + T E (fused_moe.py intermediate caches 1-3 and
    the router logits), plus 3 T I_s / tp for shared experts."""
    b = dtype_bytes(compute_dtype(dtype))
    T, H = tokens, model.hidden_size
    q = model.num_attention_heads * model.head_dim
    kv = model.num_kv_heads * model.head_dim
    attention = T * (2 * q + 2 * kv) // tp + T * H
    mlp = 3 * T * model.intermediate_size // tp + T * H
    experts = model.experts
    if experts is not None:
        chunk = min(T, FUSED_MOE_CHUNK)
        routed = chunk * experts.top_k * (3 * experts.intermediate_size // tp + H) + T * experts.num_experts
        mlp = max(mlp, routed + 3 * T * experts.shared_intermediate_size // tp)
    return b * (2 * T * H + max(attention, mlp))


def profile_sampler_bytes(vocab: int, rows: int, tp: int, dtype: str) -> int:
    """The profile's sampler on `rows` logit rows, FlashInfer top-k/top-p (the P4 log: "Using FlashInfer
    for top-p & top-k sampling"): the logits in the model dtype, their fp32 copy, the top-k-masked logits and
    their softmax, (b + 12) * rows * V bytes; with tp > 1 each rank also keeps its V / tp shard before the
    all-gather."""
    b = dtype_bytes(compute_dtype(dtype))
    shard = b * rows * vocab // tp if tp > 1 else 0
    return (b + 12) * rows * vocab + shard


def spec_sampler_bytes(vocab: int, batch: int, k: int, dtype: str) -> int:
    """The rejection sampler at runtime with k drafts per request: logits of batch (k + 1) rows in the model
    dtype and in fp32, and the target probabilities of the batch k draft rows in fp32:
    (b + 4) B (k + 1) V + 4 B k V. The profile run samples one row per request, so this can exceed it."""
    b = dtype_bytes(compute_dtype(dtype))
    return (b + 4) * batch * (k + 1) * vocab + 4 * batch * k * vocab


def kv_bytes_per_token(target: ModelShape, draft: ModelShape | None, tp: int, kv_dtype: str) -> int:
    """One token over every KV layer of one rank, target and draft layers together (module docstring)."""
    b = dtype_bytes(kv_dtype)
    return int(kv_token_bytes_per_gpu(target, tp, b) + kv_token_bytes_per_gpu(draft, tp, b))


def num_blocks(available_bytes: int, block_size: int, token_bytes: int) -> int:
    """kv_cache_utils.get_num_blocks: available // (block_size x bytes per token of all layers), 0 if none."""
    return max(0, available_bytes // (block_size * token_bytes))


def max_concurrency(blocks: int, max_model_len: int, block_size: int) -> float:
    """blocks / ceil(max_model_len / block_size): requests of max_model_len tokens the pool holds."""
    return blocks / cdiv(max_model_len, block_size)


def cuda_graph_bytes(n_sizes: int, pieces: int, enforce_eager: bool) -> int:
    """0 with --enforce-eager; else sizes x piecewise graphs (decoder layers + 1: the compiled graph is split
    at every attention op) x GRAPH_BYTES_PER_PIECE (fitted, see the module constant)."""
    return 0 if enforce_eager else n_sizes * pieces * GRAPH_BYTES_PER_PIECE


def resolve(knobs: Knobs, options: EngineOptions, device_total_bytes: int) -> dict:
    """The flags vLLM runs with: the user's, else vLLM's defaults (batch_defaults, DEFAULT_*)."""
    tokens, seqs = batch_defaults(device_total_bytes, options.device_name)
    seqs = options.max_num_seqs or seqs
    tokens = options.max_num_batched_tokens or max(tokens, seqs)
    return {
        "--gpu-memory-utilization": options.gpu_memory_utilization or DEFAULT_UTILIZATION,
        "--max-num-batched-tokens": tokens,
        "--max-num-seqs": seqs,
        "--max-model-len": options.max_model_len or knobs.max_context,
        "--block-size": options.block_size or DEFAULT_BLOCK_SIZE,
        "--enforce-eager": bool(options.enforce_eager),
    }


def _kv_dtype(knobs: Knobs) -> str:
    if knobs.cache_dtype not in KV_DTYPES:
        raise SpecMemoError(f"KV dtype {knobs.cache_dtype} is not among vLLM's --kv-cache-dtype choices",
                            "use the model dtype (auto) or fp8")
    return knobs.cache_dtype


def memory(target: ModelShape, draft: ModelShape | None, knobs: Knobs, options: EngineOptions,
           device_total_bytes: int, tp: int = 1) -> EngineMemory:
    """Every part of vLLM's startup on one GPU (module docstring), per rank."""
    check_tensor_parallel(target, tp)
    if draft is not None:
        check_tensor_parallel(draft, tp)
    flags = resolve(knobs, options, device_total_bytes)
    kv_dtype = _kv_dtype(knobs)
    util, T, N = flags["--gpu-memory-utilization"], flags["--max-num-batched-tokens"], flags["--max-num-seqs"]
    max_len, block = flags["--max-model-len"], flags["--block-size"]
    k, dtype = knobs.draft_length, knobs.weight_dtype
    assumptions = [f"non-torch memory: {'given' if options.non_torch_bytes is not None else 'assumed 0.1 GiB'} "
                   "(vLLM counts what grows outside torch after its start-up snapshot: kernels loaded, NCCL "
                   "buffers with --tensor-parallel-size > 1; public V1 logs show 0.02-0.5 GiB)",
                   "sampler: FlashInfer top-k/top-p (installed in vLLM's images); the PyTorch path sorts the "
                   "logits and needs about twice as much"]
    target_w = sharded_weight_bytes(target, dtype, tp) + rotary_cache_bytes(target, dtype)
    draft_w = 0
    if draft is not None:
        draft_w = sharded_weight_bytes(draft, knobs.draft_dtype, tp)
        if not shares_rotary(target, draft):
            draft_w += rotary_cache_bytes(draft, knobs.draft_dtype)
    if tp > 1 and "stored" in (dtype, knobs.draft_dtype):
        assumptions.append("stored weights split as total / tensor-parallel size")
    b = dtype_bytes(compute_dtype(dtype))
    forward = max(forward_peak_bytes(target, T, tp, dtype),
                  forward_peak_bytes(draft, T, tp, knobs.draft_dtype) if draft is not None else 0)
    rows = min(N, T)
    sampler = profile_sampler_bytes(target.vocab_size, rows, tp, dtype) + (T + rows) * target.hidden_size * b
    profile_peak = max(forward, sampler)
    runtime_sampler = 0
    if k:  # the verify step's rejection sampler, with the hidden states of its B (k + 1) tokens
        runtime_sampler = spec_sampler_bytes(target.vocab_size, N, k, dtype) + N * (k + 1) * target.hidden_size * b
    non_torch = DEFAULT_NON_TORCH if options.non_torch_bytes is None else options.non_torch_bytes
    context = DEFAULT_CONTEXT if options.cuda_context_bytes is None else options.cuda_context_bytes
    requested = int(device_total_bytes * util)
    available = requested - target_w - draft_w - profile_peak - non_torch
    token_bytes = kv_bytes_per_token(target, draft, tp, kv_dtype)
    blocks = num_blocks(available, block, token_bytes)
    tokens = blocks * block
    t_share = kv_token_bytes_per_gpu(target, tp, dtype_bytes(kv_dtype))
    kv = blocks * block * token_bytes
    target_kv = int(blocks * block * t_share)
    pieces = target.num_layers + 1 + (draft.num_layers + 1 if draft is not None else 0)
    graphs = cuda_graph_bytes(len(capture_sizes(T)), pieces, options.enforce_eager)
    if draft is not None:
        assumptions.append("the draft's layers share the target's KV pool and block size (EAGLE/MTP in V1); a "
                           "draft with other KV shapes gets its own group in vLLM's hybrid allocator")
    if target.windowed:
        assumptions.append("sliding-window layers sized as full-attention layers (vLLM's hybrid allocator "
                           "groups them apart and frees blocks that leave the window): a lower bound on tokens")
    if runtime_sampler > profile_peak:
        assumptions.append(f"with {k} drafts per request the rejection sampler needs "
                           f"{(runtime_sampler - profile_peak) / GIB:.2f} GiB more than the profile run measured: "
                           "it comes out of the memory outside --gpu-memory-utilization")
    error = _startup_error(device_total_bytes, context, requested, util, available, blocks, block, max_len,
                           target)
    total = context + target_w + draft_w + max(0, kv) + max(profile_peak, runtime_sampler) + non_torch + graphs
    settings = dict(flags, **{"--tensor-parallel-size": tp, "--kv-cache-dtype": KV_DTYPES[kv_dtype]})
    if k:
        settings["num_speculative_tokens"] = k
    return EngineMemory(
        engine="vllm", version=VERSION, weights_bytes=target_w + draft_w, target_weights_bytes=target_w,
        draft_weights_bytes=draft_w, kv_cache_bytes=kv, target_kv_cache_bytes=target_kv,
        draft_kv_cache_bytes=kv - target_kv, kv_cache_tokens=tokens,
        max_concurrency=max_concurrency(blocks, max_len, block), activation_peak_bytes=profile_peak,
        compute_buffer_bytes=None, non_torch_bytes=non_torch, cuda_graph_bytes=graphs,
        sampler_bytes=max(sampler, runtime_sampler), cuda_context_bytes=context, total_bytes=total,
        budget_bytes=requested, startup_error=error, settings=settings, sources=dict(SOURCES),
        assumptions=tuple(assumptions) + (f"CUDA context {context / MIB:.0f} MiB, outside vLLM's budget",),
    )


def _startup_error(total: int, context: int, requested: int, util: float, available: int, blocks: int,
                   block: int, max_len: int, target: ModelShape) -> str | None:
    """The refusal vLLM prints at startup, or None (gpu_worker.py init_device; kv_cache_utils.py
    check_enough_kv_cache_memory; config max_model_len check)."""
    if max_len > target.max_position_embeddings:
        return (f"max_model_len {max_len} is greater than the model's max_position_embeddings "
                f"{target.max_position_embeddings}")
    if requested > total - context:
        return (f"Free memory on device ({(total - context) / GIB:.2f} GiB) on startup is less than desired GPU "
                f"memory utilization ({util}, {requested / GIB:.2f} GiB)")
    if available <= 0:
        return "No available memory for the cache blocks. Try increasing `gpu_memory_utilization`"
    if blocks < cdiv(max_len, block):
        return (f"To serve at least one request with the model's max seq len ({max_len}), more KV cache is needed "
                f"than the available KV cache memory; the estimated maximum model length is {blocks * block}")
    return None



def startup_lines(m: EngineMemory) -> tuple[str, ...]:
    """What vLLM 0.10.1.1 logs (gpu_model_runner.py, gpu_worker.py, kv_cache_utils.py)."""
    available = m.budget_bytes - m.weights_bytes - m.activation_peak_bytes - m.non_torch_bytes
    lines = [f"Model loading took {m.weights_bytes / GIB:.4f} GiB",
             f"Available KV cache memory: {available / GIB:.2f} GiB",
             f"GPU KV cache size: {m.kv_cache_tokens:,} tokens",
             f"Maximum concurrency for {m.settings['--max-model-len']:,} tokens per request: {m.max_concurrency:.2f}x"]
    if m.cuda_graph_bytes:
        lines.append(f"Graph capturing finished, took {m.cuda_graph_bytes / GIB:.2f} GiB")
    return tuple(lines) + ((m.startup_error,) if m.startup_error else ())
