"""SGLang's memory at startup (`sglang.launch_server`, v0.5.4 line: server_args.py after
sgl-project/sglang#10975, "General heuristics for --mem-fraction-static").

- --mem-fraction-static covers the weights, the KV pool and whatever is already allocated when the pool
  is sized (the CUDA context): model_runner.py profile_max_num_token:
  rest = free memory after loading - total x (1 - mem_fraction_static);
  max_total_num_tokens = rest // cell_size, cell_size = KV heads per rank x head_dim x layers x 2 x b.
- When not given, mem_fraction_static = (gpu_mem - reserved) / gpu_mem with reserved (MB) = 512 +
  1.5 max(chunked_prefill_size, 2048) + 2 cuda_graph_max_bs + 1024 tp pp / 8, at least 10 GiB on GPUs over
  60 GiB, + 2 GiB for an EAGLE draft, + 6 GiB for a STANDALONE one (server_args.py
  _handle_gpu_memory_settings); chunked_prefill_size and cuda_graph_max_bs by GPU memory (same function).
- Speculative decoding: the draft worker starts after the target's pool and allocates its own pool of
  draft_runner_cache_size = max_total_num_tokens + max_num_reqs (steps x topk + draft tokens) + 100 tokens
  (model_runner.py init_memory_pool), and the target's pool grows to the same size; an EAGLE head shares
  the target's embedding and lm_head (eagle_worker.py set_embed_and_head). Draft weights, draft pool,
  activations and CUDA graphs all come out of the (1 - mem_fraction_static) headroom.
"""

from __future__ import annotations

from ..errors import SpecMemoError
from ..memory import Knobs, compute_dtype, dtype_bytes
from ..models import ModelShape
from .base import (GIB, MIB, EngineMemory, EngineOptions, check_tensor_parallel, kv_token_bytes_per_gpu,
                   padded_vocab_rows, rotary_cache_bytes, sharded_weight_bytes, shares_rotary)
from .vllm import forward_peak_bytes

VERSION = "SGLang main after sgl-project/sglang#10975 (Oct 2025, v0.5.4 line)"
CODE = "sgl-project/sglang python/sglang/srt"
# `export --to sglang` writes the options of a later release (names checked in its server arguments); its
# version line names both: the pool and headroom formulas above were read at VERSION and are assumed unchanged.
SERVE_VERSION = "SGLang 0.5.10"
SERVE_DOCS = (
    "https://docs.sglang.io/advanced_features/speculative_decoding.html",
    "https://docs.sglang.io/advanced_features/server_arguments.html",
)
EXPORT_VERSION = (f"{SERVE_VERSION} options; memory by the model of {VERSION}, whose pool formulas are assumed "
                  "unchanged in 0.5.10")
ALGORITHMS = ("EAGLE", "EAGLE3", "STANDALONE", "NGRAM", "NEXTN")
KV_DTYPES = ("fp16", "bf16", "fp32", "fp8")  # auto (the model dtype), fp8_e4m3, fp8_e5m2 (kvtypes.py)
DEFAULT_CONTEXT = 512 * MIB  # assumed CUDA context, as the hardware profiles (profiles/titan-rtx.toml)

SOURCES = {
    "settings": f"{CODE}/server_args.py _handle_gpu_memory_settings (buckets by GPU memory, reserved_mem)",
    "kv_cache_bytes": f"{CODE}/model_executor/model_runner.py profile_max_num_token, init_memory_pool",
    "draft_kv_cache_bytes": f"{CODE}/model_executor/model_runner.py init_memory_pool (draft_runner_cache_size)",
    "weights_bytes": f"{CODE}/layers (vLLM-derived tensor-parallel layers, vocab padded to 64) + rotary cache",
    "activation_peak_bytes": "vllm.forward_peak_bytes at --chunked-prefill-size (the same layer code); "
                             "SGLang's own reserve is 1.5 MB per prefill token",
    "cuda_graph_bytes": f"{CODE}/server_args.py: 2 MB per --cuda-graph-max-bs (SGLang's own estimate)",
}


def bucket_defaults(gpu_mem_mib: float, tp: int) -> tuple[int, int]:
    """(chunked_prefill_size, cuda_graph_max_bs) by GPU memory (_handle_gpu_memory_settings, CUDA rows)."""
    small = tp < 4
    if gpu_mem_mib < 20 * 1024:
        return 2048, 8
    if gpu_mem_mib < 35 * 1024:
        return 2048, 24 if small else 80
    if gpu_mem_mib < 60 * 1024:
        return 4096, 32 if small else 160
    if gpu_mem_mib < 160 * 1024:
        return 8192, 256 if small else 512
    return 16384, 512


def default_mem_fraction(gpu_mem_mib: float, chunked_prefill: int, cuda_graph_max_bs: int, tp: int,
                         algorithm: str | None) -> float:
    """round((gpu_mem - reserved) / gpu_mem, 3), reserved in MB as the module docstring gives it."""
    reserved = 512 + max(chunked_prefill, 2048) * 1.5 + cuda_graph_max_bs * 2 + tp / 8 * 1024
    if gpu_mem_mib > 60 * 1024:
        reserved = max(reserved, 10 * 1024)
    if algorithm == "STANDALONE":
        reserved += 6 * 1024
    elif algorithm not in (None, "NGRAM"):
        reserved += 2 * 1024
    return round((gpu_mem_mib - reserved) / gpu_mem_mib, 3)


def max_total_tokens(free_after_load: int, total: int, fraction: float, cell_bytes: float, page: int) -> int:
    """int(rest // cell_size), rest = free after load - total (1 - fraction), floored to whole pages."""
    tokens = int((free_after_load - total * (1 - fraction)) // cell_bytes)
    return max(0, tokens // page * page)


def max_num_reqs(tokens: int, context_len: int) -> int:
    """Requests the scheduler admits when --max-running-requests is not given:
    min(max(tokens / context_len * 512, 2048), 4096) (model_runner.py init_memory_pool)."""
    return min(max(int(tokens / context_len * 512), 2048), 4096)


def draft_cache_tokens(tokens: int, reqs: int, steps: int, topk: int, draft_tokens: int) -> int:
    """draft_runner_cache_size = tokens + reqs steps topk (draft) + reqs draft_tokens (verify) + 100."""
    return tokens + reqs * steps * topk + reqs * draft_tokens + 100


def eagle_draft_weight_bytes(draft: ModelShape, dtype: str, tp: int) -> int:
    """An EAGLE head without its embedding and lm_head (it uses the target's)."""
    element = dtype_bytes(compute_dtype(dtype))
    own = padded_vocab_rows(draft.vocab_size, tp) * draft.hidden_size * element
    own *= 1 if draft.tie_word_embeddings else 2
    return max(0, sharded_weight_bytes(draft, dtype, tp) - own)


def _algorithm(options: EngineOptions, draft: ModelShape | None) -> str | None:
    if draft is None:
        return options.speculative_algorithm.upper() if options.speculative_algorithm else None
    name = (options.speculative_algorithm or "STANDALONE").upper()
    if name not in ALGORITHMS:
        raise SpecMemoError(f"--speculative-algorithm {options.speculative_algorithm!r} is not known",
                            "use one of: " + ", ".join(ALGORITHMS))
    if name == "NGRAM":
        raise SpecMemoError("--speculative-algorithm NGRAM uses no draft model", "drop --draft, or pick EAGLE")
    return name


def memory(target: ModelShape, draft: ModelShape | None, knobs: Knobs, options: EngineOptions,
           device_total_bytes: int, tp: int = 1) -> EngineMemory:
    """SGLang's pools and headroom on one GPU (module docstring)."""
    check_tensor_parallel(target, tp)
    if knobs.cache_dtype not in KV_DTYPES:
        raise SpecMemoError(f"KV dtype {knobs.cache_dtype} is not among SGLang's --kv-cache-dtype choices",
                            "use the model dtype (auto) or fp8")
    algorithm = _algorithm(options, draft)
    gpu_mem = device_total_bytes / MIB
    chunk, graph_bs = bucket_defaults(gpu_mem, tp)
    chunk = options.chunked_prefill_size or chunk
    graph_bs = options.cuda_graph_max_bs or graph_bs
    fraction = options.mem_fraction_static or default_mem_fraction(gpu_mem, chunk, graph_bs, tp, algorithm)
    page = options.page_size or 1
    b_kv = dtype_bytes(knobs.cache_dtype)
    context = DEFAULT_CONTEXT if options.cuda_context_bytes is None else options.cuda_context_bytes
    target_w = sharded_weight_bytes(target, knobs.weight_dtype, tp) + rotary_cache_bytes(target, knobs.weight_dtype)
    cell = kv_token_bytes_per_gpu(target, tp, b_kv)
    tokens = max_total_tokens(device_total_bytes - context - target_w, device_total_bytes, fraction, cell, page)
    error = None if tokens > 0 else "Not enough memory. Please try to increase --mem-fraction-static."
    assumptions = [f"CUDA context {context / MIB:.0f} MiB (assumed), inside --mem-fraction-static"]
    k = knobs.draft_length
    draft_w = draft_kv = 0
    pool = tokens
    settings = {"--mem-fraction-static": fraction, "--chunked-prefill-size": chunk,
                "--cuda-graph-max-bs": graph_bs, "--tp-size": tp, "--page-size": page,
                "--context-length": knobs.max_context}
    if draft is not None:
        check_tensor_parallel(draft, tp)
        steps = options.speculative_num_steps or k
        topk = options.speculative_eagle_topk or 1
        verify = options.speculative_num_draft_tokens or (steps + 1 if topk == 1 else steps * topk)
        reqs = options.max_running_requests or max_num_reqs(tokens, knobs.max_context)
        pool = draft_cache_tokens(tokens, reqs, steps, topk, verify)
        if algorithm == "STANDALONE":
            draft_w = sharded_weight_bytes(draft, knobs.draft_dtype, tp)
        else:
            draft_w = eagle_draft_weight_bytes(draft, knobs.draft_dtype, tp)
        if not shares_rotary(target, draft):
            draft_w += rotary_cache_bytes(draft, knobs.draft_dtype)
        draft_kv = int(pool * kv_token_bytes_per_gpu(draft, tp, b_kv))
        settings.update({"--speculative-algorithm": algorithm, "--speculative-num-steps": steps,
                         "--speculative-eagle-topk": topk, "--speculative-num-draft-tokens": verify,
                         "--max-running-requests": reqs})
        assumptions.append(f"the target's pool grows from {tokens:,} to {pool:,} tokens to match the draft pool "
                           f"({reqs} requests x ({steps} x {topk} + {verify}) + 100)")
    target_kv = int(pool * cell)
    activation = max(forward_peak_bytes(target, chunk, tp, knobs.weight_dtype),
                     forward_peak_bytes(draft, chunk, tp, knobs.draft_dtype) if draft is not None else 0)
    b = dtype_bytes(compute_dtype(knobs.weight_dtype))
    rows = graph_bs * (k + 1)
    sampler = (b + 4) * rows * target.vocab_size  # logits of the largest decode batch and their fp32 softmax
    graphs = 0 if options.disable_cuda_graph else graph_bs * 2 * MIB
    budget = int(device_total_bytes * fraction)
    total = context + target_w + target_kv + draft_w + draft_kv + max(activation, sampler) + graphs
    if error is None and total > device_total_bytes:
        error = (f"CUDA out of memory: {(total - budget) / GIB:.2f} GiB needed beyond --mem-fraction-static "
                 f"{fraction} ({(device_total_bytes - budget) / GIB:.2f} GiB left): lower --mem-fraction-static, "
                 "--cuda-graph-max-bs or --chunked-prefill-size")
    assumptions.append("activations: this planner's FlashInfer-style forward estimate at --chunked-prefill-size; "
                       "CUDA graphs: SGLang's own 2 MB per captured batch size")
    return EngineMemory(
        engine="sglang", version=VERSION, weights_bytes=target_w + draft_w, target_weights_bytes=target_w,
        draft_weights_bytes=draft_w, kv_cache_bytes=target_kv + draft_kv, target_kv_cache_bytes=target_kv,
        draft_kv_cache_bytes=draft_kv, kv_cache_tokens=pool,
        max_concurrency=pool / knobs.max_context, activation_peak_bytes=activation, compute_buffer_bytes=None,
        non_torch_bytes=0, cuda_graph_bytes=graphs, sampler_bytes=sampler, cuda_context_bytes=context,
        total_bytes=total, budget_bytes=budget, startup_error=error, settings=settings, sources=dict(SOURCES),
        assumptions=tuple(assumptions),
    )


def startup_lines(m: EngineMemory) -> tuple[str, ...]:
    """What SGLang logs when it allocates the pool (memory_pool.py MHATokenToKVPool: K and V halves, "GB"
    meaning GiB)."""
    half = m.target_kv_cache_bytes / 2 / GIB
    lines = [f"KV Cache is allocated. #tokens: {m.kv_cache_tokens}, K size: {half:.2f} GB, V size: {half:.2f} GB"]
    if m.draft_kv_cache_bytes:
        d = m.draft_kv_cache_bytes / 2 / GIB
        lines.append(f"KV Cache is allocated. #tokens: {m.kv_cache_tokens}, K size: {d:.2f} GB, V size: {d:.2f} GB")
    return tuple(lines) + ((m.startup_error,) if m.startup_error else ())
