"""The plan as `vllm serve` options: a draft model through --speculative-config, the layer split through
VLLM_PP_LAYER_PARTITION."""

from __future__ import annotations

import json
import shlex

from ..engines.vllm import EXPORT_VERSION, GRAPHS_OUTSIDE_ENV, SERVE_DOCS, VERSION
from .engine_share import EngineCheck, choose_share
from .facts import (TORCH_DTYPE_NAMES, ExportResult, Raw, _Facts, _flags, _float_dtype_note, _needs_gpu, _utilization,
                    one_kv_type, preamble, word)
from .methods import vllm_spec

# The options of vLLM 0.25.0 (engines/vllm.py SERVE_VERSION, one place for both versions): draft models through
# --speculative-config with method "draft_model" (SERVE_DOCS[0]); keys of --speculative-config
# (docs/features/speculative_decoding/configuration.md in the vLLM repo); engine arguments (SERVE_DOCS[1]),
# --enforce-eager among them; the pipeline layer split through VLLM_PP_LAYER_PARTITION (vllm/envs.py). The
# memory share is chosen by the vLLM 0.10.1.1 model (engine_share.py); the version line names both.
VLLM_VERSION = EXPORT_VERSION
VLLM_DOCS = SERVE_DOCS


def _vllm(f: _Facts) -> ExportResult:
    unsupported, notes = [], []
    _needs_gpu(f, "vLLM", unsupported)
    spec = {"method": "draft_model", "model": f.draft, "num_speculative_tokens": f.k} if f.draft else None
    if f.drafting is not None and f.drafting.method not in ("draft-model", "none"):
        spec, method_lines = vllm_spec(f.drafting)
        unsupported += method_lines
    kv_name = one_kv_type(f, "vLLM", unsupported)
    kv = {"fp16": "auto", "bf16": "auto", "fp32": "auto", "fp8": "fp8", "fp8_e4m3": "fp8_e4m3",
          "fp8_e5m2": "fp8_e5m2"}.get(kv_name)
    if kv_name == "int8":
        unsupported.append("int8 KV cache: not among vLLM's --kv-cache-dtype choices (auto, fp8, fp8_e4m3, fp8_e5m2); "
                           "'auto' keeps the model dtype and needs about twice the plan's KV bytes")
        kv = "auto"
    if kv_name == "fp32" and f.weight_dtype != "fp32":
        unsupported.append("fp32 KV cache with 16-bit weights: vLLM's KV follows the model dtype")
    dtype = TORCH_DTYPE_NAMES.get(f.weight_dtype, "float16")
    _float_dtype_note(f, "vLLM", unsupported)
    settings = {
        "model": f.target,
        "speculative_config": spec,
        "gpu_memory_utilization": None,  # chosen below, from the other settings
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
    if f.enforce_eager:
        settings["enforce_eager"] = True
    env = {}
    utilization = _utilization(f)  # budget / device memory: refused at 0 or over 1 before anything is sized
    chosen = choose_share(f, "vllm", settings) if isinstance(f.check, EngineCheck) else str(f.check)
    if not isinstance(chosen, str):  # one GPU: the largest share vLLM's accounting keeps in the budget
        utilization, share_notes = chosen
        notes += share_notes
        env[GRAPHS_OUTSIDE_ENV[0]] = GRAPHS_OUTSIDE_ENV[1]
        notes.append(f"{GRAPHS_OUTSIDE_ENV[0]}={GRAPHS_OUTSIDE_ENV[1]}: since v0.21.0 vLLM otherwise also takes its "
                     "own CUDA-graph estimate out of --gpu-memory-utilization; with 0 it captures the graphs after "
                     f"the KV cache, outside the share, as the {VERSION} accounting the share was chosen by")
    else:
        notes.append(utilization.note("gpu_memory_utilization"))
        notes.append(f"not checked by vLLM's accounting ({chosen}): the CUDA context and CUDA graphs come on top "
                     "of this share")
    settings["gpu_memory_utilization"] = utilization.value  # computed once: the option, its note and this
    if f.num_devices > 1:  # one device holds every layer: no partition to give
        env["VLLM_PP_LAYER_PARTITION"] = ",".join(str(n) for n in f.layers_per_device)
        notes.append("VLLM_PP_LAYER_PARTITION gives each pipeline stage the plan's decoder layers; vLLM keeps "
                     "the embedding on the first stage and the output layer on the last, as the plan does")
        unsupported.append(f"the draft's device: vLLM places the draft model itself; the plan puts it on device "
                           f"{f.draft_device} next to the logits" if f.draft else "")
        unsupported.append("pipeline parallelism together with a draft model is not documented for the "
                           "draft_model method; if vLLM refuses it, use --tensor-parallel-size "
                           f"{f.num_devices} (every GPU holds 1/{f.num_devices} of each layer: another split)")
        if len({d.budget_bytes for d in f.per_device}) > 1:
            unsupported.append("different budgets per device: vLLM takes one --gpu-memory-utilization; "
                               "the smallest device's share is used")
    if env:
        settings["env"] = env
    settings["request"] = {"max_tokens": f.max_new_tokens, "temperature": 0.0 if f.greedy else f.temperature}
    unsupported.append("KV sizing: vLLM fills what gpu_memory_utilization leaves with paged KV blocks (16 tokens "
                       "each) instead of allocating batch x context; max_num_seqs and max_model_len cap the same "
                       "batch and context, but the pool is not the plan's exact KV bytes")
    unsupported.append(f"prefill chunk: vLLM's --max-num-batched-tokens caps the tokens of one scheduler step over "
                       f"all sequences (prefill chunks and decode tokens together); {f.batch} x {f.chunk} bounds the "
                       "plan's largest forward, not its per-sequence chunking")
    unsupported.append("sampling is per request in vLLM: send temperature "
                       + ("0 (greedy)" if f.greedy else f"{f.temperature}") + f" and max_tokens {f.max_new_tokens}")
    flags = [("--speculative-config", _spec_word(f, spec)),
             ("--gpu-memory-utilization", utilization),
             ("--max-num-seqs", f.batch), ("--max-model-len", f.context),
             ("--max-num-batched-tokens", settings["max_num_batched_tokens"]),
             ("--tensor-parallel-size", 1), ("--pipeline-parallel-size", f.num_devices),
             ("--dtype", dtype), ("--kv-cache-dtype", kv), ("--quantization", settings.get("quantization")),
             ("--enforce-eager", f.enforce_eager), ("--seed", f.seed)]
    prefix = "".join(f"{k}={shlex.quote(v)} " for k, v in env.items())
    command = (preamble(f.target_source, f.draft_source) + f"{prefix}vllm serve "
               + word(f.target_source.shell) + " \\\n  " + _flags(flags))
    return ExportResult("vllm", VLLM_VERSION, settings, command, [u for u in unsupported if u], notes, VLLM_DOCS)


def _spec_word(f: _Facts, spec: dict | None):
    """--speculative-config as one shell word: single-quoted JSON, or double-quoted where it names "$DRAFT"."""
    if spec is None:
        return None
    if f.draft_source is None or f.draft_source.kind != "bundled" or "model" not in spec:
        return json.dumps(spec, separators=(", ", ": "))
    text = json.dumps({**spec, "model": "@DRAFT@"}, separators=(", ", ": "))
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`")
    return Raw('"' + escaped.replace("@DRAFT@", f"${f.draft_source.var}") + '"')
