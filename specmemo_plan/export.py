"""Plan -> the settings that reproduce it in another engine: vLLM, SGLang, llama.cpp, TensorRT-LLM, HF generate.

Each exporter names the engine version whose documentation its option names were checked against (the
`*_VERSION` and `*_DOCS` constants below) and lists, in `unsupported`, every part of the plan that engine
cannot express. Nothing here imports an engine: the output is settings and a command line.

Memory fractions are derived from the plan's per-device budget and rounded *down* to 0.001, so the
engine never takes more than the plan's budget:
- vLLM `gpu_memory_utilization` = budget / device memory (vLLM's cap on everything it allocates);
- SGLang `mem_fraction_static` = (budget - activations - candidate buffers - runtime overhead) / device
  memory (SGLang's weights + KV pool share);
- TensorRT-LLM `free_gpu_memory_fraction` = (budget - everything but KV) / (device memory - everything but KV)
  (the KV cache's share of the memory left after weights and buffers).
With several devices the smallest per-device value is used (these engines take one value for all GPUs).

Pure Python: no torch at import.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field

from .errors import SpecMemoError, close_names
from .memory import compute_dtype
from .plan import Plan

ENGINES = ("vllm", "sglang", "llama.cpp", "trtllm", "hf")

# vLLM 0.25.0. Draft models through --speculative-config with method "draft_model":
#   https://docs.vllm.ai/en/v0.25.0/features/speculative_decoding/draft_model/
# keys of --speculative-config (docs/features/speculative_decoding/configuration.md in the vLLM repo);
# engine arguments: https://docs.vllm.ai/en/v0.25.0/configuration/engine_args/ ; the pipeline layer split
# through the VLLM_PP_LAYER_PARTITION environment variable (vllm/envs.py).
VLLM_VERSION = "vLLM 0.25.0"
VLLM_DOCS = (
    "https://docs.vllm.ai/en/v0.25.0/features/speculative_decoding/draft_model/",
    "https://docs.vllm.ai/en/v0.25.0/configuration/engine_args/",
)
# SGLang 0.5.10. STANDALONE speculative decoding (a small draft LLM) and the server arguments:
#   https://docs.sglang.io/advanced_features/speculative_decoding.html (Standalone Speculative Decoding)
#   https://docs.sglang.io/advanced_features/server_arguments.html
SGLANG_VERSION = "SGLang 0.5.10"
SGLANG_DOCS = (
    "https://docs.sglang.io/advanced_features/speculative_decoding.html",
    "https://docs.sglang.io/advanced_features/server_arguments.html",
)
# llama.cpp b9245 (May 2026): llama-server after the speculative-parameter rename (ggml-org/llama.cpp
# PR #22397 and #22964): --spec-type draft-simple, --spec-draft-model (-md), --spec-draft-n-max/-n-min,
# --spec-draft-ngl (-ngld); --draft-max/--draft-min/-cd were removed. tools/server/README.md:
#   https://github.com/ggml-org/llama.cpp/blob/master/tools/server/README.md
LLAMACPP_VERSION = "llama.cpp b9245"
LLAMACPP_DOCS = (
    "https://github.com/ggml-org/llama.cpp/blob/master/tools/server/README.md",
    "https://github.com/ggml-org/llama.cpp/pull/22397",
)
# TensorRT-LLM 1.3 (PyTorch backend, LLM API): DraftTargetDecodingConfig(decoding_type "Draft_Target",
# max_draft_len, speculative_model), KvCacheConfig.free_gpu_memory_fraction; trtllm-serve options:
#   https://nvidia.github.io/TensorRT-LLM/llm-api/reference.html
#   https://nvidia.github.io/TensorRT-LLM/commands/trtllm-serve/trtllm-serve.html
TRTLLM_VERSION = "TensorRT-LLM 1.3"
TRTLLM_DOCS = (
    "https://nvidia.github.io/TensorRT-LLM/llm-api/reference.html",
    "https://nvidia.github.io/TensorRT-LLM/commands/trtllm-serve/trtllm-serve.html",
)
# transformers 5.24 assisted generation (checked in its source, generation/utils.py and
# generation/candidate_generator.py): the draft length comes from the *assistant's* generation_config
# (num_assistant_tokens, num_assistant_tokens_schedule, assistant_confidence_threshold), and
# "assisted generate is only supported for batch_size = 1".
#   https://huggingface.co/docs/transformers/main/en/generation_strategies#speculative-decoding
HF_VERSION = "transformers 5.24"
HF_DOCS = ("https://huggingface.co/docs/transformers/main/en/generation_strategies#speculative-decoding",)

TORCH_DTYPE_NAMES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


@dataclass(frozen=True)
class ExportResult:
    engine: str  # one of ENGINES
    engine_version: str  # the version whose documentation the option names follow
    settings: dict  # option -> value, as the engine names them
    command: str  # a command line (or Python snippet) that applies them
    unsupported: list[str] = field(default_factory=list)  # parts of the plan the engine cannot express
    notes: list[str] = field(default_factory=list)  # how a value was derived, what to check
    docs: tuple[str, ...] = ()  # where the option names come from

    def as_dict(self) -> dict:
        return {
            "engine": self.engine, "engine_version": self.engine_version, "docs": list(self.docs),
            "settings": self.settings, "command": self.command, "unsupported": list(self.unsupported),
            "notes": list(self.notes),
        }


# ----------------------------------------------------------------------------- plan facts


def floor3(x: float) -> float:
    """Round down to 0.001: a memory fraction the engine may use without passing the plan's budget."""
    return math.floor(x * 1000 + 1e-9) / 1000


def model_id(ref: str) -> str:
    """What an engine loads for a plan's model reference: a preset's Hugging Face repo, a bundled model's
    path, or the path as given."""
    from .models import BUNDLED_MODELS, bundled_path, list_presets, load_preset_config

    if ref.startswith("bundled:"):
        name = ref.split(":", 1)[1]
        if name in BUNDLED_MODELS:
            try:
                return str(bundled_path(name))
            except SpecMemoError:
                return ref
        return ref
    if ref in list_presets():
        return load_preset_config(ref).get("_specmemo_source", ref)
    return ref


@dataclass(frozen=True)
class _Facts:
    """The numbers every exporter needs, read once from the plan."""

    target: str
    draft: str | None
    k: int
    batch: int
    context: int
    chunk: int
    weight_dtype: str
    draft_dtype: str | None
    kv_dtype: str
    num_devices: int
    device_memory: int
    kind: str
    per_device: list  # dicts: budget_bytes, components (one entry for a one-device plan)
    layers_per_device: list  # decoder layers per device (empty for one-device plans)
    draft_device: int
    greedy: bool
    temperature: float
    seed: int
    max_new_tokens: int


def _facts(plan: Plan) -> _Facts:
    knobs = plan.knobs
    if plan.per_device:
        per_device = [{"budget_bytes": e["budget_bytes"], "components": e["components"]} for e in plan.per_device]
        layers = [e.get("num_layers", 0) for e in plan.per_device]
        draft_device = next((e.get("index", i) for i, e in enumerate(plan.per_device)
                             if "draft" in (e.get("holds") or [])), 0)
    else:
        per_device = [{"budget_bytes": plan.budget_bytes, "components": plan.prediction.memory["components"]}]
        layers, draft_device = [], 0
    return _Facts(
        target=model_id(plan.target.ref), draft=model_id(plan.draft.ref) if plan.draft else None,
        k=knobs.draft_length, batch=knobs.batch_size, context=knobs.max_context, chunk=knobs.chunk,
        weight_dtype=knobs.weight_dtype, draft_dtype=knobs.draft_weight_dtype, kv_dtype=knobs.cache_dtype,
        num_devices=plan.device.count, device_memory=plan.device.total_memory_bytes, kind=plan.device.kind,
        per_device=per_device, layers_per_device=layers, draft_device=draft_device,
        greedy=plan.generation.sampling == "greedy", temperature=plan.generation.temperature,
        seed=plan.generation.seed, max_new_tokens=plan.generation.max_new_tokens,
    )


def _used(f: _Facts):
    return [d for d in f.per_device if sum(d["components"].values()) > 0]


def _utilization(f: _Facts) -> float:
    return floor3(min(d["budget_bytes"] for d in _used(f)) / f.device_memory)


def _static_fraction(f: _Facts) -> float:
    def static(d):
        c = d["components"]
        return d["budget_bytes"] - c["activations"] - c["candidate_buffers"] - c["runtime_overhead"]

    return floor3(min(static(d) for d in _used(f)) / f.device_memory)


def _free_kv_fraction(f: _Facts) -> float:
    def share(d):
        c = d["components"]
        rest = sum(c.values()) - c["target_kv"] - c["draft_kv"]
        return (d["budget_bytes"] - rest) / (f.device_memory - rest)

    return floor3(min(share(d) for d in _used(f)))


QUANTISED_CHECKPOINTS = {
    "int4": "a GPTQ or AWQ int4 checkpoint (groups of 128, as the plan assumes)",
    "int8": "an int8 checkpoint (GPTQ 8-bit or bitsandbytes LLM.int8)",
    "fp8": "an FP8 checkpoint, or on-the-fly FP8 (--quantization fp8 where the engine has it)",
}


def _float_dtype_note(f: _Facts, engine: str, out: list) -> None:
    for label, dtype in (("target", f.weight_dtype), ("draft", f.draft_dtype or f.weight_dtype)):
        if label == "draft" and not f.draft:
            continue
        if dtype not in TORCH_DTYPE_NAMES:
            out.append(f"{label} weights in {dtype}: {engine} takes the quantisation from the model it loads; give it "
                       f"{QUANTISED_CHECKPOINTS[dtype]}; its bytes differ slightly from the plan's")


def _flags(pairs) -> str:
    parts = []
    for flag, value in pairs:
        if value is None or value is False:
            continue
        parts.append(flag if value is True else f"{flag} {shlex.quote(str(value))}")
    return " \\\n  ".join(parts)


# ----------------------------------------------------------------------------- vLLM


def _needs_gpu(f: _Facts, engine: str, out: list) -> None:
    if f.kind == "cpu":
        out.append(f"device: this plan is for the CPU; {engine}'s speculative decoding runs on GPUs")


def _vllm(f: _Facts) -> ExportResult:
    unsupported, notes = [], []
    _needs_gpu(f, "vLLM", unsupported)
    spec = {"method": "draft_model", "model": f.draft, "num_speculative_tokens": f.k} if f.draft else None
    kv = {"fp16": "auto", "bf16": "auto", "fp32": "auto", "fp8": "fp8"}.get(f.kv_dtype)
    if f.kv_dtype == "int8":
        unsupported.append("int8 KV cache: not among vLLM's --kv-cache-dtype choices (auto, fp8, fp8_e4m3, fp8_e5m2); "
                           "'auto' keeps the model dtype and needs about twice the plan's KV bytes")
        kv = "auto"
    if f.kv_dtype == "fp32" and f.weight_dtype != "fp32":
        unsupported.append("fp32 KV cache with 16-bit weights: vLLM's KV follows the model dtype")
    dtype = TORCH_DTYPE_NAMES.get(f.weight_dtype, "float16")
    _float_dtype_note(f, "vLLM", unsupported)
    settings = {
        "model": f.target,
        "speculative_config": spec,
        "gpu_memory_utilization": _utilization(f),
        "max_num_seqs": f.batch,
        "max_model_len": f.context,
        "max_num_batched_tokens": f.batch * f.chunk,
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": f.num_devices,
        "dtype": dtype,
        "kv_cache_dtype": kv,
        "seed": f.seed,
    }
    if f.weight_dtype == "fp8":
        settings["quantization"] = "fp8"
    env = {}
    if f.num_devices > 1 and f.layers_per_device:
        env["VLLM_PP_LAYER_PARTITION"] = ",".join(str(n) for n in f.layers_per_device)
        settings["env"] = env
        notes.append("VLLM_PP_LAYER_PARTITION gives each pipeline stage the plan's decoder layers; vLLM keeps "
                     "the embedding on the first stage and the output layer on the last, as the plan does")
        unsupported.append(f"the draft's device: vLLM places the draft model itself; the plan puts it on device "
                           f"{f.draft_device} next to the logits" if f.draft else "")
        unsupported.append("pipeline parallelism together with a draft model is not documented for the "
                           "draft_model method; if vLLM refuses it, use --tensor-parallel-size "
                           f"{f.num_devices} (every GPU holds 1/{f.num_devices} of each layer: another split)")
        if len({d['budget_bytes'] for d in f.per_device}) > 1:
            unsupported.append("different budgets per device: vLLM takes one --gpu-memory-utilization; "
                               "the smallest device's share is used")
    settings["request"] = {"max_tokens": f.max_new_tokens, "temperature": 0.0 if f.greedy else f.temperature}
    notes.append(f"gpu_memory_utilization = budget / device memory = {settings['gpu_memory_utilization']} "
                 "(rounded down to 0.001)")
    unsupported.append("KV sizing: vLLM fills what gpu_memory_utilization leaves with paged KV blocks (16 tokens "
                       "each) instead of allocating batch x context; max_num_seqs and max_model_len cap the same "
                       "batch and context, but the pool is not the plan's exact KV bytes")
    unsupported.append(f"prefill chunk: vLLM's --max-num-batched-tokens caps the tokens of one scheduler step over "
                       f"all sequences (prefill chunks and decode tokens together); {f.batch} x {f.chunk} bounds the "
                       "plan's largest forward, not its per-sequence chunking")
    unsupported.append("sampling is per request in vLLM: send temperature "
                       + ("0 (greedy)" if f.greedy else f"{f.temperature}") + f" and max_tokens {f.max_new_tokens}")
    flags = [("--speculative-config", json.dumps(spec, separators=(", ", ": ")) if spec else None),
             ("--gpu-memory-utilization", settings["gpu_memory_utilization"]),
             ("--max-num-seqs", f.batch), ("--max-model-len", f.context),
             ("--max-num-batched-tokens", settings["max_num_batched_tokens"]),
             ("--tensor-parallel-size", 1), ("--pipeline-parallel-size", f.num_devices),
             ("--dtype", dtype), ("--kv-cache-dtype", kv), ("--quantization", settings.get("quantization")),
             ("--seed", f.seed)]
    prefix = "".join(f"{k}={shlex.quote(v)} " for k, v in env.items())
    command = f"{prefix}vllm serve {shlex.quote(f.target)} \\\n  " + _flags(flags)
    return ExportResult("vllm", VLLM_VERSION, settings, command, [u for u in unsupported if u], notes, VLLM_DOCS)


# ----------------------------------------------------------------------------- SGLang


def _sglang(f: _Facts) -> ExportResult:
    unsupported, notes = [], []
    _needs_gpu(f, "SGLang", unsupported)
    kv = {"fp16": "auto", "bf16": "auto", "fp32": "auto", "fp8": "fp8_e4m3"}.get(f.kv_dtype)
    if f.kv_dtype == "int8":
        unsupported.append("int8 KV cache: not among SGLang's --kv-cache-dtype choices (auto, fp8_e5m2, fp8_e4m3, "
                           "bf16, fp4_e2m1); 'auto' keeps the model dtype")
        kv = "auto"
    dtype = TORCH_DTYPE_NAMES.get(f.weight_dtype, "float16")
    _float_dtype_note(f, "SGLang", unsupported)
    settings = {"model_path": f.target}
    if f.draft:
        settings.update({
            "speculative_algorithm": "STANDALONE",
            "speculative_draft_model_path": f.draft,
            "speculative_num_steps": f.k,  # draft depth: k draft forwards
            "speculative_eagle_topk": 1,  # one candidate per step: a chain, as the plan drafts
            "speculative_num_draft_tokens": f.k + 1,  # verified per step: k drafts + 1 (topk 1 => num_steps + 1)
        })
    settings.update({
        "mem_fraction_static": _static_fraction(f),
        "max_running_requests": f.batch,
        "context_length": f.context,
        "chunked_prefill_size": f.batch * f.chunk,
        "tp_size": 1,
        "pp_size": f.num_devices,
        "dtype": dtype,
        "kv_cache_dtype": kv,
        "random_seed": f.seed,
    })
    if f.weight_dtype == "fp8":
        settings["quantization"] = "fp8"
    settings["request"] = {"max_new_tokens": f.max_new_tokens, "temperature": 0.0 if f.greedy else f.temperature}
    notes.append(f"mem_fraction_static = (budget - activations - candidate buffers - runtime overhead) / device "
                 f"memory = {settings['mem_fraction_static']} (weights + KV pool; rounded down to 0.001)")
    unsupported.append("total memory: SGLang caps only its static part (weights + KV pool); activations and CUDA "
                       "graphs come on top, unbounded by the plan")
    unsupported.append("KV sizing: the KV pool is what mem_fraction_static leaves after the weights, in tokens "
                       "shared by all requests, not batch x context per sequence")
    if f.num_devices > 1:
        unsupported.append("the layer split: SGLang's --pp-size divides the layers itself (no per-stage layer "
                           "counts); the draft's device is SGLang's choice")
        unsupported.append("STANDALONE speculative decoding with pipeline parallelism is not documented; "
                           f"if refused, use --tp-size {f.num_devices}")
    unsupported.append("sampling is per request in SGLang: send temperature "
                       + ("0 (greedy)" if f.greedy else f"{f.temperature}"))
    flags = [("--model-path", f.target)]
    if f.draft:
        flags += [("--speculative-algorithm", "STANDALONE"), ("--speculative-draft-model-path", f.draft),
                  ("--speculative-num-steps", f.k), ("--speculative-eagle-topk", 1),
                  ("--speculative-num-draft-tokens", f.k + 1)]
    flags += [("--mem-fraction-static", settings["mem_fraction_static"]), ("--max-running-requests", f.batch),
              ("--context-length", f.context), ("--chunked-prefill-size", settings["chunked_prefill_size"]),
              ("--tp-size", 1), ("--pp-size", f.num_devices), ("--dtype", dtype), ("--kv-cache-dtype", kv),
              ("--quantization", settings.get("quantization")), ("--random-seed", f.seed)]
    command = "python -m sglang.launch_server \\\n  " + _flags(flags)
    return ExportResult("sglang", SGLANG_VERSION, settings, command, unsupported, notes, SGLANG_DOCS)


# ----------------------------------------------------------------------------- llama.cpp


def _gguf(ref: str) -> str:
    return ref if ref.endswith(".gguf") else ref.rstrip("/").split("/")[-1] + ".gguf"


def _llamacpp(f: _Facts) -> ExportResult:
    unsupported, notes = [], []
    cache = {"fp16": "f16", "bf16": "bf16", "fp32": "f32", "int8": "q8_0", "fp8": "q8_0"}[f.kv_dtype]
    if f.kv_dtype == "fp8":
        unsupported.append("fp8 KV cache: llama.cpp has no fp8 cache type; q8_0 (8.5 bits per value) is the "
                           "closest and takes about 6% more than the plan's KV")
    if f.kv_dtype == "int8":
        notes.append("int8 KV -> q8_0: blocks of 32 values with one fp16 scale (8.5 bits per value)")
    gguf_types = {"fp16": "F16", "bf16": "BF16", "fp32": "F32", "int8": "Q8_0", "int4": "Q4_0", "fp8": None}
    target, draft = _gguf(f.target), _gguf(f.draft) if f.draft else None
    if not f.target.endswith(".gguf") or (f.draft and not f.draft.endswith(".gguf")):
        notes.append("llama.cpp loads GGUF files: convert the Hugging Face models with convert_hf_to_gguf.py "
                     f"(--outtype {gguf_types.get(f.weight_dtype) or 'f16'}) and pass their paths")
    if f.weight_dtype == "fp8" or (f.draft_dtype == "fp8"):
        unsupported.append("fp8 weights: GGUF has no fp8 type; use Q8_0")
    if f.weight_dtype == "int4":
        notes.append("int4 -> Q4_0 (4.5 bits per weight); the plan's int4 counts GPTQ-style groups of 128")
    total_ctx = f.batch * f.context
    ngl = 0 if f.kind == "cpu" else "all"  # layers offloaded to the GPU: all of them, none on a CPU plan
    settings = {"model": target}
    if f.draft:
        settings.update({"spec_type": "draft-simple", "spec_draft_model": draft, "spec_draft_n_max": f.k,
                         "spec_draft_n_min": f.k, "spec_draft_p_min": 0.0,
                         "spec_draft_sampling": "greedy" if f.greedy else "probabilistic",
                         "spec_draft_ngl": ngl, "cache_type_k_draft": cache, "cache_type_v_draft": cache})
    settings.update({"ctx_size": total_ctx, "parallel": f.batch, "n_gpu_layers": ngl, "cache_type_k": cache,
                     "cache_type_v": cache, "batch_size": f.batch * f.chunk, "ubatch_size": f.batch * f.chunk,
                     "fit": "off", "n_predict": f.max_new_tokens, "temperature": 0.0 if f.greedy else f.temperature,
                     "seed": f.seed})
    backend = "ROCm" if f.kind == "rocm" else "CUDA"
    if f.num_devices > 1 and f.layers_per_device:
        settings["split_mode"] = "layer"
        settings["tensor_split"] = ",".join(str(n) for n in f.layers_per_device)
        if f.draft:
            settings["spec_draft_device"] = f"{backend}{f.draft_device}"
        notes.append("--tensor-split takes proportions: the plan's decoder layers per device; llama.cpp puts the "
                     "output layer on the last device as the plan does")
    notes.append(f"-c is the KV of all {f.batch} slots together: {f.batch} x {f.context} = {total_ctx} tokens")
    if f.draft:
        notes.append(f"--spec-draft-n-min {f.k} with --spec-draft-p-min 0 keeps k = {f.k} every step, as the plan "
                     "(llama.cpp would otherwise stop drafting early on low draft confidence)")
    unsupported.append("memory budget: llama.cpp has no memory cap; with --fit off it allocates what -c, -np and "
                       "the batch sizes ask, so the plan's total holds only as far as its GGUF sizes match")
    unsupported.append("draft context: builds since b9145 give the draft the target's context (no -cd); the plan's "
                       "draft KV assumes the same context, so nothing is lost")
    flags = [("-m", target)]
    if f.draft:
        flags += [("--spec-type", "draft-simple"), ("-md", draft), ("--spec-draft-n-max", f.k),
                  ("--spec-draft-n-min", f.k), ("--spec-draft-p-min", 0.0),
                  ("--spec-draft-sampling", settings["spec_draft_sampling"]), ("-ngld", ngl),
                  ("-ctkd", cache), ("-ctvd", cache)]
        if "spec_draft_device" in settings:
            flags.append(("-devd", settings["spec_draft_device"]))
    flags += [("-c", total_ctx), ("-np", f.batch), ("-ngl", ngl), ("-ctk", cache), ("-ctv", cache),
              ("-b", f.batch * f.chunk), ("-ub", f.batch * f.chunk)]
    if "tensor_split" in settings:
        flags += [("-sm", "layer"), ("-ts", settings["tensor_split"])]
    flags += [("--fit", "off"), ("-n", f.max_new_tokens), ("--temp", settings["temperature"]), ("-s", f.seed)]
    command = "llama-server \\\n  " + _flags(flags)
    return ExportResult("llama.cpp", LLAMACPP_VERSION, settings, command, unsupported, notes, LLAMACPP_DOCS)


# ----------------------------------------------------------------------------- TensorRT-LLM


def _trtllm(f: _Facts) -> ExportResult:
    unsupported, notes = [], []
    if f.kind != "cuda":
        unsupported.append(f"device: TensorRT-LLM runs on NVIDIA GPUs only; this plan is for a {f.kind} device")
    kv = {"fp16": "auto", "bf16": "auto", "fp32": "auto", "fp8": "fp8"}.get(f.kv_dtype)
    if f.kv_dtype == "int8":
        unsupported.append("int8 KV cache: not documented for the PyTorch backend's KvCacheConfig.dtype; 'auto' "
                           "keeps the model dtype")
        kv = "auto"
    dtype = TORCH_DTYPE_NAMES.get(f.weight_dtype, "float16")
    _float_dtype_note(f, "TensorRT-LLM", unsupported)
    fraction = _free_kv_fraction(f)
    options = {
        "kv_cache_config": {"free_gpu_memory_fraction": fraction, "dtype": kv},
        "max_batch_size": f.batch,
        "max_seq_len": f.context,
        "max_num_tokens": f.batch * f.chunk,
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": f.num_devices,
        "dtype": dtype,
    }
    if f.draft:
        options["speculative_config"] = {"decoding_type": "Draft_Target", "max_draft_len": f.k,
                                         "speculative_model": f.draft}
    settings = {"model": f.target, "backend": "pytorch", "extra_llm_api_options": options,
                "request": {"max_tokens": f.max_new_tokens, "temperature": 0.0 if f.greedy else f.temperature,
                            "seed": f.seed}}
    notes.append(f"free_gpu_memory_fraction = KV share of the memory left after weights, buffers, activations and "
                 f"runtime overhead = {fraction} (rounded down to 0.001)")
    notes.append("save extra_llm_api_options as specmemo-trtllm.yaml (YAML or JSON both load)")
    unsupported.append("total memory: TensorRT-LLM sizes the KV cache from free memory after loading; the plan's "
                       "budget binds only through that fraction")
    if f.num_devices > 1:
        unsupported.append("the layer split: --pp_size divides the layers evenly; per-stage layer counts and the "
                           "draft's device are TensorRT-LLM's choice")
    unsupported.append("sampling is per request: send temperature " + ("0 (greedy)" if f.greedy else f"{f.temperature}"))
    yaml_lines = json.dumps(options, indent=2)
    command = ("cat > specmemo-trtllm.yaml <<'EOF'\n" + yaml_lines + "\nEOF\n"
               + f"trtllm-serve {shlex.quote(f.target)} \\\n  " + _flags([
                   ("--backend", "pytorch"), ("--max_batch_size", f.batch), ("--max_seq_len", f.context),
                   ("--max_num_tokens", f.batch * f.chunk), ("--tp_size", 1), ("--pp_size", f.num_devices),
                   ("--kv_cache_free_gpu_memory_fraction", fraction),
                   ("--extra_llm_api_options", "specmemo-trtllm.yaml")]))
    return ExportResult("trtllm", TRTLLM_VERSION, settings, command, unsupported, notes, TRTLLM_DOCS)


# ----------------------------------------------------------------------------- transformers generate


def _hf(f: _Facts, plan: Plan) -> ExportResult:
    from .split import device_map_from_plan

    unsupported, notes = [], []
    target_map, draft_map, max_memory = device_map_from_plan(plan)
    if f.kind == "cpu":  # transformers' device_map takes "cpu", not a GPU index
        target_map = {k: "cpu" for k in target_map}
        draft_map = {k: "cpu" for k in draft_map} if draft_map else None
        max_memory = None
    dtype = TORCH_DTYPE_NAMES.get(f.weight_dtype)
    draft_dtype = TORCH_DTYPE_NAMES.get(f.draft_dtype or f.weight_dtype)
    if dtype is None or (f.draft and draft_dtype is None):
        unsupported.append("int8/int4/fp8 weights: load with a quantization_config (bitsandbytes, GPTQ, AWQ or "
                           "FP8) or a quantised checkpoint; the plan's bytes assume its own scale layout")
        dtype, draft_dtype = dtype or "float16", draft_dtype or "float16"
    target_load = {"pretrained_model_name_or_path": f.target, "dtype": dtype, "device_map": target_map}
    if max_memory:
        target_load["max_memory"] = {int(k): v for k, v in max_memory.items()}
    settings = {"target": target_load}
    generate = {"max_new_tokens": f.max_new_tokens, "do_sample": not f.greedy}
    if not f.greedy:
        generate["temperature"] = f.temperature
    if f.draft:
        settings["draft"] = {"pretrained_model_name_or_path": f.draft, "dtype": draft_dtype, "device_map": draft_map}
        settings["assistant_generation_config"] = {
            "num_assistant_tokens": f.k,
            "num_assistant_tokens_schedule": "constant",
            "assistant_confidence_threshold": 0.0,
        }
        generate["assistant_model"] = "<the draft model>"
    settings["generate"] = generate
    settings["seed"] = f.seed
    if f.batch > 1:
        unsupported.append(f"batch {f.batch}: transformers' assisted generation runs one sequence at a time "
                           "(\"assisted generate is only supported for batch_size = 1\"); run requests one by one")
    unsupported.append("memory budget: generate has no memory cap; its DynamicCache grows with the sequence "
                       "instead of the plan's preallocated batch x (context + k) slots")
    unsupported.append(f"prefill chunk: generate runs the whole prompt in one forward (the plan's chunk is {f.chunk})")
    if f.kv_dtype != compute_dtype(f.weight_dtype):
        unsupported.append(f"{f.kv_dtype} KV cache: quantised caches are not combined with assisted generation; "
                           "the cache keeps the model dtype")
    notes.append("transformers 5.24 reads the draft length from the assistant's generation_config, not from "
                 "generate() keyword arguments; confidence threshold 0 keeps k constant (the default 0.4 stops "
                 "drafting early)")
    if len(set(target_map.values())) > 1:
        notes.append("device_map is the plan's layer split; max_memory reproduces it if you pass "
                     "device_map='sequential' instead")
    lines = ["import torch", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             f"torch.manual_seed({f.seed})",
             f"target = AutoModelForCausalLM.from_pretrained({f.target!r}, dtype=torch.{dtype},",
             f"    device_map={target_map!r}" + (f", max_memory={target_load['max_memory']!r})" if max_memory else ")")]
    if f.draft:
        lines += [f"draft = AutoModelForCausalLM.from_pretrained({f.draft!r}, dtype=torch.{draft_dtype}, "
                  f"device_map={draft_map!r})",
                  f"draft.generation_config.num_assistant_tokens = {f.k}",
                  "draft.generation_config.num_assistant_tokens_schedule = \"constant\"",
                  "draft.generation_config.assistant_confidence_threshold = 0.0"]
    lines += [f"tokenizer = AutoTokenizer.from_pretrained({f.target!r})",
              "inputs = tokenizer(prompt, return_tensors=\"pt\").to(target.device)",
              "out = target.generate(**inputs" + (", assistant_model=draft" if f.draft else "")
              + f", max_new_tokens={f.max_new_tokens}, do_sample={not f.greedy}"
              + ("" if f.greedy else f", temperature={f.temperature}") + ")"]
    return ExportResult("hf", HF_VERSION, settings, "\n".join(lines), unsupported, notes, HF_DOCS)


# ----------------------------------------------------------------------------- entry point


def export_plan(plan: Plan, engine: str) -> ExportResult:
    """The settings that reproduce `plan` in `engine` (one of ENGINES; "llamacpp" and "llama-cpp" also work)."""
    key = engine.strip().lower()
    key = {"llamacpp": "llama.cpp", "llama-cpp": "llama.cpp", "tensorrt-llm": "trtllm", "transformers": "hf",
           "tensorrt_llm": "trtllm"}.get(key, key)
    if key not in ENGINES:
        raise SpecMemoError(f"unknown engine '{engine}'", close_names(key, ENGINES))
    f = _facts(plan)
    if key == "vllm":
        return _vllm(f)
    if key == "sglang":
        return _sglang(f)
    if key == "llama.cpp":
        return _llamacpp(f)
    if key == "trtllm":
        return _trtllm(f)
    return _hf(f, plan)
