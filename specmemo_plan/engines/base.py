"""What every engine model shares: the options an engine takes, the typed result, and tensor parallelism.

`EngineOptions` holds the engines' own flags under their own names (`--gpu-memory-utilization` is
`gpu_memory_utilization`); None means "the engine's default at the version its module names".
`EngineMemory` is the per-GPU answer, every part in bytes, with where each number comes from
(`sources`) and what was assumed (`assumptions`).

Tensor parallelism (vLLM and SGLang build the same layers, SGLang's copied from vLLM's):
- linear layers are split over the ranks (column- and row-parallel), so each rank holds 1/tp of every
  decoder-layer matrix; norms are replicated (vllm/model_executor/layers/linear.py, layernorm.py);
- KV heads: each rank holds max(1, n_kv // tp) heads and replicates them when n_kv < tp
  (vllm/model_executor/models/llama.py `LlamaAttention`: "Number of KV heads is less than TP size, so
  we replicate the KV heads across multiple tensor parallel GPUs"); the KV cache follows;
- embeddings and the output layer are vocabulary-parallel: the vocabulary is padded to a multiple of
  64 rows and split over the ranks (vllm/model_executor/layers/vocab_parallel_embedding.py
  `DEFAULT_VOCAB_PADDING_SIZE = 64`, `pad_vocab_size`);
- a latent (MLA) cache has one head and is replicated on every rank.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from ..errors import SpecMemoError
from ..memory import FLOAT_DTYPES, STORED, dtype_bytes, matrix_params, weight_bytes
from ..models import ModelShape

GIB = 2**30
MIB = 2**20
VOCAB_PADDING = 64  # vLLM/SGLang vocab_parallel_embedding.py DEFAULT_VOCAB_PADDING_SIZE
FLASH_ATTN_VALUES = ("on", "off", "auto")


@dataclass(frozen=True)
class EngineOptions:
    """The engines' own launch flags; None: that engine's default at its named version."""

    # vLLM (`vllm serve`)
    gpu_memory_utilization: float | None = None
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    max_model_len: int | None = None
    enforce_eager: bool = False
    block_size: int | None = None
    # SGLang (`python -m sglang.launch_server`)
    mem_fraction_static: float | None = None
    cuda_graph_max_bs: int | None = None
    chunked_prefill_size: int | None = None
    max_running_requests: int | None = None
    disable_cuda_graph: bool = False
    speculative_algorithm: str | None = None  # EAGLE, EAGLE3, STANDALONE, NGRAM
    speculative_num_steps: int | None = None
    speculative_eagle_topk: int | None = None
    speculative_num_draft_tokens: int | None = None
    page_size: int | None = None
    # llama.cpp (`llama-server`)
    ctx_size: int | None = None
    ctx_size_draft: int | None = None
    ubatch_size: int | None = None
    flash_attn: str | None = None  # on | off | auto
    cache_type_k: str | None = None
    cache_type_v: str | None = None
    cache_type_k_draft: str | None = None
    cache_type_v_draft: str | None = None
    parallel: int | None = None  # -np: sequences sharing the context
    swa_full: bool = False
    # measured or known per machine: they replace the stated assumptions
    non_torch_bytes: int | None = None  # vLLM's "non-torch forward increase memory" from your own log
    cuda_context_bytes: int | None = None  # the CUDA/HIP context (the hardware profile's runtime_overhead_bytes)
    device_name: str = ""  # e.g. "NVIDIA A100-SXM4-80GB": vLLM's batch defaults read it
    sdpa_backend: str | None = None  # this engine and transformers: "math" (score matrix) or "efficient"
    prompt_tokens: int | None = None  # transformers: tokens of the prompt prefilled in one forward

    def validate(self) -> "EngineOptions":
        for name in ("gpu_memory_utilization", "mem_fraction_static"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0 < value <= 1):
                raise SpecMemoError(f"--{name.replace('_', '-')} must be in (0, 1], got {value!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            bad = isinstance(value, bool) or not isinstance(value, int) or value <= 0
            if f.type.startswith("int") and value is not None and bad:
                raise SpecMemoError(f"--{f.name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.flash_attn is not None and str(self.flash_attn).lower() not in FLASH_ATTN_VALUES:
            raise SpecMemoError(f"--flash-attn {self.flash_attn!r} is not known", "use on, off or auto")
        if self.sdpa_backend not in (None, "math", "efficient"):
            raise SpecMemoError(f"SDPA backend {self.sdpa_backend!r} is not known", "use math or efficient")
        for name in ("non_torch_bytes", "cuda_context_bytes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise SpecMemoError(f"{name} must be a non-negative integer, got {value!r}")
        return self


@dataclass(frozen=True)
class EngineMemory:
    """One engine's memory on one GPU, every part in bytes (None: the engine has no such part)."""

    engine: str
    version: str
    weights_bytes: int
    target_weights_bytes: int
    draft_weights_bytes: int
    kv_cache_bytes: int
    target_kv_cache_bytes: int
    draft_kv_cache_bytes: int
    kv_cache_tokens: int | None
    max_concurrency: float | None
    activation_peak_bytes: int
    compute_buffer_bytes: int | None
    non_torch_bytes: int
    cuda_graph_bytes: int
    sampler_bytes: int
    cuda_context_bytes: int
    total_bytes: int  # what the process holds on this GPU at its peak
    budget_bytes: int | None = None  # what the engine's own accounting reserves (vLLM: utilization x total)
    host_bytes: int = 0  # weights the engine keeps in host memory (llama.cpp's token embedding)
    startup_error: str | None = None  # what the engine would print when it refuses to start
    settings: dict = field(default_factory=dict)  # the flags as the engine spells them -> value used
    sources: dict = field(default_factory=dict)  # part -> where its formula comes from
    assumptions: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        out = asdict(self)
        out["assumptions"] = list(self.assumptions)
        return out


# ----------------------------------------------------------------------------- tensor parallelism


def check_tensor_parallel(model: ModelShape, tp: int) -> None:
    """vLLM/SGLang need the attention heads to split evenly, and KV heads to split or replicate evenly
    (vllm/config/parallel.py verify_with_model_config; QKVParallelLinear asserts both)."""
    if not isinstance(tp, int) or tp < 1:
        raise SpecMemoError(f"--tensor-parallel-size must be a positive integer, got {tp!r}")
    if model.num_attention_heads % tp:
        raise SpecMemoError(f"{model.name}: {model.num_attention_heads} attention heads do not split over {tp} GPUs",
                            "choose a --tensor-parallel-size that divides the number of heads")
    kv = model.num_kv_heads
    if model.latent is None and kv % tp and tp % kv:
        raise SpecMemoError(f"{model.name}: {kv} KV heads neither split over nor replicate onto {tp} GPUs",
                            "choose a --tensor-parallel-size that divides, or is a multiple of, the KV heads")


def kv_heads_per_gpu(kv_heads: int, tp: int, latent: bool = False) -> int:
    """max(1, n_kv // tp); a latent cache (one head) is replicated (module docstring)."""
    return kv_heads if latent else max(1, kv_heads // tp)


def kv_token_bytes_per_gpu(model: ModelShape | None, tp: int, element_bytes: float) -> float:
    """Bytes one token adds to one GPU's cache over every layer of `model`:
    sum over layers of kv_heads_per_gpu * (k_dim + v_dim) * b."""
    if model is None:
        return 0
    latent = model.latent is not None
    return sum(kv_heads_per_gpu(layer.kv_heads, tp, latent) * (layer.k_dim + layer.v_dim) * element_bytes
               for layer in model.cache_layers)


def padded_vocab_rows(vocab: int, tp: int) -> int:
    """Rows of one rank's embedding (or output layer): ceil(V / 64) * 64 / tp (module docstring)."""
    return math.ceil(vocab / VOCAB_PADDING) * VOCAB_PADDING // tp


def vocab_params(model: ModelShape) -> int:
    """Embedding and (untied) output layer parameters: V * H each."""
    return model.vocab_size * model.hidden_size * (1 if model.tie_word_embeddings else 2)


def _kv_projection_params(model: ModelShape) -> int:
    """Parameters of the K and V projections (out = n_kv * head_dim, in = hidden), the matrices a
    rank replicates when n_kv < tp."""
    out = model.num_kv_heads * model.head_dim
    return sum(m.params for m in model.matrices
               if not m.expert and m.out_features == out and m.in_features == model.hidden_size)


def sharded_weight_bytes(model: ModelShape | None, dtype: str, tp: int) -> int:
    """One rank's weights: the decoder matrices / tp (K/V replicated to one head per rank when n_kv < tp),
    the padded vocabulary / tp, norms and biases whole (module docstring). tp = 1: memory.weight_bytes.

    Stored (checkpoint-header) weights are split as total / tp: the headers do not say which tensor is
    which layer part (stated by the caller)."""
    if model is None:
        return 0
    total = weight_bytes(model, dtype)
    if tp == 1:
        return total
    if dtype == STORED:
        return math.ceil(total / tp)
    element = dtype_bytes(dtype) if dtype in FLOAT_DTYPES else dtype_bytes("fp16")
    vocab = vocab_params(model) * element
    rest = (model.num_params - vocab_params(model) - matrix_params(model.matrices)) * element  # norms, biases
    matrices = total - vocab - rest
    share = matrices / tp
    if model.latent is None and model.num_kv_heads < tp:
        # each rank keeps one whole KV head instead of 1/tp of all of them
        kv_share = _kv_projection_params(model) / max(1, matrix_params(model.matrices)) * matrices
        share += kv_share / model.num_kv_heads - kv_share / tp
    rows = padded_vocab_rows(model.vocab_size, tp)
    vocab_share = rows * model.hidden_size * element * (1 if model.tie_word_embeddings else 2)
    return int(share) + vocab_share + rest


def rotary_cache_bytes(model: ModelShape | None, dtype: str) -> int:
    """The rotary cos/sin cache vLLM and SGLang keep beside the weights: [max_position, rotary_dim] in the
    compute dtype (vllm/model_executor/layers/rotary_embedding.py RotaryEmbedding._compute_cos_sin_cache:
    cat(cos, sin) of max_position_embeddings rows, registered as a buffer). rotary_dim = head_dim (partial
    rotary is not in ModelShape: stated by the caller). Checked by calibration point P3: Llama-3.1-8B
    loads 14.9889 GiB = 14.9575 GiB of weights + 131072 * 128 * 2 B."""
    if model is None or model.model_type in ("gpt2",):  # learned positions, no rotary cache
        return 0
    element = dtype_bytes(dtype) if dtype in FLOAT_DTYPES else dtype_bytes("fp16")
    return model.max_position_embeddings * model.head_dim * element


def shares_rotary(target: ModelShape, draft: ModelShape | None) -> bool:
    """vLLM caches one rotary module per (head_size, rotary_dim, max_position, base, ...) (rotary_embedding
    get_rope `_ROPE_DICT`): a draft with the target's head size and positions reuses it. The rope base is
    not in ModelShape: assumed equal."""
    return draft is not None and (draft.head_dim, draft.max_position_embeddings) == (
        target.head_dim, target.max_position_embeddings)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)
