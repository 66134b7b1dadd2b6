"""The plan as TensorRT-LLM settings (PyTorch backend): `trtllm-serve` flags plus an extra_llm_api_options file
with the draft-target decoding config and the KV cache's memory fraction."""

from __future__ import annotations

import json

from .facts import (TORCH_DTYPE_NAMES, ExportResult, _Facts, _flags, _float_dtype_note, _free_kv_fraction, one_kv_type,
                    preamble, word)
from .methods import trtllm_spec

# TensorRT-LLM 1.3 (PyTorch backend, LLM API): DraftTargetDecodingConfig(decoding_type "Draft_Target",
# max_draft_len, speculative_model), KvCacheConfig.free_gpu_memory_fraction; trtllm-serve options:
#   https://nvidia.github.io/TensorRT-LLM/llm-api/reference.html
#   https://nvidia.github.io/TensorRT-LLM/commands/trtllm-serve/trtllm-serve.html
TRTLLM_VERSION = "TensorRT-LLM 1.3"
TRTLLM_DOCS = (
    "https://nvidia.github.io/TensorRT-LLM/llm-api/reference.html",
    "https://nvidia.github.io/TensorRT-LLM/commands/trtllm-serve/trtllm-serve.html",
)


def _trtllm(f: _Facts) -> ExportResult:
    unsupported, notes = [], []
    if f.kind != "cuda":
        unsupported.append(f"device: TensorRT-LLM runs on NVIDIA GPUs only; this plan is for a {f.kind} device")
    kv_name = one_kv_type(f, "TensorRT-LLM", unsupported)
    kv = {"fp16": "auto", "bf16": "auto", "fp32": "auto", "fp8": "fp8", "fp8_e4m3": "fp8"}.get(kv_name)
    if kv_name == "fp8_e5m2":
        unsupported.append("fp8_e5m2 KV cache: TensorRT-LLM's fp8 cache is e4m3; exported as fp8")
        kv = "fp8"
    if kv_name == "int8":
        unsupported.append("int8 KV cache: not documented for the PyTorch backend's KvCacheConfig.dtype; 'auto' "
                           "keeps the model dtype")
        kv = "auto"
    dtype = TORCH_DTYPE_NAMES.get(f.weight_dtype, "float16")
    _float_dtype_note(f, "TensorRT-LLM", unsupported)
    fraction = _free_kv_fraction(f)
    options = {
        "kv_cache_config": {"free_gpu_memory_fraction": fraction.value, "dtype": kv},
        "max_batch_size": f.batch,
        "max_seq_len": f.context,
        "max_num_tokens": f.batch * f.chunk,
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": f.num_devices,
        "dtype": dtype,
    }
    if f.drafting is not None and f.drafting.method not in ("draft-model", "none"):
        spec, method_lines = trtllm_spec(f.drafting)
        unsupported += method_lines
        if spec:
            options["speculative_config"] = spec
    elif f.draft:
        options["speculative_config"] = {"decoding_type": "Draft_Target", "max_draft_len": f.k,
                                         "speculative_model": f.draft}
    settings = {"model": f.target, "backend": "pytorch", "extra_llm_api_options": options,
                "request": {"max_tokens": f.max_new_tokens, "temperature": 0.0 if f.greedy else f.temperature,
                            "seed": f.seed}}
    notes.append(fraction.note("free_gpu_memory_fraction") + " (the KV share of the memory left after weights, "
                 "buffers, activations and runtime overhead)")
    notes.append("save extra_llm_api_options as specmemo-trtllm.yaml (YAML or JSON both load)")
    unsupported.append("total memory: TensorRT-LLM sizes the KV cache from free memory after loading; the plan's "
                       "budget binds only through that fraction")
    if f.num_devices > 1:
        unsupported.append("the layer split: --pp_size divides the layers evenly; per-stage layer counts and the "
                           "draft's device are TensorRT-LLM's choice")
    unsupported.append("sampling is per request: send temperature "
                       + ("0 (greedy)" if f.greedy else f"{f.temperature}"))
    # the file spells the fraction as the flag and the note do; a bundled draft's path expands into it ($DRAFT)
    bundled_draft = f.draft_source is not None and f.draft_source.kind == "bundled"
    text = json.dumps(options, indent=2).replace(f'"free_gpu_memory_fraction": {fraction.value}',
                                                 f'"free_gpu_memory_fraction": {fraction.text}')
    if bundled_draft:
        text = text.replace(json.dumps(f.draft), f'"${f.draft_source.var}"')
    delimiter = "EOF" if bundled_draft else "'EOF'"  # quoted: the shell expands nothing inside
    command = (preamble(f.target_source, f.draft_source)
               + f"cat > specmemo-trtllm.yaml <<{delimiter}\n" + text
               + "\nEOF\n" + f"trtllm-serve {word(f.target_source.shell)} \\\n  " + _flags([
                   ("--backend", "pytorch"), ("--max_batch_size", f.batch), ("--max_seq_len", f.context),
                   ("--max_num_tokens", f.batch * f.chunk), ("--tp_size", 1), ("--pp_size", f.num_devices),
                   ("--kv_cache_free_gpu_memory_fraction", fraction),
                   ("--extra_llm_api_options", "specmemo-trtllm.yaml")]))
    return ExportResult("trtllm", TRTLLM_VERSION, settings, command, unsupported, notes, TRTLLM_DOCS)
