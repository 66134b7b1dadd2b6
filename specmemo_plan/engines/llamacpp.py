"""llama.cpp's memory (`llama-server`, builds b5600-b6500, mid-2025), as it sizes its buffers at startup.

- Model buffer: the GGUF's tensors at their stored bytes; the token embedding stays in host memory
  (src/llama-model.cpp load_tensors: "there is very little benefit to offloading the input layer, so
  always keep it on the CPU"); a tied model duplicates it as the output layer on the GPU.
- KV cache: n_ctx cells (rounded up to 256 with flash attention, 32 without:
  src/llama-kv-cache-unified.cpp get_padding) shared by all --parallel sequences; each cell holds one K row
  and one V row per layer in --cache-type-k / --cache-type-v (kvtypes.kv_row_bytes: q8_0 = 34 bytes per
  32 values). Sliding-window layers of the models llama.cpp builds with SWA get their own cache of
  min(n_ctx, pad(n_swa * n_seq_max + n_ubatch)) cells unless --swa-full
  (src/llama-kv-cache-unified-iswa.cpp, ggml-org/llama.cpp commit 5bc7a74).
- Compute buffer: ggml-alloc's peak over the worst-case graph of one ubatch (n_ubatch tokens, every
  output, n_kv = the whole cache). Without flash attention the f32 KQ scores [n_kv, n_ubatch, n_head]
  dominate; the f32 mask [n_kv, n_ubatch] and four f32 [n_embd, n_ubatch] activations live beside them.
  Checked exactly on three logs (calibration P7c, P7d, S5).
- A draft model (-md) gets a context per server slot with n_ctx / --parallel cells and, at this build,
  f16 KV ("force F16 KV cache for the draft model for extra performance", tools/server/server.cpp).
"""

from __future__ import annotations

import math
from pathlib import Path

from .. import kvtypes
from ..errors import SpecMemoError
from ..memory import FLOAT_DTYPES, STORED, Knobs, dtype_bytes, weight_bytes
from ..models import CacheLayer, ModelShape
from .base import MIB, EngineMemory, EngineOptions

VERSION = "llama.cpp b5600-b6500 (llama-server, mid-2025: llama_kv_cache_unified)"
CODE = "ggml-org/llama.cpp"
DEFAULT_UBATCH = 512  # common/common.h n_ubatch
KQ_MASK_PAD = 64  # ggml/include/ggml.h GGML_KQ_MASK_PAD: mask rows are padded to this
F32 = 4
# model_types llama.cpp builds with sliding-window caches (src/llama-model.cpp: swa_type set for
# GEMMA2, GEMMA3, COHERE2, OPENAI_MOE, PHI3 with a sliding_window); others run full attention even when
# the config names a window (Mistral-7B-v0.1 is built as LLM_ARCH_LLAMA).
SWA_MODEL_TYPES = ("gemma2", "gemma3", "gemma3_text", "cohere2", "gpt_oss", "phi3")
DEFAULT_CONTEXT = 512 * MIB  # assumed CUDA context, as the hardware profiles (profiles/titan-rtx.toml)

SOURCES = {
    "weights_bytes": f"{CODE} src/llama-model.cpp load_tensors (GGUF tensor bytes; token_embd on the host)",
    "kv_cache_bytes": f"{CODE} src/llama-kv-cache-unified.cpp (cells x layers x K/V rows), kvtypes.kv_row_bytes; "
                      "SWA: src/llama-kv-cache-unified-iswa.cpp",
    "compute_buffer_bytes": f"{CODE} ggml/src/ggml-alloc.c gallocr over the reserve graph (src/llama-context.cpp); "
                            "formula checked on fedora-copr/logdetective#106 and ikawrakow/ik_llama.cpp#645",
    "draft_kv_cache_bytes": f"{CODE} tools/server/server.cpp (one draft context per slot, F16 KV)",
}


def padding(flash_attn: bool) -> int:
    """n_ctx is rounded up to this (get_padding: "the FA kernels require padding")."""
    return 256 if flash_attn else 32


def pad(n: int, to: int) -> int:
    """GGML_PAD: n rounded up to a multiple of `to`."""
    return -(-n // to) * to


def uses_swa(model: ModelShape, layer: CacheLayer) -> bool:
    """A layer llama.cpp caches in its sliding-window cache (SWA_MODEL_TYPES)."""
    return layer.window is not None and model.model_type in SWA_MODEL_TYPES


def layer_cells(model: ModelShape, layer: CacheLayer, n_ctx: int, n_seq_max: int, n_ubatch: int, n_pad: int,
                swa_full: bool) -> int:
    """Cells of one layer's cache: n_ctx, or min(n_ctx, pad(n_swa n_seq_max + n_ubatch, n_pad)) for a
    sliding-window layer (module docstring)."""
    if not uses_swa(model, layer) or swa_full:
        return n_ctx
    return min(n_ctx, pad(layer.window * n_seq_max + n_ubatch, n_pad))


def kv_cache_bytes(model: ModelShape, cells: tuple[int, ...], k_type: kvtypes.KVType, v_type: kvtypes.KVType) -> int:
    """Sum over layers of cells * (K row + V row), rows from kvtypes.kv_row_bytes (whole blocks per head)."""
    total = 0
    for layer, n in zip(model.cache_layers, cells):
        k = kvtypes.kv_row_bytes(k_type, layer.kv_heads * layer.k_dim, layer.k_dim, "K")
        v = kvtypes.kv_row_bytes(v_type, layer.kv_heads * layer.v_dim, layer.v_dim, "V")
        total += n * (k + v)
    return total


def compute_buffer_bytes(model: ModelShape, n_kv: int, n_kv_swa: int | None, n_ubatch: int, flash_attn: bool) -> int:
    """The compute buffer of one context: 4 bytes x the largest phase of a layer, plus the masks.

    Phases (f32 elements): attention, n_head n_kv n_ub for KQ without flash attention (0 with it) + 4 H n_ub;
    MLP, 2 I n_ub (gate, up; routed experts: 2 I_e top_k n_ub) + 2 H n_ub; output, V n_ub + 2 H n_ub (the
    reserve graph computes logits for every token). Masks: [n_kv, pad(n_ub, 64)], f32 without flash
    attention and f16 with it, one more for the sliding-window layers."""
    H, ub = model.hidden_size, n_ubatch
    kq = 0 if flash_attn else model.num_attention_heads * n_kv * ub
    inner = model.intermediate_size
    if model.experts is not None:
        inner = max(inner, model.experts.intermediate_size * model.experts.top_k)
    phases = (kq + 4 * H * ub, 2 * inner * ub + 2 * H * ub, model.vocab_size * ub + 2 * H * ub)
    mask_element = 2 if flash_attn else F32
    masks = (n_kv + (n_kv_swa or 0)) * pad(ub, KQ_MASK_PAD) * mask_element
    return F32 * max(phases) + masks


def token_embedding_bytes(model: ModelShape, dtype: str) -> int:
    """The input embedding's bytes: from the GGUF header's token_embd.weight, else V x H at the 16-bit
    compute width (quantised formats keep embeddings 16-bit, memory.weight_bytes)."""
    stored = model.stored
    if dtype == STORED and stored is not None and stored.format == "gguf" and Path(model.source).is_file():
        from ..checkpoints import read_gguf_model

        for t in read_gguf_model(model.source).tensors:
            if t.name == "token_embd.weight":
                return t.nbytes
    element = dtype_bytes(dtype) if dtype in FLOAT_DTYPES else 2
    return model.vocab_size * model.hidden_size * element


def model_buffer_bytes(model: ModelShape, dtype: str) -> tuple[int, int]:
    """(GPU model buffer, host bytes): every tensor, less the token embedding kept on the host; a tied
    output layer is the embedding duplicated onto the GPU, so a tied model keeps all of it there too."""
    total = weight_bytes(model, dtype)
    embed = token_embedding_bytes(model, dtype)
    return (total, embed) if model.tie_word_embeddings else (total - embed, embed)


def _types(k: str | None, v: str | None, default: str) -> tuple[kvtypes.KVType, kvtypes.KVType]:
    k_type = kvtypes.kv_type(k or default)
    v_type = kvtypes.kv_type(v or k or default)
    for t in (k_type, v_type):
        if t.name not in kvtypes.LLAMACPP_TYPES:
            raise SpecMemoError(f"KV cache type {t.name} is not a llama.cpp --cache-type",
                                "use one of: " + ", ".join(kvtypes.ENGINE_SPELLINGS["llama.cpp"].values()))
    return k_type, v_type


def _context(model: ModelShape, n_ctx: int, n_seq: int, ubatch: int, flash: bool, k_type, v_type, swa_full: bool):
    """(KV bytes, compute buffer) of one llama_context over `model`."""
    n_pad = padding(flash)
    cells = tuple(layer_cells(model, layer, n_ctx, n_seq, ubatch, n_pad, swa_full) for layer in model.cache_layers)
    swa = [c for layer, c in zip(model.cache_layers, cells) if uses_swa(model, layer) and not swa_full]
    full = [c for layer, c in zip(model.cache_layers, cells) if not (uses_swa(model, layer) and not swa_full)]
    n_kv = max(full or swa)
    return kv_cache_bytes(model, cells, k_type, v_type), compute_buffer_bytes(
        model, n_kv, max(swa) if swa and full else None, min(ubatch, n_ctx), flash)


def memory(target: ModelShape, draft: ModelShape | None, knobs: Knobs, options: EngineOptions,
           device_total_bytes: int, tp: int = 1) -> EngineMemory:
    """llama-server's buffers on one GPU (module docstring). tp > 1: --split-mode layer over tp GPUs (the
    default); the GPU reported is the last one, which holds the output layer."""
    assumptions = []
    flash_flag = (options.flash_attn or "off").lower()
    flash = flash_flag != "off"
    if flash_flag == "auto":
        assumptions.append("--flash-attn auto taken as on (a CUDA GPU that supports it)")
    parallel = options.parallel or knobs.batch_size
    ubatch = options.ubatch_size or DEFAULT_UBATCH
    n_ctx = pad(options.ctx_size or knobs.max_context * parallel, padding(flash))
    k_type, v_type = _types(options.cache_type_k, options.cache_type_v, knobs.cache_dtype)
    kv, compute = _context(target, n_ctx, parallel, ubatch, flash, k_type, v_type, options.swa_full)
    error = None
    if v_type.is_block_quantized and not flash:
        error = "V cache quantization requires flash_attn"
    if knobs.weight_dtype != STORED:
        assumptions.append(f"weights from --dtype {knobs.weight_dtype}: llama.cpp runs the GGUF's own types "
                           "(give the .gguf and --dtype stored for its header's bytes)")
    weights, host = model_buffer_bytes(target, knobs.weight_dtype)
    draft_w = draft_kv = draft_compute = 0
    settings = {"--ctx-size": n_ctx, "--parallel": parallel, "--ubatch-size": ubatch,
                "--flash-attn": "on" if flash else "off",
                "--cache-type-k": kvtypes.ENGINE_SPELLINGS["llama.cpp"][k_type.name],
                "--cache-type-v": kvtypes.ENGINE_SPELLINGS["llama.cpp"][v_type.name]}
    if draft is not None:
        n_ctx_draft = pad(options.ctx_size_draft or n_ctx // parallel, padding(flash))
        dk, dv = _types(options.cache_type_k_draft, options.cache_type_v_draft, "fp16")
        one_kv, one_compute = _context(draft, n_ctx_draft, 1, ubatch, flash, dk, dv, options.swa_full)
        draft_kv, draft_compute = parallel * one_kv, parallel * one_compute
        draft_w, draft_host = model_buffer_bytes(draft, knobs.draft_dtype)
        host += draft_host
        settings.update({"--ctx-size-draft": n_ctx_draft, "--draft-max": knobs.draft_length,
                         "--cache-type-k-draft": kvtypes.ENGINE_SPELLINGS["llama.cpp"][dk.name],
                         "--cache-type-v-draft": kvtypes.ENGINE_SPELLINGS["llama.cpp"][dv.name]})
        if parallel > 1:
            assumptions.append(f"one draft context per slot: {parallel} x its KV and compute buffer")
    if tp > 1:
        weights, kv = _last_gpu(target, weights, tp), math.ceil(kv / tp)
        draft_w, draft_kv = _last_gpu(draft, draft_w, tp) if draft is not None else 0, math.ceil(draft_kv / tp)
        settings["--split-mode"] = "layer"
        assumptions.append(f"--split-mode layer over {tp} GPUs: each holds 1/{tp} of the layers and their KV, "
                           "the last one the output layer; every GPU keeps a full compute buffer")
    if any(layer.window is not None and not uses_swa(target, layer) for layer in target.cache_layers):
        assumptions.append(f"{target.model_type}: llama.cpp builds this model without sliding-window caches, "
                           "so every layer holds n_ctx cells")
    context = DEFAULT_CONTEXT if options.cuda_context_bytes is None else options.cuda_context_bytes
    assumptions.append(f"CUDA context {context / MIB:.0f} MiB (assumed)")
    compute_all = compute + draft_compute
    total = context + weights + draft_w + kv + draft_kv + compute_all
    if device_total_bytes and total > device_total_bytes and error is None:
        error = (f"cudaMalloc failed: out of memory ({total / MIB:.0f} MiB needed of "
                 f"{device_total_bytes / MIB:.0f} MiB)")
    return EngineMemory(
        engine="llama.cpp", version=VERSION, weights_bytes=weights + draft_w, target_weights_bytes=weights,
        draft_weights_bytes=draft_w, kv_cache_bytes=kv + draft_kv, target_kv_cache_bytes=kv,
        draft_kv_cache_bytes=draft_kv, kv_cache_tokens=n_ctx, max_concurrency=float(parallel),
        activation_peak_bytes=compute_all, compute_buffer_bytes=compute_all, non_torch_bytes=0,
        cuda_graph_bytes=0, sampler_bytes=0, cuda_context_bytes=context, total_bytes=total,
        budget_bytes=None, host_bytes=host, startup_error=error, settings=settings, sources=dict(SOURCES),
        assumptions=tuple(assumptions),
    )


def _last_gpu(model: ModelShape, buffer: int, tp: int) -> int:
    """The last GPU of a layer split: ceil(L / tp) layers' share of the decoder bytes, plus the output layer."""
    output = model.vocab_size * model.hidden_size * 2
    layers = max(0, buffer - output)
    return math.ceil(layers * math.ceil(model.num_layers / tp) / model.num_layers) + min(output, buffer)


def startup_lines(m: EngineMemory) -> tuple[str, ...]:
    """What llama-server logs about its buffers (llama-model.cpp, llama-kv-cache-unified.cpp, llama-context.cpp)."""
    lines = [f"CUDA0 model buffer size = {m.target_weights_bytes / MIB:.2f} MiB",
             f"KV self size = {m.target_kv_cache_bytes / MIB:.2f} MiB",
             f"CUDA0 compute buffer size = {m.compute_buffer_bytes / MIB:.2f} MiB"]
    return tuple(lines) + ((m.startup_error,) if m.startup_error else ())
