"""The plan as `llama-server` options: GGUF files, a draft through --spec-type draft-simple, the layer split
through --tensor-split."""

from __future__ import annotations

from ..kvtypes import ENGINE_SPELLINGS, parse_kv_dtypes
from .facts import ExportResult, _Facts, _flags
from .gguf_files import gguf_file
from .methods import llamacpp_spec

# llama.cpp b9245 (May 2026): llama-server after the speculative-parameter rename (ggml-org/llama.cpp
# PR #22397 and #22964): --spec-type draft-simple, --spec-draft-model (-md), --spec-draft-n-max/-n-min,
# --spec-draft-ngl (-ngld); --draft-max/--draft-min/-cd were removed. tools/server/README.md:
#   https://github.com/ggml-org/llama.cpp/blob/master/tools/server/README.md
LLAMACPP_VERSION = "llama.cpp b9245"
LLAMACPP_DOCS = (
    "https://github.com/ggml-org/llama.cpp/blob/master/tools/server/README.md",
    "https://github.com/ggml-org/llama.cpp/pull/22397",
)


def _llamacpp_cache(kv, which: str, notes: list, unsupported: list) -> str:
    """llama.cpp's -ctk / -ctv spelling of one plan KV type (kvtypes.ENGINE_SPELLINGS); fp8 and int8 map to q8_0."""
    spelled = ENGINE_SPELLINGS["llama.cpp"].get(kv.name)
    if spelled is not None:
        return spelled
    if kv.name == "int8":
        line = "int8 KV -> q8_0: blocks of 32 values with one fp16 scale (8.5 bits per value)"
        if line not in notes:
            notes.append(line)
    else:  # fp8, fp8_e4m3, fp8_e5m2
        line = (f"{kv.name} KV cache: llama.cpp has no fp8 cache type; q8_0 (8.5 bits per value) is the closest "
                "and takes about 6% more than the plan's bytes")
        if line not in unsupported:  # K and V of one type: said once
            unsupported.append(line)
    return "q8_0"


def _llamacpp(f: _Facts) -> ExportResult:
    unsupported, notes = [], []
    cache_k, cache_v = (_llamacpp_cache(t, which, notes, unsupported) for t, which in zip(parse_kv_dtypes(f.kv_dtype), "KV"))
    quantised_v = cache_v.startswith(("q", "iq"))  # llama.cpp refuses a quantised V cache without flash attention
    # On a GPU -fa on always: -fa defaults to auto since it took on/off/auto (b6343, Sep 2025; ggml-org/llama.cpp
    # #15746), on wherever the GPU has the kernels; said outright so the memory model of b5600-b6500, whose
    # default was off, sizes the same compute buffer (no f32 KQ scores) as the build the command names.
    flash = quantised_v or f.kind != "cpu"
    if quantised_v:
        notes.append(f"a {cache_v} V cache needs flash attention: the command passes -fa on")
    elif flash:
        notes.append("-fa on: flash attention, llama.cpp's own choice on this GPU (-fa auto), stated so the "
                     "predicted compute buffer is the one it allocates")
    t_file = gguf_file(f.target_source, f.weight_dtype, f.target_source)
    d_file = gguf_file(f.draft_source, f.draft_dtype or f.weight_dtype, f.target_source) if f.draft else None
    target, draft = t_file.setting, d_file.setting if d_file else None
    made = [g.word for g in (t_file, d_file) if g is not None and g.made]
    if made:
        notes.append(f"llama.cpp loads GGUF files: {' and '.join(made)} must be made first; the command's first lines "
                     "do it with llama.cpp's convert_hf_to_gguf.py (run from the folder above a llama.cpp checkout)")
    for src in (f.target_source, f.draft_source):
        if src is not None and src.form == "gguf":
            unsupported.append(f"{src.role} weights: {src.ref} is a GGUF file; llama.cpp runs the types stored in it, "
                               f"the plan sized {f.weight_dtype if src.role == 'target' else f.draft_dtype or f.weight_dtype} "
                               "weights")
        if src is not None and src.form == "config":
            unsupported.append(f"{src.ref} is a config.json without weights: llama.cpp needs a GGUF of real weights")
    if f.weight_dtype == "fp8" or (f.draft_dtype == "fp8"):
        unsupported.append("fp8 weights: GGUF has no fp8 type; use Q8_0")
    if f.weight_dtype == "int4":
        notes.append("int4 -> Q4_0 (4.5 bits per weight); the plan's int4 counts GPTQ-style groups of 128")
    total_ctx = f.batch * f.context
    ngl = 0 if f.kind == "cpu" else "all"  # layers offloaded to the GPU: all of them, none on a CPU plan
    settings = {"model": target}
    legacy = f.drafting is None or f.drafting.method in ("draft-model", "none")
    method_spec = {}
    if not legacy:
        method_spec, method_lines = llamacpp_spec(f.drafting)
        unsupported += method_lines
        settings.update(method_spec)
        if method_spec and f.draft:  # EAGLE-3: the head's GGUF is the draft model
            settings["spec_draft_model"] = draft
    if f.draft and legacy:
        settings.update({"spec_type": "draft-simple", "spec_draft_model": draft, "spec_draft_n_max": f.k,
                         "spec_draft_n_min": f.k, "spec_draft_p_min": 0.0,
                         "spec_draft_sampling": "greedy" if f.greedy else "probabilistic",
                         "spec_draft_ngl": ngl, "cache_type_k_draft": cache_k, "cache_type_v_draft": cache_v})
    settings.update({"ctx_size": total_ctx, "parallel": f.batch, "n_gpu_layers": ngl, "cache_type_k": cache_k,
                     "cache_type_v": cache_v, "batch_size": f.batch * f.chunk, "ubatch_size": f.batch * f.chunk,
                     "fit": "off", "n_predict": f.max_new_tokens, "temperature": 0.0 if f.greedy else f.temperature,
                     "seed": f.seed})
    if flash:
        settings["flash_attn"] = "on"
    backend = "ROCm" if f.kind == "rocm" else "CUDA"
    if f.num_devices > 1:  # one device holds every layer: no split to give
        settings["split_mode"] = "layer"
        settings["tensor_split"] = ",".join(str(n) for n in f.layers_per_device)
        if f.draft and legacy:
            settings["spec_draft_device"] = f"{backend}{f.draft_device}"
        notes.append("--tensor-split takes proportions: the plan's decoder layers per device; llama.cpp puts the "
                     "output layer on the last device as the plan does")
    notes.append(f"-c is the KV of all {f.batch} slots together: {f.batch} x {f.context} = {total_ctx} tokens")
    if f.draft and legacy:
        notes.append(f"--spec-draft-n-min {f.k} with --spec-draft-p-min 0 keeps k = {f.k} every step, as the plan "
                     "(llama.cpp would otherwise stop drafting early on low draft confidence)")
    unsupported.append("memory budget: llama.cpp has no memory cap; with --fit off it allocates what -c, -np and "
                       "the batch sizes ask, so the plan's total holds only as far as its GGUF sizes match")
    unsupported.append("draft context: builds since b9145 give the draft the target's context (no -cd); the plan's "
                       "draft KV assumes the same context, so nothing is lost")
    flags = [("-m", t_file.word)]
    if method_spec:  # the method's flags, spelled as llama-server's options with dashes
        flags += [("--" + key.replace("_", "-"), d_file.word if key == "spec_draft_model" else value)
                  for key, value in settings.items() if key in method_spec or key == "spec_draft_model"]
    if f.draft and legacy:
        flags += [("--spec-type", "draft-simple"), ("-md", d_file.word), ("--spec-draft-n-max", f.k),
                  ("--spec-draft-n-min", f.k), ("--spec-draft-p-min", 0.0),
                  ("--spec-draft-sampling", settings["spec_draft_sampling"]), ("-ngld", ngl),
                  ("-ctkd", cache_k), ("-ctvd", cache_v)]
        if "spec_draft_device" in settings:
            flags.append(("-devd", settings["spec_draft_device"]))
    flags += [("-c", total_ctx), ("-np", f.batch), ("-ngl", ngl), ("-ctk", cache_k), ("-ctv", cache_v),
              ("-b", f.batch * f.chunk), ("-ub", f.batch * f.chunk)]
    if "tensor_split" in settings:
        flags += [("-sm", "layer"), ("-ts", settings["tensor_split"])]
    if flash:
        flags.append(("-fa", "on"))
    flags += [("--fit", "off"), ("-n", f.max_new_tokens), ("--temp", settings["temperature"]), ("-s", f.seed)]
    steps = t_file.steps + (d_file.steps if d_file else [])
    command = "\n".join(steps + ["llama-server \\\n  " + _flags(flags)])
    return ExportResult("llama.cpp", LLAMACPP_VERSION, settings, command, unsupported, notes, LLAMACPP_DOCS)
