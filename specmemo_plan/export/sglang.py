"""The plan as `sglang.launch_server` options: a small draft LLM through STANDALONE speculative decoding."""

from __future__ import annotations

from ..engines.sglang import EXPORT_VERSION, SERVE_DOCS
from .engine_share import EngineCheck, choose_share
from .facts import (TORCH_DTYPE_NAMES, ExportResult, _Facts, _flags, _float_dtype_note, _needs_gpu, _static_fraction,
                    one_kv_type, preamble)
from .methods import sglang_spec

# The options of SGLang 0.5.10 (engines/sglang.py SERVE_VERSION): STANDALONE speculative decoding (a small draft
# LLM, SERVE_DOCS[0], "Standalone Speculative Decoding") and the server arguments (SERVE_DOCS[1]),
# --disable-cuda-graph among them. The memory share is chosen by engines/sglang.py (engine_share.py).
SGLANG_VERSION = EXPORT_VERSION
SGLANG_DOCS = SERVE_DOCS


def _sglang(f: _Facts) -> ExportResult:
    unsupported, notes = [], []
    _needs_gpu(f, "SGLang", unsupported)
    kv_name = one_kv_type(f, "SGLang", unsupported)
    kv = {"fp16": "auto", "bf16": "auto", "fp32": "auto", "fp8": "fp8_e4m3", "fp8_e4m3": "fp8_e4m3",
          "fp8_e5m2": "fp8_e5m2"}.get(kv_name)
    if kv_name == "int8":
        unsupported.append("int8 KV cache: not among SGLang's --kv-cache-dtype choices (auto, fp8_e5m2, fp8_e4m3, "
                           "bf16, fp4_e2m1); 'auto' keeps the model dtype")
        kv = "auto"
    dtype = TORCH_DTYPE_NAMES.get(f.weight_dtype, "float16")
    _float_dtype_note(f, "SGLang", unsupported)
    settings = {"model_path": f.target}
    method_spec = None
    if f.drafting is not None and f.drafting.method not in ("draft-model", "none"):
        method_spec, method_lines = sglang_spec(f.drafting)
        unsupported += method_lines
        settings.update(method_spec)
    elif f.draft:
        settings.update({
            "speculative_algorithm": "STANDALONE",
            "speculative_draft_model_path": f.draft,
            "speculative_num_steps": f.k,  # draft depth: k draft forwards
            "speculative_eagle_topk": 1,  # one candidate per step: a chain, as the plan drafts
            "speculative_num_draft_tokens": f.k + 1,  # verified per step: k drafts + 1 (topk 1 => num_steps + 1)
        })
    settings.update({
        "mem_fraction_static": None,  # chosen below, from the other settings
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
    if f.enforce_eager:
        settings["disable_cuda_graph"] = True
    static = _static_fraction(f)  # refused at 0 or over 1 before anything is sized
    chosen = choose_share(f, "sglang", settings) if isinstance(f.check, EngineCheck) else str(f.check)
    if not isinstance(chosen, str):  # one GPU: the largest share SGLang's accounting keeps in the budget
        static, share_notes = chosen
        notes += share_notes
        notes.append("SGLang caps only its static part (weights + KV pool + the CUDA context); the draft's weights "
                     "and pool, activations and CUDA graphs come on top: the share leaves room for them")
    else:
        notes.append(static.note("mem_fraction_static") + " (SGLang's weights + KV pool)")
        unsupported.append(f"total memory: not checked by SGLang's accounting ({chosen}); SGLang caps only its "
                           "static part (weights + KV pool); activations and CUDA graphs come on top")
    settings["mem_fraction_static"] = static.value  # computed once: the option, its note and this
    settings["request"] = {"max_new_tokens": f.max_new_tokens, "temperature": 0.0 if f.greedy else f.temperature}
    unsupported.append("KV sizing: the KV pool is what mem_fraction_static leaves after the weights, in tokens "
                       "shared by all requests, not batch x context per sequence")
    if f.num_devices > 1:
        unsupported.append("the layer split: SGLang's --pp-size divides the layers itself (no per-stage layer "
                           "counts); the draft's device is SGLang's choice")
        unsupported.append("STANDALONE speculative decoding with pipeline parallelism is not documented; "
                           f"if refused, use --tp-size {f.num_devices}")
    unsupported.append("sampling is per request in SGLang: send temperature "
                       + ("0 (greedy)" if f.greedy else f"{f.temperature}"))
    flags = [("--model-path", f.target_source.shell)]
    if method_spec is not None:  # the method's flags, spelled as SGLang's settings with dashes
        flags += [("--" + key.replace("_", "-"), f.draft_source.shell if key == "speculative_draft_model_path"
                   else value) for key, value in method_spec.items()]
    elif f.draft:
        flags += [("--speculative-algorithm", "STANDALONE"), ("--speculative-draft-model-path", f.draft_source.shell),
                  ("--speculative-num-steps", f.k), ("--speculative-eagle-topk", 1),
                  ("--speculative-num-draft-tokens", f.k + 1)]
    flags += [("--mem-fraction-static", static), ("--max-running-requests", f.batch),
              ("--context-length", f.context), ("--chunked-prefill-size", settings["chunked_prefill_size"]),
              ("--tp-size", 1), ("--pp-size", f.num_devices), ("--dtype", dtype), ("--kv-cache-dtype", kv),
              ("--quantization", settings.get("quantization")), ("--disable-cuda-graph", f.enforce_eager),
              ("--random-seed", f.seed)]
    command = preamble(f.target_source, f.draft_source) + "python -m sglang.launch_server \\\n  " + _flags(flags)
    return ExportResult("sglang", SGLANG_VERSION, settings, command, unsupported, notes, SGLANG_DOCS)
